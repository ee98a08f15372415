"""ChatToolEnvironment: tool calls through a chat template; assistant tokens are the only actions."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.environment import ChatToolEnvironment, parse_tool_calls

from ._scripted import ScriptedModel

# ChatML-like, with the tiny tokenizer's EOS as the end of a turn and the tools' schemas in a system block.
TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}{{ eos_token }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def fail(x: str) -> str:
    """Always fails.

    Args:
        x: anything
    """
    raise RuntimeError("no luck")


def repeat50(s: str) -> str:
    """Repeat a string 50 times.

    Args:
        s: the string
    """
    return s * 50


def call(name, **arguments):
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.fixture
def chat_tokenizer(pad_tokenizer):
    pad_tokenizer.chat_template = TEMPLATE
    return pad_tokenizer


def make_env(model_path, tokenizer, script, **kwargs):
    lm = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    kwargs.setdefault("tools", [add, fail])
    kwargs.setdefault("reward_fn", lambda answers: [float("5" in a) for a in answers])
    return ChatToolEnvironment(ScriptedModel(lm, tokenizer, script), tokenizer, **kwargs)


def test_parse_tool_calls():
    assert parse_tool_calls("no call here") == []
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>') == [
        {"name": "add", "arguments": {"a": 1}}]
    two = 'x <tool_call>\n{"name": "a", "arguments": {}}\n</tool_call> y <tool_call>{"name": "b", "parameters": {"q": 2}}</tool_call>'
    assert parse_tool_calls(two) == [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"q": 2}}]
    assert parse_tool_calls('{"name": "add", "arguments": "{\\"a\\": 3}"}') == [{"name": "add", "arguments": {"a": 3}}]
    bad = parse_tool_calls("<tool_call>{not json</tool_call>")
    assert bad[0]["name"] is None and "invalid JSON" in bad[0]["error"]


def test_episode_renders_with_the_template_and_masks_all_but_assistant_tokens(model_path, chat_tokenizer):
    tok = chat_tokenizer
    script = lambda ctx: call("add", a=2, b=3) if "<|im_start|>tool" not in ctx else "The answer is 5"  # noqa: E731
    env = make_env(model_path, tok, script, system_prompt="Use the tools.")
    queries, responses, masks, rewards, histories = env.run(["What is 2+3?"])
    h = histories[0]
    assert [m["role"] for m in h.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert h.messages[3] == {"role": "tool", "name": "add", "content": "5"}
    assert h.last_assistant_message == "The answer is 5" and rewards == [1.0] and h.completed and not h.truncated
    # The tokens spell the template's rendering of the final conversation (less the closing newline).
    assert h.text + "\n" == tok.apply_chat_template(h.messages, tools=[add, fail], tokenize=False)
    assert tok.decode(h.tokens) == h.text
    assert queries[0].tolist() == tok(tok.apply_chat_template(h.messages[:2], tools=[add, fail], tokenize=False,
                                                              add_generation_prompt=True)).input_ids
    # Actions: exactly the two assistant messages and the EOS the model wrote after each.
    actions = [t for t, m in zip(responses[0].tolist(), masks[0].tolist()) if m == 1]
    expected = tok(call("add", a=2, b=3)).input_ids + [tok.eos_token_id] + tok("The answer is 5").input_ids + [tok.eos_token_id]
    assert actions == expected
    system = tok.decode([t for t, m in zip(responses[0].tolist(), masks[0].tolist()) if m == 0])
    assert system == "\n<|im_start|>tool\n5" + tok.eos_token + "\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "first, result",
    [
        (call("nope", x=1), "Unknown tool nope. Available tools: add, fail."),
        (call("fail", x="a"), "Tool error: no luck"),
        (call("add", a=1), "Tool error: add() missing 1 required positional argument: 'b'"),
        ("<tool_call>{oops</tool_call>", "Tool error: invalid JSON in tool call"),
    ],
)
def test_bad_calls_answer_with_an_error(model_path, chat_tokenizer, first, result):
    script = lambda ctx: first if "<|im_start|>tool" not in ctx else "ok"  # noqa: E731
    *_, histories = make_env(model_path, chat_tokenizer, script).run(["hi"])
    assert histories[0].messages[1]["content"] == first
    assert histories[0].messages[2]["content"].startswith(result)


def test_max_turns_truncates_and_long_results_are_cut(model_path, chat_tokenizer):
    env = make_env(model_path, chat_tokenizer, lambda ctx: call("echo", s="x"), max_turns=2, max_tool_response=8,
                   tools={"echo": repeat50})
    *_, rewards, histories = env.run(["hi"])
    h = histories[0]
    assert h.completed and h.truncated
    assert [m["role"] for m in h.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert h.messages[2]["content"] == "xxxxx..."


def test_groups_and_batched_turns(model_path, chat_tokenizer):
    script = lambda ctx: "The answer is 5" if "two" in ctx or "<|im_start|>tool" in ctx else call("add", a=2, b=3)  # noqa: E731
    seen = {}

    def reward_fn(answers, gold):
        seen["gold"] = gold
        return [float(g in a) for a, g in zip(answers, gold)]

    env = make_env(model_path, chat_tokenizer, script, num_generations=2, reward_fn=reward_fn)
    *_, rewards, histories = env.run(["one", "two"], gold=["5", "6"])
    assert seen["gold"] == ["5", "5", "6", "6"] and rewards == [1.0, 1.0, 0.0, 0.0]
    assert env.model.calls == [4, 2]  # one generate call per turn over all unfinished episodes
    assert [len(h.messages) for h in histories] == [4, 4, 2, 2]


def test_needs_a_chat_template_and_named_functions(pad_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        ChatToolEnvironment(tokenizer=pad_tokenizer)
    with pytest.raises(TypeError, match="named Python function"):
        ChatToolEnvironment(tools=["ybelkada/simple-calculator"])
    with pytest.raises(TypeError, match="named Python function"):
        ChatToolEnvironment(tools=[lambda x: x])
    with pytest.raises(TypeError, match="docstring"):
        ChatToolEnvironment(tools={"f": lambda x: x})

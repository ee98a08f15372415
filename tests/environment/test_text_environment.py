"""TextEnvironment / TextHistory: the tool-call protocol, masks, limits, rewards and rendering.

Episodes are played by a tiny real GPT-2 whose outputs are forced by a script (`ScriptedModel`),
through transformers' own ``generate`` loop and the environment's per-row stopping.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.environment import StringStoppingCriteria, TextEnvironment, TextHistory

from ._scripted import ScriptedModel


def calc(expression: str) -> str:
    a, b = expression.split("+")
    return str(int(a) + int(b))


def turn(context: str) -> int:
    """How many tool responses the context already holds."""
    return context.count("<response>")


@pytest.fixture
def tiny_lm(model_path):
    return AutoModelForCausalLM.from_pretrained(model_path("gpt2"))


def make_env(tiny_lm, tokenizer, script, **kwargs):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs.setdefault("tools", [calc])
    kwargs.setdefault("reward_fn", lambda segments: [float("5" in s) for s in segments])
    kwargs.setdefault("prompt", "Q: ")
    return TextEnvironment(ScriptedModel(tiny_lm, tokenizer, script), tokenizer, **kwargs)


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<request><Calc>2+3<call>", ("Calc", "2+3")),
        ("Let me think. <request><Calc>2+3<call> trailing", ("Calc", "2+3")),
        ("<request><Calc>2>1<call>", ("Calc", "2>1")),  # '>' inside the query stays in the query
        ("<request><Search>a\nb<call>", ("Search", "a\nb")),
        ("<request><Calc><call>", ("Calc", "")),
        ("<request><A>1<call><request><B>2<call>", ("A", "1")),  # the first call counts
        ("<request>2+3<call>", (None, None)),  # no tool name
        ("<request><Calc>2+3", (None, None)),  # no <call>
        ("<Calc>2+3<call>", (None, None)),  # no <request>
        ("plain text", (None, None)),
    ],
)
def test_parse_tool_call(text, expected):
    assert TextEnvironment().parse_tool_call(text) == expected


# --------------------------------------------------------------------------- TextHistory
def test_history_segments_spans_masks_and_split():
    h = TextHistory("Q: hi", torch.tensor([1, 2, 3]), system=True)
    h.append_segment(" model", torch.tensor([4, 5]), system=False)
    h.append_segment("tool", torch.tensor([6]), system=True)
    h.append_segment(" end", torch.tensor([7, 8, 9]), system=False)
    assert h.text == "Q: hi modeltool end"
    assert h.text_spans == [(0, 5), (5, 11), (11, 15), (15, 19)]
    assert h.token_spans == [(0, 3), (3, 5), (5, 6), (6, 9)]
    assert h.system_spans == [True, False, True, False]
    assert h.token_masks.tolist() == [0, 0, 0, 1, 1, 0, 1, 1, 1]
    assert h.last_text_segment == " end"
    q, r, m = h.split_query_response_tokens()
    assert q.tolist() == [1, 2, 3] and r.tolist() == [4, 5, 6, 7, 8, 9] and m.tolist() == [1, 1, 0, 1, 1, 1]
    assert not h.completed and not h.truncated and h.reward == 0.0
    h.complete(truncated=True)
    assert h.completed and h.truncated


def test_history_rejects_empty_segments_and_2d_tokens():
    h = TextHistory("a", torch.tensor([1]))
    with pytest.raises(ValueError, match="empty segment"):
        h.append_segment("", torch.tensor([2]))
    with pytest.raises(ValueError, match="empty segment"):
        h.append_segment("b", torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        TextHistory("a", torch.tensor([[1, 2]]))


def test_history_show_text_and_tokens_colour_by_segment(capsys, tokenizer):
    pytest.importorskip("rich")
    from rlft.environment.base_environment import MODEL_STYLE, PROMPT_STYLE, REWARD_STYLE, SYSTEM_STYLE

    parts = [("Q: 1+1", True), ("<request><Calc>1+1<call>", False), ("2<response>", True), ("2<submit>", False)]
    h = TextHistory(parts[0][0], torch.tensor(encode(tokenizer, parts[0][0])))
    for text, system in parts[1:]:
        h.append_segment(text, torch.tensor(encode(tokenizer, text)), system=system)
    h.reward = 1.5
    h.complete()
    shown = h.show_text(show_legend=True)
    styles = [(shown.plain[s.start : s.end], str(s.style)) for s in shown.spans]
    assert styles == [
        ("Q: 1+1", PROMPT_STYLE), ("<request><Calc>1+1<call>", MODEL_STYLE), ("2<response>", SYSTEM_STYLE),
        ("2<submit>", MODEL_STYLE), ("\n\nReward: 1.5", REWARD_STYLE),
    ]
    out = capsys.readouterr().out
    assert "Q: 1+1<request><Calc>1+1<call>2<response>2<submit>" in out
    assert "Reward: 1.5" in out and "Legend" in out and all(w in out for w in ("Prompt", "System", "Model"))

    tokens = h.show_tokens(tokenizer)
    token_styles = [str(s.style) for s in tokens.spans][:-1]  # the last span is the reward
    expected = []
    for i, (s, e) in enumerate(h.token_spans):
        expected += [[PROMPT_STYLE, MODEL_STYLE, SYSTEM_STYLE, MODEL_STYLE][i]] * (e - s)
    assert token_styles == expected  # one span per token, coloured by its segment
    assert tokens.plain.startswith(h.text)


# --------------------------------------------------------------------------- tools
class Reverse:
    def __call__(self, text):
        return text[::-1]


class Named:
    name = "Lookup"

    def __call__(self, text):
        return "x"


def test_tools_named_by_function_attribute_class_or_dict():
    env = TextEnvironment(tools=[calc, Reverse(), Named()])
    assert sorted(env.tools) == ["Lookup", "Reverse", "calc"]
    env = TextEnvironment(tools={"Add": calc, "Rev": Reverse()})
    assert sorted(env.tools) == ["Add", "Rev"]
    assert sorted(TextEnvironment(tools=calc).tools) == ["calc"]  # a single callable


@pytest.mark.parametrize(
    "tools, error, message",
    [
        ("ybelkada/simple-calculator", TypeError, "load_tool"),
        (["ybelkada/simple-calculator"], TypeError, "callables"),
        ({"Calc": "ybelkada/simple-calculator"}, TypeError, "callables"),
        ([42], TypeError, "callables"),
        (42, TypeError, "callables"),
        ([lambda s: s], ValueError, "dict"),
        ([calc, calc], ValueError, "two tools"),
    ],
)
def test_bad_tools_fail_with_a_clear_error(tools, error, message):
    with pytest.raises(error, match=message):
        TextEnvironment(tools=tools)


def test_max_tool_response_spellings():
    assert TextEnvironment().max_tool_reponse == 100
    assert TextEnvironment(max_tool_reponse=7).max_tool_response == 7
    assert TextEnvironment(max_tool_response=9).max_tool_reponse == 9
    with pytest.raises(ValueError, match="not both"):
        TextEnvironment(max_tool_reponse=7, max_tool_response=9)


def test_run_needs_model_tokenizer_and_reward_fn(tokenizer):
    with pytest.raises(ValueError, match="model and a tokenizer"):
        TextEnvironment(reward_fn=lambda s: s).run(["x"])
    with pytest.raises(ValueError, match="reward_fn"):
        TextEnvironment(model=object(), tokenizer=tokenizer).run(["x"])
    with pytest.raises(ValueError, match="stopping_criteria"):
        TextEnvironment(generation_kwargs={"stopping_criteria": []})


# --------------------------------------------------------------------------- episodes
def test_calculator_episode_text_tokens_masks_and_reward(tiny_lm, tokenizer):
    script = lambda ctx: "<request><calc>2+3<call>" if turn(ctx) == 0 else " The answer is 5<submit>"  # noqa: E731
    env = make_env(tiny_lm, tokenizer, script)
    queries, responses, masks, rewards, histories = env.run(["What is 2+3?"])
    h = histories[0]
    assert h.text == "Q: What is 2+3?<request><calc>2+3<call>5<response> The answer is 5<submit>"
    assert h.completed and not h.truncated
    assert h.system_spans == [True, False, True, False]
    seg = [encode(tokenizer, t) for t in ("<request><calc>2+3<call>", "5<response>", " The answer is 5<submit>")]
    assert queries[0].tolist() == tokenizer("Q: What is 2+3?").input_ids
    assert responses[0].tolist() == seg[0] + seg[1] + seg[2]
    assert masks[0].tolist() == [1] * len(seg[0]) + [0] * len(seg[1]) + [1] * len(seg[2])
    assert rewards == [1.0] and h.reward == 1.0


def test_reward_fn_gets_last_segments_and_kwargs(tiny_lm, tokenizer):
    script = lambda ctx: "<request><calc>2+3<call>" if turn(ctx) == 0 else " 5<submit>"  # noqa: E731
    seen = {}

    def reward_fn(segments, answers):
        seen["segments"], seen["answers"] = segments, answers
        return [float(a in s) for s, a in zip(segments, answers)]

    env = make_env(tiny_lm, tokenizer, script, reward_fn=reward_fn)
    *_, rewards, _ = env.run(["a", "b"], answers=["5", "6"])
    assert seen == {"segments": [" 5<submit>", " 5<submit>"], "answers": ["5", "6"]}
    assert rewards == [1.0, 0.0]
    env = make_env(tiny_lm, tokenizer, script, reward_fn=lambda segments: [1.0])
    with pytest.raises(ValueError, match="1 rewards for 2 episodes"):
        env.run(["a", "b"])


@pytest.mark.parametrize(
    "call, response",
    [
        ("<request><Nope>2+3<call>", "Unknown tool Nope."),
        ("<request>2+3<call>", "Unknown tool call: <request>2+3<call>"),
        ("<request><calc>two+3<call>", "Tool error: invalid literal for int() with base 10: 'two'"),
    ],
)
def test_unknown_tool_malformed_call_and_tool_exception(tiny_lm, tokenizer, call, response):
    script = lambda ctx: call if turn(ctx) == 0 else "done<submit>"  # noqa: E731
    *_, histories = make_env(tiny_lm, tokenizer, script).run(["t"])
    h = histories[0]
    assert h.text == f"Q: t{call}{response}<response>done<submit>"
    assert h.completed and not h.truncated


def test_long_tool_output_is_cut_to_max_tool_reponse(tiny_lm, tokenizer):
    script = lambda ctx: "<request><Long>x<call>" if turn(ctx) == 0 else "ok<submit>"  # noqa: E731
    env = make_env(tiny_lm, tokenizer, script, tools={"Long": lambda q: "abcdefghij" * 10}, max_tool_reponse=12)
    *_, histories = env.run(["t"])
    segment = histories[0].text_spans[2]
    assert histories[0].text[segment[0] : segment[1]] == "abcdefghi...<response>"  # 12 characters, then the token
    env = make_env(tiny_lm, tokenizer, script, tools={"Long": lambda q: "abcdefghij"}, max_tool_response=10)
    *_, histories = env.run(["t"])
    assert "abcdefghij<response>" in histories[0].text  # exactly the limit: kept whole


def test_max_turns_truncates(tiny_lm, tokenizer):
    script = lambda ctx: "<request><calc>1+1<call>"  # noqa: E731  (never submits)
    env = make_env(tiny_lm, tokenizer, script, max_turns=3)
    *_, masks, _, histories = env.run(["t"])
    h = histories[0]
    assert h.completed and h.truncated
    assert h.system_spans == [True] + [False, True] * 3  # three model turns, each answered by the tool
    assert h.text.count("2<response>") == 3


def test_max_length_truncates(tiny_lm, tokenizer):
    script = lambda ctx: "<request><calc>1+1<call>" if turn(ctx) == 0 else "ok<submit>"  # noqa: E731
    n_query = len(tokenizer("Q: t").input_ids)
    n_call = len(encode(tokenizer, "<request><calc>1+1<call>"))
    # The call fits; its tool response pushes the episode past max_length, so it ends there.
    env = make_env(tiny_lm, tokenizer, script, max_length=n_query + n_call)
    *_, histories = env.run(["t"])
    h = histories[0]
    assert h.completed and h.truncated and h.last_text_segment == "2<response>"
    # With room for everything it ends normally.
    *_, histories = make_env(tiny_lm, tokenizer, script, max_length=200).run(["t"])
    assert histories[0].completed and not histories[0].truncated


def test_turn_without_tool_call_or_with_eos_ends_the_episode(tiny_lm, tokenizer):
    *_, histories = make_env(tiny_lm, tokenizer, lambda ctx: "just talking").run(["t"])
    h = histories[0]
    # no <call> and no <submit>: the forced EOS ends generation and the episode after one turn
    assert h.completed and not h.truncated and len(h.text_spans) == 2
    assert h.last_text_segment == "just talking" + tokenizer.eos_token
    # Cut by max_new_tokens (no EOS) in the middle of a call: no complete call, so the episode ends.
    env = make_env(tiny_lm, tokenizer, lambda ctx: "<request><calc>1+1<call>", generation_kwargs={"max_new_tokens": 8})
    *_, histories = env.run(["t"])
    h = histories[0]
    assert h.completed and not h.truncated and len(h.text_spans) == 2
    assert h.last_text_segment == tokenizer.decode(encode(tokenizer, "<request><calc>1+1<call>")[:8])


def test_batched_generation_stops_each_row_at_its_own_stop_string(tiny_lm, tokenizer):
    """One generate call per turn for all episodes; rows of different lengths stop independently."""
    plans = {
        "A": ["<request><calc>1+1<call>", " long answer with many words 2<submit>"],
        "BBBBBB": ["short<submit>"],
        "C": ["<request><calc>20+22<call>", "<request><calc>1+2<call>", "42<submit>"],
    }

    def script(ctx):
        task = ctx.split("Q: ")[1].split("<")[0]
        # text after a stop string must be cut off: each plan continues past its stop
        return plans[task][turn(ctx)] + " SHOULD NOT APPEAR"

    env = make_env(tiny_lm, tokenizer, script)
    *_, histories = env.run(list(plans))
    assert env.model.calls == [3, 2, 1]  # batch sizes: every unfinished episode in one call per turn
    assert histories[0].text == "Q: A<request><calc>1+1<call>2<response> long answer with many words 2<submit>"
    assert histories[1].text == "Q: BBBBBBshort<submit>"
    assert histories[2].text == "Q: C<request><calc>20+22<call>42<response><request><calc>1+2<call>3<response>42<submit>"
    assert all(h.completed and not h.truncated for h in histories)
    # With a generation batch size of 2 the first turn takes two calls.
    env = make_env(tiny_lm, tokenizer, script, generation_batch_size=2)
    *_, again = env.run(list(plans))
    assert env.model.calls == [2, 1, 2, 1] and [h.text for h in again] == [h.text for h in histories]


def test_num_generations_gives_consecutive_blocks(tiny_lm, tokenizer):
    script = lambda ctx: " 5<submit>"  # noqa: E731
    seen = {}

    def reward_fn(segments, answers):
        seen["answers"] = answers
        return [0.0] * len(segments)

    env = make_env(tiny_lm, tokenizer, script, reward_fn=reward_fn, num_generations=3)
    queries, *_, histories = env.run(["one", "two"], answers=["1", "2"])
    assert [h.text.split("Q: ")[1].split(" ")[0] for h in histories] == ["one"] * 3 + ["two"] * 3
    assert seen["answers"] == ["1"] * 3 + ["2"] * 3
    assert [q.tolist() for q in queries[:3]] == [tokenizer("Q: one").input_ids] * 3


def test_string_stopping_criteria_per_row():
    class CharTokenizer:  # token i is chr(i)
        def batch_decode(self, rows):
            return ["".join(chr(t) for t in row) for row in rows]

    stop = StringStoppingCriteria(["<c>"], CharTokenizer(), prompt_length=2)
    rows = ["ab<c>xy", "ab<<c>y", "abzzzzz"]  # prompt "ab"; row 0 stops at 3 new tokens, row 1 at 4, row 2 never
    ids = torch.tensor([[ord(c) for c in r] for r in rows])
    results = [stop(ids[:, :L], None).tolist() for L in range(3, 8)]
    assert results[2] == [True, False, False] and results[3] == [True, True, False] and results[4] == [True, True, False]
    assert stop.generated_tokens == [3, 4, 5]
    with pytest.raises(ValueError, match="non-empty strings"):
        StringStoppingCriteria("<call>", CharTokenizer())


def test_sampled_run_with_value_head_model(model_path, pad_tokenizer):
    """A random policy (sampling through rlft's generate) with a value-head model: well-formed outputs."""
    from rlft import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    env = TextEnvironment(model, pad_tokenizer, tools=[calc], reward_fn=lambda s: [len(x) for x in s], prompt="Q: ",
                          max_turns=2, generation_kwargs={"do_sample": True, "max_new_tokens": 6})
    queries, responses, masks, rewards, histories = env.run(["1+1", "2+2", "3+3"])
    assert len(queries) == len(responses) == len(masks) == len(rewards) == 3
    for q, r, m, h in zip(queries, responses, masks, histories):
        assert q.dim() == r.dim() == m.dim() == 1 and len(r) == len(m) and 1 <= len(r)
        assert torch.equal(torch.cat([q, r]), h.tokens) and h.completed
        assert pad_tokenizer.decode(h.tokens) == h.text  # tokens and text agree


def test_show_text_without_rich_names_the_package(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # makes `import rich` fail
    with pytest.raises(ImportError, match="pip install rich"):
        TextHistory("a", torch.tensor([1])).show_text()

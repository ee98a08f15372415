"""Tool calling through the tokenizer's chat template (beyond TRL 0.7).

Episodes are chat conversations rendered with ``tokenizer.apply_chat_template(messages, tools=...)``:
the model writes assistant turns, the tool calls in them run, their results come back as
``{"role": "tool"}`` messages, and the model answers again. The tokens the model generated are
the actions (mask 1); the template's scaffolding (role headers, turn ends it did not write) and
the tool messages are system tokens (mask 0). Only the new text of each step is tokenized and
appended, so the token sequence is exactly what the model saw and wrote.

Tool calls are read with `parse_tool_calls`: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
blocks (the Hermes / Qwen / SmolLM3 style many templates define) or a bare JSON object with
``name`` and ``arguments``; pass ``tool_call_parser`` for other formats.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .base_environment import (
    DEFAULT_MAX_TOOL_RESPONSE,
    TRUNCATION_SUFFIX,
    TextHistory,
    eos_token_ids,
    generate_segments,
    repeat_per_episode,
)

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

Message = dict
Conversation = list[Message]


def parse_tool_calls(text: str) -> list[dict]:
    """The tool calls in an assistant message, as ``[{"name": str, "arguments": dict}]`` (empty if none).

    Reads ``<tool_call>{json}</tool_call>`` blocks; without any, a message that is a single JSON
    object with ``name`` and ``arguments`` (or ``parameters``) is one call. A block that is not
    valid JSON is returned as ``{"name": None, "arguments": {}, "error": ...}`` so the model sees the error.
    """
    blocks = _TOOL_CALL_BLOCK.findall(text)
    if not blocks:
        stripped = text.strip()
        if not (stripped.startswith("{") and stripped.endswith("}")):
            return []
        blocks = [stripped]
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
        except json.JSONDecodeError as err:
            calls.append({"name": None, "arguments": {}, "error": f"invalid JSON in tool call: {err}"})
            continue
        if not isinstance(data, dict) or "name" not in data:
            calls.append({"name": None, "arguments": {}, "error": "a tool call needs a JSON object with a 'name'"})
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"name": data["name"], "arguments": arguments})
    return calls


class ChatHistory(TextHistory):
    """A `TextHistory` that also keeps the conversation as chat ``messages``."""

    def __init__(self, messages: Conversation, text: str, tokens: Tensor):
        super().__init__(text, tokens, system=True)
        self.messages = [dict(m) for m in messages]

    @property
    def last_assistant_message(self) -> Optional[str]:
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return message["content"]
        return None


class ChatToolEnvironment:
    """Multi-turn tool-use episodes rendered with the tokenizer's chat template.

    Args:
        model: the policy (a causal LM or an rlft value-head model).
        tokenizer: its tokenizer, with a chat template (one that renders ``tools`` for the model to
            know them; tool-role messages must render).
        tools: Python functions with type hints and a Google-style docstring (their JSON schemas
            reach the template through ``apply_chat_template(tools=...)``), as a list or a dict
            name -> function. Called with the call's arguments as keywords.
        reward_fn: ``reward_fn(final_answers, **rewards_kwargs) -> rewards``: gets the content of each
            episode's last assistant message.
        system_prompt: a system message put first in every conversation (None: none).
        max_turns: most assistant turns per episode; one still calling tools after them is truncated.
        max_tool_response: longest tool result kept, in characters (longer ones end in ``"..."``).
        max_length: most tokens per episode; a longer episode is completed as truncated.
        generation_kwargs: keyword arguments for ``model.generate``. Turns end at the model's EOS
            (its end-of-turn token, for chat models).
        num_generations: episodes per prompt, in consecutive blocks.
        generation_batch_size: most episodes per ``generate`` call (None: all at once).
        tool_call_parser: ``text -> [{"name", "arguments"}]``; default `parse_tool_calls`.
    """

    def __init__(
        self,
        model=None,
        tokenizer=None,
        tools: Union[Sequence[Callable], dict[str, Callable], None] = None,
        reward_fn: Optional[Callable[..., Sequence[Any]]] = None,
        system_prompt: Optional[str] = None,
        max_turns: int = 4,
        max_tool_response: int = DEFAULT_MAX_TOOL_RESPONSE,
        max_length: Optional[int] = None,
        generation_kwargs: Optional[dict] = None,
        num_generations: int = 1,
        generation_batch_size: Optional[int] = None,
        tool_call_parser: Optional[Callable[[str], list[dict]]] = None,
    ):
        if max_turns < 1:
            raise ValueError(f"ChatToolEnvironment: max_turns must be at least 1, got {max_turns}.")
        if max_tool_response < len(TRUNCATION_SUFFIX):
            raise ValueError(f"ChatToolEnvironment: max_tool_response must be at least {len(TRUNCATION_SUFFIX)}.")
        if num_generations < 1:
            raise ValueError(f"ChatToolEnvironment: num_generations must be at least 1, got {num_generations}.")
        if tokenizer is not None and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "ChatToolEnvironment needs a tokenizer with a chat template (tokenizer.chat_template is None); "
                "set one, or use TextEnvironment's plain-text <request>/<call> protocol."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.tools = _function_tools(tools)
        self.tool_schemas = [_schema(name, tool) for name, tool in self.tools.items()]
        self.reward_fn = reward_fn
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_tool_response = max_tool_response
        self.max_length = max_length
        self.generation_kwargs = dict(generation_kwargs or {})
        self.num_generations = num_generations
        self.generation_batch_size = generation_batch_size
        self.tool_call_parser = tool_call_parser or parse_tool_calls

    # ================================================================== episodes
    def run(self, prompts: Sequence[Union[str, Conversation]], **rewards_kwargs):
        """Play one episode per prompt (a user message, or a list of messages), ``num_generations`` each.

        Returns ``(queries, responses, masks, rewards, histories)`` as `TextEnvironment.run` does;
        each history is a `ChatHistory` whose ``messages`` hold the conversation.
        """
        if self.model is None or self.tokenizer is None or self.reward_fn is None:
            raise ValueError("ChatToolEnvironment.run needs model, tokenizer and reward_fn; pass them to the constructor.")
        conversations = [self._conversation(p) for p in prompts for _ in range(self.num_generations)]
        histories = [self._start(c) for c in conversations]

        # 1. turns: the model answers; tool calls run and their results come back
        for _ in range(self.max_turns):
            active = [h for h in histories if not h.completed]
            if not active:
                break
            self._generate(active)
            for history in active:
                self._after_assistant_turn(history)
        for history in histories:
            if not history.completed:
                history.complete(truncated=True)  # out of turns

        # 2. rewards
        answers = [h.last_assistant_message or "" for h in histories]
        rewards = list(self.reward_fn(answers, **repeat_per_episode(rewards_kwargs, len(prompts), self.num_generations)))
        if len(rewards) != len(histories):
            raise ValueError(f"ChatToolEnvironment: reward_fn returned {len(rewards)} rewards for {len(histories)} episodes.")
        for history, reward in zip(histories, rewards):
            history.reward = reward

        # 3. tokens for PPOTrainer.step
        queries, responses, masks = (list(x) for x in zip(*(h.split_query_response_tokens() for h in histories)))
        return queries, responses, masks, rewards, histories

    def _conversation(self, prompt) -> Conversation:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if self.system_prompt is not None and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _render(self, messages: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tool_schemas or None, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _tokens(self, text: str) -> Tensor:
        return torch.as_tensor(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)

    def _start(self, messages: Conversation) -> ChatHistory:
        text = self._render(messages, add_generation_prompt=True)
        return ChatHistory(messages, text, self._tokens(text))

    @torch.no_grad()
    def _generate(self, histories: list[ChatHistory]) -> None:
        size = self.generation_batch_size or len(histories)
        for start in range(0, len(histories), size):
            chunk = histories[start : start + size]
            segments = generate_segments(self.model, self.tokenizer, [h.tokens for h in chunk], None, self.generation_kwargs)
            for history, (text, tokens) in zip(chunk, segments):
                if len(tokens) == 0:
                    history.complete(truncated=True)
                    continue
                history.append_segment(text, tokens, system=False)
                history.messages.append({"role": "assistant", "content": self._content(tokens)})

    def _content(self, tokens: Tensor) -> str:
        """The message text of an assistant turn: its tokens less the end-of-turn (EOS) tokens that close it.

        Other special tokens stay: some templates write tool calls with them.
        """
        end = len(tokens)
        eos_ids = eos_token_ids(self.generation_kwargs, self.model, self.tokenizer)
        while end > 0 and int(tokens[end - 1]) in eos_ids:
            end -= 1
        return self.tokenizer.decode(tokens[:end])

    def _after_assistant_turn(self, history: ChatHistory) -> None:
        """End the episode, or run its tool calls and append their results (as system tokens)."""
        if history.completed:
            return
        if self.max_length is not None and len(history.tokens) > self.max_length:
            history.complete(truncated=True)
            return
        calls = self.tool_call_parser(history.messages[-1]["content"])
        if not calls:
            history.complete()  # an answer without tool calls ends the episode
            return
        before = self._render(history.messages, add_generation_prompt=False)
        history.messages.extend({"role": "tool", "name": str(c.get("name")), "content": self._call(c)} for c in calls)
        after = self._render(history.messages, add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError(
                "ChatToolEnvironment: the chat template renders a conversation differently once tool messages follow, "
                "so the new text cannot be appended; use a template whose renderings of a conversation are prefixes "
                "of the renderings of its continuations."
            )
        # The template closes the assistant turn (e.g. an end-of-turn token and a newline); whatever of
        # that the model did not generate itself is system text, followed by the tool messages.
        generated = history.last_text_segment
        content = history.messages[-1 - len(calls)]["content"]
        closing = before[before.rindex(content) + len(content):] if content else ""
        written = generated[generated.rindex(content) + len(content):] if content and content in generated else ""
        leftover = closing[len(written):] if closing.startswith(written) else closing
        text = leftover + after[len(before):]
        history.append_segment(text, self._tokens(text), system=True)
        if self.max_length is not None and len(history.tokens) > self.max_length:
            history.complete(truncated=True)

    def _call(self, call: dict) -> str:
        name = call.get("name")
        if call.get("error"):
            result = f"Tool error: {call['error']}"
        elif name not in self.tools:
            result = f"Unknown tool {name}. Available tools: {', '.join(sorted(self.tools)) or 'none'}."
        else:
            arguments = call.get("arguments") or {}
            try:
                result = self.tools[name](**arguments) if isinstance(arguments, dict) else self.tools[name](arguments)
            except Exception as error:  # the model sees the error
                result = f"Tool error: {error}"
        result = result if isinstance(result, str) else json.dumps(result) if isinstance(result, (dict, list)) else str(result)
        if len(result) > self.max_tool_response:
            result = result[: self.max_tool_response - len(TRUNCATION_SUFFIX)] + TRUNCATION_SUFFIX
        return result


def _schema(name: str, tool: Callable) -> dict:
    """The JSON schema of a tool function (from its type hints and docstring), under the name it is called by."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(tool)
    except Exception as err:
        raise TypeError(
            f"ChatToolEnvironment: cannot describe tool {name!r} to the chat template ({err}). Give it type hints and "
            "a Google-style docstring with an Args section."
        ) from err
    schema["function"]["name"] = name
    return schema


def _function_tools(tools) -> dict[str, Callable]:
    if tools is None:
        return {}
    items = tools.items() if isinstance(tools, dict) else [(getattr(t, "__name__", None), t) for t in tools] \
        if isinstance(tools, (list, tuple)) else None
    if items is None:
        raise TypeError(f"ChatToolEnvironment: tools must be a list of functions or a dict name -> function, got {type(tools).__name__}.")
    out = {}
    for name, tool in items:
        if isinstance(tool, str) or not callable(tool) or not isinstance(name, str) or name == "<lambda>":
            raise TypeError(
                f"ChatToolEnvironment: tool {tool!r} is not a named Python function; pass functions with type hints "
                "and a docstring (their schema is given to the chat template)."
            )
        out[name] = tool
    return out


__all__ = ["ChatHistory", "ChatToolEnvironment", "parse_tool_calls"]

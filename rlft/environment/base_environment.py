"""Text environments: a language model calls Python tools inside the RL loop (TRL 0.7.10's API).

The model writes ``<request><ToolName>arguments<call>``; generation stops there, the tool runs on
``arguments`` and its output is appended followed by ``<response>``; the model then continues. An
episode ends when the model writes ``<submit>``, writes the EOS token, ends a turn without a tool
call, passes ``max_length`` tokens, or has taken ``max_turns`` turns. Tool outputs and the prompt
are *system* tokens (mask 0): `PPOTrainer.step(..., response_masks=masks)` trains only on the
tokens the model generated (mask 1).

Unlike TRL 0.7, each turn is one batched ``generate`` call over all unfinished episodes, and each
row stops at its own ``<call>`` / ``<submit>``: `StringStoppingCriteria` decodes only a short tail
of each row's new tokens per step, not the whole batch.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from ..trainer._helpers import eos_token_ids, pad, pad_token_id_or_eos
from ..utils.sampling_generate import generate as sampling_generate

#: The special strings of TRL 0.7's tool-call protocol.
REQUEST_TOKEN = "<request>"
CALL_TOKEN = "<call>"
RESPONSE_TOKEN = "<response>"
SUBMIT_TOKEN = "<submit>"

#: Default for ``max_tool_reponse`` (characters), as in TRL 0.7.10.
DEFAULT_MAX_TOOL_RESPONSE = 100
#: What replaces the end of a tool output longer than ``max_tool_reponse`` characters.
TRUNCATION_SUFFIX = "..."

#: rich styles of `TextHistory.show_text` / `show_tokens`, by segment kind.
PROMPT_STYLE = "black on grey85"
SYSTEM_STYLE = "black on cyan3"
MODEL_STYLE = "black on deep_sky_blue1"
REWARD_STYLE = "black on plum1"


def _rich():
    try:
        import rich  # noqa: F401
        from rich.console import Console
        from rich.text import Text
    except ImportError as err:  # pragma: no cover - rich ships with the dev environment
        raise ImportError("TextHistory.show_text / show_tokens need the 'rich' package: pip install rich") from err
    return Console, Text


class TextHistory:
    """The text and tokens of one episode, kept as segments that are either system or model output.

    Args:
        text: the first segment (usually the prompt plus the task).
        tokens: its tokens, a 1-D tensor.
        system: whether the first segment is system text (mask 0) rather than model output (mask 1).

    Attributes: ``text`` and ``tokens`` (the whole episode), ``text_spans`` / ``token_spans``
    (``(start, end)`` of each segment), ``system_spans`` (one bool per segment), ``token_masks``
    (1 on model tokens, 0 on system tokens), ``completed``, ``truncated`` and ``reward``.
    """

    def __init__(self, text: str, tokens: Tensor, system: bool = True):
        self.system_spans: list[bool] = []
        self.text_spans: list[tuple[int, int]] = []
        self.token_spans: list[tuple[int, int]] = []
        self.text = ""
        tokens = _as_token_tensor(tokens)
        self.tokens = tokens.new_zeros(0)
        self.token_masks = tokens.new_zeros(0)
        self.completed = False
        self.truncated = False
        self.reward = 0.0
        self.append_segment(text, tokens, system=system)

    def append_segment(self, text: str, tokens: Tensor, system: bool = True) -> None:
        """Add a segment: ``text`` and its ``tokens`` (1-D), system text (mask 0) or model output (mask 1)."""
        tokens = _as_token_tensor(tokens)
        if len(text) == 0 or len(tokens) == 0:
            raise ValueError(
                f"TextHistory.append_segment: empty segment (text of {len(text)} characters, {len(tokens)} tokens); "
                "every segment needs some text and at least one token."
            )
        start = len(self.text)
        self.text += text
        self.text_spans.append((start, len(self.text)))
        self.system_spans.append(system)
        start = len(self.tokens)
        tokens = tokens.to(self.tokens.device) if len(self.tokens) else tokens
        self.tokens = torch.cat([self.tokens.to(tokens.device), tokens])
        mask = torch.zeros_like(tokens) if system else torch.ones_like(tokens)
        self.token_masks = torch.cat([self.token_masks.to(tokens.device), mask])
        self.token_spans.append((start, len(self.tokens)))

    def complete(self, truncated: bool = False) -> None:
        """Mark the episode finished (``truncated``: it was cut off rather than ended by the model)."""
        self.completed = True
        self.truncated = truncated

    @property
    def last_text_segment(self) -> str:
        """The text of the most recent segment."""
        start, end = self.text_spans[-1]
        return self.text[start:end]

    def split_query_response_tokens(self) -> tuple[Tensor, Tensor, Tensor]:
        """(query, response, mask): the first segment's tokens, all later tokens, and their mask (1-D each)."""
        split = self.token_spans[0][1]
        return self.tokens[:split], self.tokens[split:], self.token_masks[split:]

    # ------------------------------------------------------------------ display
    def _styled(self, pieces: Sequence[tuple[str, int]]):
        """A rich Text of (text, segment index) pieces, coloured by segment kind, with the reward once completed."""
        _, Text = _rich()
        out = Text()
        for text, segment in pieces:
            out.append(text, style=self._segment_style(segment))
        if self.completed:
            out.append(f"\n\nReward: {self.reward}", style=REWARD_STYLE)
        return out

    def _segment_style(self, segment: int) -> str:
        if segment == 0:
            return PROMPT_STYLE
        return SYSTEM_STYLE if self.system_spans[segment] else MODEL_STYLE

    def show_text(self, show_legend: bool = False):
        """Print the episode's text coloured by segment (prompt, system, model); returns the rich Text."""
        Console, _ = _rich()
        styled = self._styled([(self.text[s:e], i) for i, (s, e) in enumerate(self.text_spans)])
        Console().print(styled)
        if show_legend:
            self.show_colour_legend()
        return styled

    def show_tokens(self, tokenizer, show_legend: bool = False):
        """Print the episode token by token (each decoded with ``tokenizer``), coloured by segment; returns the rich Text."""
        Console, _ = _rich()
        pieces = []
        for i, (s, e) in enumerate(self.token_spans):
            for token in self.tokens[s:e].tolist():
                pieces.append((tokenizer.decode([token]), i))
        styled = self._styled(pieces)
        Console().print(styled)
        if show_legend:
            self.show_colour_legend()
        return styled

    def show_colour_legend(self):
        """Print which colour marks the prompt, system text, model text and reward; returns the rich Text."""
        Console, Text = _rich()
        legend = Text("Legend: ")
        for name, style in (("Prompt", PROMPT_STYLE), ("System", SYSTEM_STYLE), ("Model", MODEL_STYLE), ("Reward", REWARD_STYLE)):
            legend.append(name, style=style)
            legend.append(" ")
        Console().print(legend)
        return legend

    def __repr__(self) -> str:
        state = "truncated" if self.truncated else ("completed" if self.completed else "running")
        return f"TextHistory({len(self.text_spans)} segments, {len(self.tokens)} tokens, {state}, reward={self.reward})"


def _as_token_tensor(tokens) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"TextHistory: tokens must be 1-D, got shape {tuple(tokens.shape)}.")
    return tokens.long()


class StringStoppingCriteria(StoppingCriteria):
    """Stops each generated row once its new text contains one of ``stop_strings``.

    A transformers ``StoppingCriteria``: called with (B, L) ids, it returns a (B,) bool tensor, so
    each row of a batch stops on its own. Per step it decodes only the last few new tokens of the
    rows still running (enough to hold the longest stop string), not the whole batch.

    Args:
        stop_strings: the strings that end a row.
        tokenizer: decodes the generated tokens.
        prompt_length: the width of the (padded) prompt. None: taken at the first call, which
            transformers makes after one new token.

    After generation, ``generated_tokens[i]`` is the number of new tokens of row i up to and
    including the token that completed a stop string (all new tokens if none did).
    """

    def __init__(self, stop_strings: Sequence[str], tokenizer, prompt_length: Optional[int] = None):
        if isinstance(stop_strings, str) or not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"StringStoppingCriteria: stop_strings must be a list of non-empty strings, got {stop_strings!r}.")
        self.stop_strings = list(stop_strings)
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        # Every token decodes to at least one byte, so a stop string ending at the newest token
        # lies within its last (bytes + 1) tokens; the extra one absorbs decoding at a boundary.
        self.window = max(len(s.encode("utf-8")) for s in self.stop_strings) + 1
        self.done: Optional[Tensor] = None
        self.generated_tokens: list[int] = []

    def __call__(self, input_ids: Tensor, scores=None, **kwargs) -> Tensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1] - 1
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            self.generated_tokens = [0] * input_ids.shape[0]
        n_new = input_ids.shape[1] - self.prompt_length
        running = (~self.done).nonzero().flatten().tolist()
        if running:
            start = max(self.prompt_length, input_ids.shape[1] - self.window)
            tails = self.tokenizer.batch_decode(input_ids[running, start:].tolist())
            for row, tail in zip(running, tails):
                self.generated_tokens[row] = n_new
                if any(s in tail for s in self.stop_strings):
                    self.done[row] = True
        return self.done.to(input_ids.device).clone()


ToolSpec = Union[Callable[[str], str], Sequence[Callable[[str], str]], Mapping[str, Callable[[str], str]], None]


def normalize_tools(tools: ToolSpec) -> dict[str, Callable[[str], str]]:
    """Tools as a dict name -> callable(str) -> str.

    A dict keeps its names. In a list (or for a single callable) a function is named by its
    ``__name__``, an object by its ``name`` attribute if that is a string, else by its class
    name (TRL 0.7's rule). Strings (TRL 0.7's ``load_tool`` names) and non-callables are errors:
    transformers 5 removed ``load_tool``.
    """
    if tools is None:
        return {}
    if isinstance(tools, Mapping):
        named = list(tools.items())
    else:
        if callable(tools) and not isinstance(tools, (list, tuple)):
            tools = [tools]
        if isinstance(tools, str) or not isinstance(tools, (list, tuple)):
            raise TypeError(_tool_type_error(tools))
        named = [(_tool_name(tool), tool) for tool in tools]
    out: dict[str, Callable[[str], str]] = {}
    for name, tool in named:
        if not isinstance(name, str) or not name:
            raise TypeError(f"TextEnvironment: tool names must be non-empty strings, got {name!r}.")
        if isinstance(tool, str) or not callable(tool):
            raise TypeError(_tool_type_error(tool, name))
        if name in out:
            raise ValueError(f"TextEnvironment: two tools are named {name!r}; pass a dict {{name: tool}} to name them apart.")
        out[name] = tool
    return out


def _tool_name(tool) -> str:
    if isinstance(tool, str) or not callable(tool):
        raise TypeError(_tool_type_error(tool))
    name = getattr(tool, "__name__", None)
    if isinstance(name, str) and name != "<lambda>":
        return name
    name = getattr(tool, "name", None)
    if isinstance(name, str) and name:
        return name
    if type(tool).__name__ == "function":
        raise ValueError("TextEnvironment: a lambda has no usable name; pass tools as a dict {name: function}.")
    return type(tool).__name__


def _tool_type_error(tool, name: Optional[str] = None) -> str:
    where = f" (tool {name!r})" if name else ""
    hint = (
        " Loading tools by name (transformers' load_tool, as TRL 0.7 did) is gone from transformers 5;"
        if isinstance(tool, str)
        else ""
    )
    return (
        f"TextEnvironment: got {type(tool).__name__} {tool!r}{where} as a tool.{hint} pass Python callables "
        "that take a string and return a string: a function, an object with __call__, a list of them, or a dict "
        "{name: callable}."
    )


class TextEnvironment:
    """Runs episodes in which a language model may call text tools, and scores them.

    Args:
        model: the policy: a causal LM or an rlft value-head model (anything with ``generate``).
        tokenizer: its tokenizer.
        tools: callables str -> str: a list (named by function / class name), a dict name -> callable,
            or one callable.
        reward_fn: ``reward_fn(last_segments, **rewards_kwargs) -> list of rewards``, one per episode;
            gets the text of each episode's last segment.
        prompt: text put before every task (typically a few-shot demonstration of the protocol).
        max_turns: most generation turns per episode; an episode still running after them is
            completed as truncated.
        max_tool_reponse: longest tool output kept, in characters; longer outputs are cut to this
            length, ending in ``"..."`` (TRL 0.7's spelling; ``max_tool_response`` is accepted too).
        max_length: most tokens per episode (prompt included); an episode longer than this is
            completed as truncated. None: no limit.
        generation_kwargs: keyword arguments for ``model.generate`` (``max_new_tokens``, ``do_sample``, ...).
        max_tool_response: the same as ``max_tool_reponse`` (correctly spelt); giving it together with a
            non-default ``max_tool_reponse`` is an error.
        num_generations: episodes per task: ``run`` repeats each task this many times in
            consecutive blocks (for group-relative advantages).
        generation_batch_size: most episodes per ``generate`` call; None: all unfinished episodes at once.
    """

    def __init__(
        self,
        model=None,
        tokenizer=None,
        tools: ToolSpec = None,
        reward_fn: Optional[Callable[..., Sequence[Any]]] = None,
        prompt: Optional[str] = None,
        max_turns: int = 4,
        max_tool_reponse: int = DEFAULT_MAX_TOOL_RESPONSE,
        max_length: Optional[int] = None,
        generation_kwargs: Optional[dict] = None,
        *,
        max_tool_response: Optional[int] = None,
        num_generations: int = 1,
        generation_batch_size: Optional[int] = None,
    ):
        # arguments
        if max_tool_response is not None and max_tool_reponse != DEFAULT_MAX_TOOL_RESPONSE:
            raise ValueError(
                "TextEnvironment: give max_tool_response or TRL 0.7's spelling max_tool_reponse, not both."
            )
        max_tool = max_tool_response if max_tool_response is not None else max_tool_reponse
        self.max_tool_response = int(max_tool)
        if self.max_tool_response < len(TRUNCATION_SUFFIX):
            raise ValueError(f"TextEnvironment: max_tool_reponse must be at least {len(TRUNCATION_SUFFIX)}, got {max_tool}.")
        if max_turns < 1:
            raise ValueError(f"TextEnvironment: max_turns must be at least 1, got {max_turns}.")
        if max_length is not None and max_length < 1:
            raise ValueError(f"TextEnvironment: max_length must be positive or None, got {max_length}.")
        if num_generations < 1:
            raise ValueError(f"TextEnvironment: num_generations must be at least 1, got {num_generations}.")
        if generation_batch_size is not None and generation_batch_size < 1:
            raise ValueError(f"TextEnvironment: generation_batch_size must be positive or None, got {generation_batch_size}.")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"TextEnvironment: reward_fn must be callable, got {type(reward_fn).__name__}.")
        generation_kwargs = dict(generation_kwargs or {})
        for reserved in ("input_ids", "attention_mask", "stopping_criteria"):
            if reserved in generation_kwargs:
                raise ValueError(f"TextEnvironment: generation_kwargs may not set {reserved!r}; the environment sets it.")
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError("TextEnvironment supports causal language models only; got an encoder-decoder model.")

        self.model = model
        self.tokenizer = tokenizer
        self.tools = normalize_tools(tools)
        self.reward_fn = reward_fn
        self.prompt = prompt or ""
        self.max_turns = max_turns
        self.max_length = max_length
        self.generation_kwargs = generation_kwargs
        self.num_generations = num_generations
        self.generation_batch_size = generation_batch_size
        self.request_token = REQUEST_TOKEN
        self.call_token = CALL_TOKEN
        self.response_token = RESPONSE_TOKEN
        self.submit_token = SUBMIT_TOKEN
        self.is_encoder_decoder = False

    @property
    def max_tool_reponse(self) -> int:
        """TRL 0.7's spelling of `max_tool_response`."""
        return self.max_tool_response

    @property
    def current_device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return torch.device("cpu")

    # ================================================================== episodes
    def run(self, queries: Sequence[str], **rewards_kwargs):
        """Play one episode per task (``num_generations`` per task, consecutive) and score them.

        Args:
            queries: the tasks, strings; each episode starts from ``prompt + task``.
            rewards_kwargs: passed to ``reward_fn``. With ``num_generations`` k > 1, a list with
                one entry per task is repeated to one entry per episode.

        Returns:
            ``(queries, responses, masks, rewards, histories)``: per episode the query tokens, the
            response tokens (everything after the query), the response mask (1 on model tokens,
            0 on tool output), the reward and the `TextHistory`; the first four are ready for
            ``PPOTrainer.step(queries, responses, rewards, masks)``.
        """
        if isinstance(queries, str):
            raise TypeError("TextEnvironment.run: queries must be a list of strings, got one string; wrap it in a list.")
        self._check_ready()
        tasks = [task for task in queries for _ in range(self.num_generations)]
        rewards_kwargs = repeat_per_episode(rewards_kwargs, len(queries), self.num_generations)
        histories = [self._start(self.prompt + task) for task in tasks]

        # 1. turns: generate, run the tools, check for ends
        for _ in range(self.max_turns):
            if all(h.completed for h in histories):
                break
            histories = self.generate(histories)
            histories = self.tasks_end_check(histories)
            histories = [self.step(h) for h in histories]
            histories = self.tasks_end_check(histories, model_turn=False)
        for history in histories:
            if not history.completed:
                history.complete(truncated=True)  # out of turns

        # 2. rewards
        self.compute_reward(histories, **rewards_kwargs)

        # 3. tokens for PPOTrainer.step
        queries_t, responses, masks = (list(x) for x in zip(*(h.split_query_response_tokens() for h in histories)))
        rewards = [h.reward for h in histories]
        return queries_t, responses, masks, rewards, histories

    def _check_ready(self) -> None:
        if self.model is None or self.tokenizer is None:
            raise ValueError("TextEnvironment.run needs a model and a tokenizer; pass them to TextEnvironment(...).")
        if self.reward_fn is None:
            raise ValueError("TextEnvironment.run needs reward_fn(last_segments, **kwargs) -> rewards; pass one to TextEnvironment(...).")

    def _start(self, text: str) -> TextHistory:
        tokens = torch.as_tensor(self.tokenizer(text).input_ids, dtype=torch.long)
        if len(tokens) == 0:
            raise ValueError(f"TextEnvironment.run: the query {text!r} tokenizes to nothing; give a non-empty prompt or task.")
        return TextHistory(text, tokens.to(self.current_device), system=True)

    def step(self, history: TextHistory) -> TextHistory:
        """Run the tool that the last (model) segment calls and append its output as a system segment.

        An episode that has ended is completed instead. The appended text is the tool's output (or
        an error message for a malformed call, an unknown tool or a tool that raised), cut to
        ``max_tool_reponse`` characters, followed by ``<response>``.
        """
        truncated, ended = self.task_end_check(history)
        if ended:
            history.complete(truncated=truncated)
        if history.completed:
            return history
        tool, query = self.parse_tool_call(history.last_text_segment)
        if tool is None or query is None:
            response = f"Unknown tool call: {history.last_text_segment}"
        elif tool not in self.tools:
            response = f"Unknown tool {tool}."
        else:
            try:
                response = self.tools[tool](query)
            except Exception as error:  # the model sees the error, as TRL 0.7 does
                response = f"Tool error: {error}"
            if not isinstance(response, str):
                response = str(response)
        if len(response) > self.max_tool_response:
            response = response[: self.max_tool_response - len(TRUNCATION_SUFFIX)] + TRUNCATION_SUFFIX
        text = response + self.response_token
        tokens = torch.as_tensor(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
        history.append_segment(text, tokens.to(history.tokens.device), system=True)
        return history

    def parse_tool_call(self, text: str) -> tuple[Optional[str], Optional[str]]:
        """``(tool name, query)`` of the first ``<request><Name>query<call>`` in ``text``; ``(None, None)`` if there is none."""
        found = re.search(f"{re.escape(self.request_token)}(.*?){re.escape(self.call_token)}", text, re.DOTALL)
        if found is None:
            return None, None
        call = found.group(1)
        name = re.match(r"\s*<([^<>]*)>", call)
        if name is None:
            return None, None
        return name.group(1), call[name.end():]

    def compute_reward(self, histories: list[TextHistory], **reward_kwargs) -> list[TextHistory]:
        """Set each history's ``reward`` to ``reward_fn(last segments, **reward_kwargs)``'s entry."""
        rewards = self.reward_fn([h.last_text_segment for h in histories], **reward_kwargs)
        rewards = list(rewards)
        if len(rewards) != len(histories):
            raise ValueError(f"TextEnvironment: reward_fn returned {len(rewards)} rewards for {len(histories)} episodes.")
        for history, reward in zip(histories, rewards):
            history.reward = reward
        return histories

    def tasks_end_check(self, histories: list[TextHistory], model_turn: bool = True) -> list[TextHistory]:
        """Complete every unfinished history that `task_end_check` says has ended."""
        for history in histories:
            if not history.completed:
                truncated, ended = self.task_end_check(history, model_turn=model_turn)
                if ended:
                    history.complete(truncated=truncated)
        return histories

    def task_end_check(self, history: TextHistory, model_turn: bool = True) -> tuple[bool, bool]:
        """``(truncated, ended)`` for one history.

        Ended when it is longer than ``max_length`` tokens (truncated), when the last segment holds
        the EOS token or ``<submit>``, or (on the model's turn) when the last segment makes no
        tool call (no ``<request>`` ... ``<call>``).
        """
        if history.completed:
            return False, False
        if self.max_length is not None and len(history.tokens) > self.max_length:
            return True, True
        last = history.last_text_segment
        eos = getattr(self.tokenizer, "eos_token", None)
        if eos and eos in last:
            return False, True
        if self.submit_token in last:
            return False, True
        if model_turn and not (self.request_token in last and self.call_token in last):
            return False, True
        return False, False

    # ================================================================== generation
    @torch.no_grad()
    def generate(self, histories: list[TextHistory]) -> list[TextHistory]:
        """Generate the next model segment of every unfinished history, batched, each row stopping at its own stop string."""
        active = [i for i, h in enumerate(histories) if not h.completed]
        size = self.generation_batch_size or max(1, len(active))
        for start in range(0, len(active), size):
            rows = active[start : start + size]
            for i, (text, tokens) in zip(rows, self._generate_batch([histories[i].tokens for i in rows])):
                if len(tokens) == 0:
                    histories[i].complete(truncated=True)  # nothing generated: max_new_tokens is 0
                    continue
                histories[i].append_segment(text, tokens, system=False)
        return histories

    def _generate_batch(self, queries: list[Tensor]) -> list[tuple[str, Tensor]]:
        stops = [self.call_token, self.submit_token]
        return generate_segments(self.model, self.tokenizer, queries, stops, self.generation_kwargs)


@torch.no_grad()
def generate_segments(model, tokenizer, queries: list[Tensor], stop_strings: Optional[Sequence[str]],
                      generation_kwargs: dict) -> list[tuple[str, Tensor]]:
    """One batched ``generate`` call; per query the (text, tokens) it generated, up to its first stop string or EOS.

    queries: 1-D token tensors (left-padded here into one (B, L) batch). Each row stops on its own
    (`StringStoppingCriteria`); what a row generated after its stop string or its EOS (kept) is cut
    off, so no padding comes back. ``generation_kwargs`` go to ``model.generate`` (through rlft's
    sampler for plain sampling).
    """
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        device = torch.device("cpu")
    pad_id = pad_token_id_or_eos(tokenizer, default=0)
    input_ids = pad([q.to(device) for q in queries], padding_value=pad_id, padding_side="left")  # (B, L)
    attention_mask = pad([torch.ones_like(q, device=device) for q in queries], padding_value=0, padding_side="left")
    width = input_ids.shape[1]
    kwargs = dict(generation_kwargs)
    kwargs.setdefault("pad_token_id", pad_id)
    stop = StringStoppingCriteria(stop_strings, tokenizer, prompt_length=width) if stop_strings else None
    criteria = StoppingCriteriaList([c for c in (stop,) if c is not None] + list(kwargs.pop("stopping_criteria", None) or []))
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        output = sampling_generate(model, input_ids=input_ids, attention_mask=attention_mask,
                                   stopping_criteria=criteria, **kwargs)
    finally:
        if was_training:
            model.train()
    new = output[:, width:]  # (B, new tokens)
    eos_ids = eos_token_ids(generation_kwargs, model, tokenizer)
    out = []
    for row in range(new.shape[0]):
        length = new.shape[1]
        if stop is not None and stop.done is not None and bool(stop.done[row]):
            length = stop.generated_tokens[row]
        for pos, token in enumerate(new[row, :length].tolist()):
            if token in eos_ids:
                length = pos + 1  # keep the EOS, as PPOTrainer.generate does
                break
        tokens = new[row, :length]
        out.append((tokenizer.decode(tokens), tokens))
    return out


def repeat_per_episode(kwargs: dict, n_tasks: int, k: int) -> dict:
    """``kwargs`` with every list of ``n_tasks`` entries repeated to ``k`` consecutive entries per task."""
    if k == 1:
        return kwargs
    return {name: [v for v in value for _ in range(k)] if isinstance(value, (list, tuple)) and len(value) == n_tasks
            else value for name, value in kwargs.items()}


__all__ = ["StringStoppingCriteria", "TextEnvironment", "TextHistory", "normalize_tools"]

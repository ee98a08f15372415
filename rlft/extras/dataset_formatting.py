"""Recognise conversational and instruction datasets and turn their rows into training text.

TRL 0.7.10 exposed these as ``trl.extras.dataset_formatting``. Two layouts are recognised:

- conversational: a ``messages`` (or ``conversations``) column whose rows are lists of
  ``{"role": str, "content": str}`` turns, rendered with the tokenizer's chat template;
- instruction: ``prompt`` and ``completion`` string columns, rendered as a user turn followed by
  an assistant turn through the same template.

Every formatting function returned here takes either one example (a dict of values; returns a
str) or a batch (a dict of lists; returns a list of str), so it serves both ``SFTTrainer`` paths:
per example when packing, per batch otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from datasets import Value

logger = logging.getLogger(__name__)

#: The column layouts recognised, as ``datasets`` features (TRL 0.7.10's table). Matching is by
#: structure: extra keys in a turn, extra columns and ``large_string`` text are accepted too.
FORMAT_MAPPING = {
    "chatml": [{"content": Value(dtype="string"), "role": Value(dtype="string")}],
    "instruction": {"completion": Value(dtype="string"), "prompt": Value(dtype="string")},
}

#: Columns that may hold a conversation, in the order they are looked for.
CONVERSATION_FIELDS = ("messages", "conversations")

_TEXT_DTYPES = ("string", "large_string")


def _require_chat_template(tokenizer: Any, layout: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The dataset is {layout}, so its rows are rendered with the tokenizer's chat template, but the tokenizer "
            "has none. Give it one, e.g. `model, tokenizer = rlft.setup_chat_format(model, tokenizer)` (ChatML), or "
            "set `tokenizer.chat_template`; or pass formatting_func / dataset_text_field yourself."
        )


def _is_text(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES


def _is_conversation(feature: Any) -> bool:
    """True for a list feature whose items are structs with string ``role`` and ``content``."""
    if isinstance(feature, list) and len(feature) == 1:  # datasets' older spelling of a list feature
        turn = feature[0]
    else:
        turn = getattr(feature, "feature", None)  # datasets.List / LargeList / Sequence
    return isinstance(turn, dict) and _is_text(turn.get("role")) and _is_text(turn.get("content"))


def _is_batch(values: list) -> bool:
    """A conversation column value: one conversation (list of turn dicts) or a batch of them."""
    return not values or isinstance(values[0], (list, tuple))


def conversations_formatting_function(tokenizer: Any, messages_field: Literal["messages", "conversations"]) -> Callable:
    """A formatting function that renders ``example[messages_field]`` with the tokenizer's chat template.

    Args:
        tokenizer: a tokenizer with a ``chat_template``.
        messages_field: the column holding the conversation.
    """
    _require_chat_template(tokenizer, "conversational")

    def render(conversation) -> str:
        return tokenizer.apply_chat_template(list(conversation), tokenize=False)

    def format_conversations(examples: dict) -> str | list[str]:
        values = examples[messages_field]
        return [render(c) for c in values] if _is_batch(values) else render(values)

    return format_conversations


def instructions_formatting_function(tokenizer: Any) -> Callable:
    """A formatting function that renders ``prompt`` / ``completion`` as a user turn and an assistant turn.

    Args:
        tokenizer: a tokenizer with a ``chat_template``.
    """
    _require_chat_template(tokenizer, "an instruction dataset (prompt / completion)")

    def render(prompt: str, completion: str) -> str:
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(turns, tokenize=False)

    def format_instructions(examples: dict) -> str | list[str]:
        prompts, completions = examples["prompt"], examples["completion"]
        if isinstance(prompts, str):
            return render(prompts, completions)
        if len(prompts) != len(completions):
            raise ValueError(f"instruction batch: {len(prompts)} prompts but {len(completions)} completions.")
        return [render(p, c) for p, c in zip(prompts, completions)]

    return format_instructions


def get_formatting_func_from_dataset(dataset: Any, tokenizer: Any) -> Callable | None:
    """The formatting function a dataset's column layout calls for, or None for any other dataset.

    Recognises a conversational dataset (a ``messages`` or ``conversations`` column of
    ``{"role", "content"}`` turns) and an instruction dataset (``prompt`` and ``completion``
    string columns). Plain text datasets, tokenised datasets and datasets without ``features``
    (torch datasets, lists) give None.

    Args:
        dataset: a ``datasets.Dataset`` or ``datasets.IterableDataset``.
        tokenizer: the tokenizer whose chat template renders the rows.

    Raises:
        ValueError: the layout is recognised but the tokenizer has no chat template (the message
            names ``setup_chat_format`` as the fix).
    """
    features = getattr(dataset, "features", None)
    if not features:
        return None
    for field in CONVERSATION_FIELDS:
        if field in features and _is_conversation(features[field]):
            logger.info("Formatting the %r column with the tokenizer's chat template.", field)
            return conversations_formatting_function(tokenizer, field)
    if _is_text(features.get("prompt")) and _is_text(features.get("completion")):
        logger.info("Formatting prompt / completion columns as user / assistant turns.")
        return instructions_formatting_function(tokenizer)
    return None

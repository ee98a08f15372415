"""Chat formats: give a model and its tokenizer the special tokens and template of a chat format.

TRL 0.7.10 exposed this as ``trl.models.utils``; ChatML (the ``<|im_start|>role\\n...<|im_end|>``
layout) is the one format it defined, and the one defined here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

# ChatML renders every message as "<|im_start|>{role}\n{content}<|im_end|>\n"; a generation
# prompt is the opening of an assistant turn. The Jinja below writes exactly that.
_CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ START + message['role'] + '\\n' + message['content'] + END + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ START + 'assistant\\n' }}{%- endif -%}"
)


@dataclass
class ChatMlSpecialTokens:
    """The special tokens of the ChatML format and the chat template built from them.

    Fields (TRL 0.7.10's defaults): ``bos_token`` opens a turn (``<|im_start|>``), ``eos_token``
    closes it (``<|im_end|>``), ``pad_token`` pads batches (also ``<|im_end|>``). The ``system``,
    ``user`` and ``assistant`` properties are the opening of a turn of that role, e.g.
    ``"<|im_start|>assistant"``; ``chat_template`` is the Jinja template for
    ``tokenizer.chat_template``.
    """

    bos_token: str = "<|im_start|>"
    eos_token: str = "<|im_end|>"
    pad_token: str = "<|im_end|>"

    def _opening(self, role: str) -> str:
        return self.bos_token + role

    @property
    def system(self) -> str:
        return self._opening("system")

    @property
    def user(self) -> str:
        return self._opening("user")

    @property
    def assistant(self) -> str:
        return self._opening("assistant")

    @property
    def chat_template(self) -> str:
        # The tokens go in as Jinja string literals; repr() quotes and escapes them.
        return _CHATML_TEMPLATE.replace("START", repr(self.bos_token)).replace("END", repr(self.eos_token))


#: format name -> the class holding its special tokens and template.
FORMAT_MAPPING = {"chatml": ChatMlSpecialTokens}


def setup_chat_format(
    model: Any,
    tokenizer: Any,
    format: Literal["chatml"] | None = "chatml",
    resize_to_multiple_of: int | None = None,
) -> tuple[Any, Any]:
    """Prepare a model and tokenizer for a chat format (modifies both in place and returns them).

    Adds the format's special tokens to the tokenizer and makes them its BOS, EOS and pad tokens,
    sets ``tokenizer.chat_template``, and resizes the model's token embeddings to the new
    vocabulary size. The model's config and generation config get the new BOS/EOS/pad ids too, so
    ``generate`` stops at the end of a turn.

    Args:
        model: a ``transformers.PreTrainedModel`` (anything with ``resize_token_embeddings``).
        tokenizer: its tokenizer.
        format: the chat format; only ``"chatml"`` exists (the default).
        resize_to_multiple_of: round the embedding rows up to a multiple of this number (None: the
            exact vocabulary size). Multiples of 64 make matrix multiplies faster on GPUs.

    Returns:
        ``(model, tokenizer)``.
    """
    if format not in FORMAT_MAPPING:
        raise ValueError(f"setup_chat_format: unknown format {format!r}; available formats: {', '.join(sorted(FORMAT_MAPPING))}.")
    if resize_to_multiple_of is not None and (
        isinstance(resize_to_multiple_of, bool) or not isinstance(resize_to_multiple_of, int) or resize_to_multiple_of <= 0
    ):
        raise ValueError(f"setup_chat_format: resize_to_multiple_of must be a positive int or None, got {resize_to_multiple_of!r}.")
    if not hasattr(model, "resize_token_embeddings"):
        raise TypeError(f"setup_chat_format: the model ({type(model).__name__}) has no resize_token_embeddings; pass a transformers PreTrainedModel.")
    if getattr(tokenizer, "chat_template", None):
        warnings.warn("setup_chat_format: the tokenizer already has a chat template; it is replaced.", UserWarning, stacklevel=2)
    chat = FORMAT_MAPPING[format]()

    # tokenizer: one call adds the tokens to the vocabulary and points BOS/EOS/pad at them
    tokenizer.add_special_tokens(
        {
            "bos_token": chat.bos_token,
            "eos_token": chat.eos_token,
            "pad_token": chat.pad_token,
            "extra_special_tokens": [chat.bos_token, chat.eos_token],
        },
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = chat.chat_template

    # model: embedding rows for the new tokens, and the new ids wherever generation reads them
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=resize_to_multiple_of)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if config is not None:
            for key, value in ids.items():
                setattr(config, key, value)
    return model, tokenizer

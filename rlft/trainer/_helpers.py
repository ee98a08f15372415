"""Small trainer helpers: those TRL 0.7.10 exported from ``trl.trainer.utils``, and the one copy of
the padding, pad-id and per-model-check plumbing every trainer uses."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def disable_dropout_in_model(model: nn.Module) -> None:
    """Switch off every dropout in ``model`` (RL fine-tuning wants deterministic forwards).

    Sets p=0 on ``nn.Dropout`` modules and zeroes the float dropout rates that many
    transformers layers keep as plain attributes and pass to ``F.dropout`` (T5's
    attention, BART's layers, Llama's ``attention_dropout``).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                setattr(module, name, 0.0)


def exact_div(a: int, b: int, a_str: str = "a", b_str: str = "b", custom_error_message: str = "") -> int:
    """a // b, raising ValueError when b does not divide a (TRL 0.7.10's signature).

    ``a_str`` / ``b_str`` name the two numbers in the error; ``custom_error_message`` leads it.
    """
    if b == 0 or a % b != 0:
        lead = f"{custom_error_message}: " if custom_error_message else ""
        raise ValueError(f"{lead}{a_str}={a} is not a multiple of {b_str}={b}")
    return a // b


def pad(tensors: list[Tensor], padding_value: int | float = 0, padding_side: str = "right") -> Tensor:
    """Stack tensors of different shapes into one, padding each dimension to the largest size.

    tensors: list of (L_i, ...) with equal rank. Returns (n, max L, ...).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    shape = [len(tensors)] + [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = torch.full(shape, padding_value, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, t in enumerate(tensors):
        if padding_side == "left":
            index = tuple(slice(s - n, s) for s, n in zip(shape[1:], t.shape))
        else:
            index = tuple(slice(0, n) for n in t.shape)
        out[(i,) + index] = t
    return out


def pad_with_mask(seqs: Sequence[Tensor], padding_value: int, padding_side: str = "right") -> tuple[Tensor, Tensor]:
    """Stack ragged 1-D token tensors into ids (n, max L) padded with ``padding_value`` on ``padding_side``,
    and the 0/1 attention mask (n, max L) that marks the real tokens."""
    ids = pad(list(seqs), padding_value=padding_value, padding_side=padding_side)
    mask = pad([torch.ones_like(s, dtype=torch.long) for s in seqs], padding_value=0, padding_side=padding_side)
    return ids, mask


def pad_token_id_or_eos(tokenizer: Any, default: int | None = None) -> int | None:
    """The id to pad with: the tokenizer's pad token, else its EOS token (what GPT-2 users set), else ``default``."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return default


def eos_token_ids(generation_kwargs: dict, model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a response: the call's ``eos_token_id``, else the model's generation config's (looked up
    through value-head and peft wrappers), else the tokenizer's; empty when none is set."""
    from ..utils.sampling_generate import model_generation_config

    eos = generation_kwargs.get("eos_token_id")
    if eos is None:
        eos = getattr(model_generation_config(model), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class PerModelCheck:
    """A yes/no property of a model, computed once per model object by ``probe(model)``.

    Keyed weakly by the model itself, so a freed model's answer goes with it and a new model
    that reuses its memory address is probed afresh (an ``id(model)`` key would not be).
    """

    def __init__(self, probe: Callable[[nn.Module], bool]):
        self._probe = probe
        self._answers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module) -> bool:
        if model not in self._answers:
            self._answers[model] = bool(self._probe(model))
        return self._answers[model]

"""``model.generate`` with plain ancestral sampling drawn by inverse CDF (one random number per row).

transformers samples each token with ``torch.multinomial``, which on CPU draws one random number
per vocabulary entry (see `rlft.functional.sampling`). `generate` below keeps transformers'
decoding loop, caches, stopping rules and logits processors, and moves only the last step: the
sampling warpers (temperature, top-k, top-p, applied in transformers' order by transformers' own
classes) and the draw run in one logits processor placed after all others, which returns a
score of 0 for the drawn token and -inf elsewhere; transformers then decodes greedily, i.e. takes it.

The tokens come from the same distribution as transformers' sampling, not the same random
stream: a seeded run draws different (equally likely) tokens than ``model.generate`` would.
Set the environment variable ``RLFT_SAMPLER=transformers`` to use transformers' sampling.

Every call runs with the model's fp32 linear layers packed for oneDNN (`rlft.utils.decode.packed_linears`):
the same products 2-3x faster on CPU, equal to fp32 rounding; ``RLFT_DECODE_LINEARS=torch`` switches that off.
Where its settings allow, a plain-sampling call runs `rlft.utils.decode.lean_decode` instead of
transformers' loop: the same model calls and draws, so the same tokens, with less work per token
(``RLFT_DECODE_LOOP=transformers`` switches that off).

Only plain sampling takes this path: ``do_sample`` true, one beam, and no other sampling warper
(min_p, typical_p, epsilon/eta cutoffs, top_h), no watermarking, no assistant model, no
``output_scores`` (the processed scores would be the one-hot ones). Anything else goes to
``model.generate`` unchanged.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor

from ..functional.sampling import sample_categorical
from .decode import lean_decode, lean_decode_plan, packed_linears
from .fused_gelu import fused_gelu

#: transformers' values for generation settings neither the call nor the model's config set.
_GLOBAL_DEFAULTS = {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
#: Sampling settings this path does not implement: it is taken only while each is unset or neutral.
_NEUTRAL = {
    "min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
    "top_h": (None,), "watermarking_config": (None,), "output_scores": (None, False),
}
#: Call options that select another decoding method.
_OTHER_METHODS = ("assistant_model", "prompt_lookup_num_tokens", "custom_generate", "assistant_early_exit")


class InverseCDFSampling:
    """A logits processor that applies temperature / top-k / top-p and draws one token per row.

    Returns (B, V) scores: 0 at the drawn token, -inf elsewhere (so greedy decoding takes it).
    """

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0):
        from transformers import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.warpers = []  # in transformers' order: temperature, top-k, top-p
        if temperature is not None and temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k is not None and top_k != 0:
            self.warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))

    def draw(self, scores: Tensor, input_ids: Tensor | None = None) -> Tensor:
        """The warped draw itself: (B, V) scores -> (B,) tokens. (The warpers do not read ``input_ids``.)"""
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        return sample_categorical(probs)  # (B,)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        token = self.draw(scores, input_ids)  # (B,)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, token[:, None], 0.0)
        return out


def _setting(name: str, kwargs: dict, configs: list) -> Any:
    """The value transformers would use: the call's, else the first config's that sets it, else the global default."""
    if kwargs.get(name) is not None:
        return kwargs[name]
    for config in configs:
        value = getattr(config, name, None) if config is not None else None
        if value is not None:
            return value
    return _GLOBAL_DEFAULTS.get(name)


def model_generation_config(model):
    """The ``generation_config`` of a transformers model, or of the one inside a value-head or peft wrapper (None if neither)."""
    from ..trainer._model_helpers import unwrap_base_model

    return getattr(unwrap_base_model(model), "generation_config", None)


def sampling_plan(model, kwargs: dict) -> dict | None:
    """(temperature, top_k, top_p) for the inverse-CDF path, or None when ``model.generate`` must sample."""
    if os.environ.get("RLFT_SAMPLER", "").lower() in ("transformers", "hf", "multinomial"):
        return None
    if any(kwargs.get(name) is not None for name in _OTHER_METHODS):
        return None
    configs = [kwargs.get("generation_config"), model_generation_config(model)]
    if _setting("do_sample", kwargs, configs) is not True or (_setting("num_beams", kwargs, configs) or 1) != 1:
        return None
    for name, neutral in _NEUTRAL.items():
        if _setting(name, kwargs, configs) not in neutral:
            return None
    return {name: _setting(name, kwargs, configs) for name in ("temperature", "top_k", "top_p")}


def _rows(kwargs: dict) -> int | None:
    """Rows per decoding step (batch x returned sequences), the packed weights' layout hint; None if unknown."""
    ids = kwargs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        return None
    return ids.shape[0] * int(kwargs.get("num_return_sequences") or 1)


def generate(model, **kwargs) -> Tensor:
    """``model.generate(**kwargs)``, with plain sampling drawn by `InverseCDFSampling` where it applies,
    the linear layers packed for the call (`packed_linears`) and GPT-2's GELU fused (`fused_gelu`)."""
    with packed_linears(model, _rows(kwargs)), fused_gelu(model):
        return _generate(model, kwargs)


def _generate(model, kwargs: dict) -> Tensor:
    plan = sampling_plan(model, kwargs)
    if plan is None:
        return model.generate(**kwargs)
    lean = lean_decode_plan(model, kwargs)
    if lean is not None:  # the same tokens as the loop below, without its per-token bookkeeping
        return lean_decode(lean, InverseCDFSampling(**plan).draw)
    from transformers import LogitsProcessorList

    kwargs = dict(kwargs)
    # Neutral values for the sampling settings, which greedy decoding would otherwise warn about.
    neutral = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
    if kwargs.get("generation_config") is not None:
        config = copy.deepcopy(kwargs["generation_config"])
        for name, value in neutral.items():
            setattr(config, name, value)
        kwargs["generation_config"] = config
        for name in neutral:
            kwargs.pop(name, None)
    else:
        kwargs.update(neutral)
    # After the caller's processors, as transformers applies its warpers after them.
    kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), InverseCDFSampling(**plan)])
    return model.generate(**kwargs)


__all__ = ["InverseCDFSampling", "generate", "model_generation_config", "sampling_plan"]

"""Model helpers: `unwrap_base_model`, the one way rlft reaches the transformers model under its
wrappers, and helpers TRL 0.7.10 exported from ``trl.trainer.utils`` that rlft's trainers do not
call, kept for code written against TRL: a NEFTune forward hook, bf16 casting of a PEFT model,
and hub tags for ``push_to_hub``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..import_utils import is_unsloth_available


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """``accelerator.unwrap_model(model)``: the model under a DDP / DataParallel / DeepSpeed / FSDP wrapper (a
    ``torch.compile`` wrapper is kept, as accelerate keeps it). Every such wrapper holds the model as
    ``.module`` (a compiled one as ``._orig_mod``); a model with neither comes back at once. accelerate's own
    function looks up installed packages on every call (about 1.5 ms: 9% of a PPO step of the benchmark's
    5M-parameter GPT-2, which unwrapped 36 times a step), so per-step code unwraps here."""
    if not isinstance(getattr(model, "module", None), nn.Module) and "_orig_mod" not in model.__dict__:
        return model
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def unwrap_base_model(model: nn.Module) -> nn.Module:
    """The transformers model under every wrapper: DDP / DeepSpeed / ``torch.compile`` (`unwrap_parallel`,
    as ``accelerator.unwrap_model``), then a value-head wrapper (``.pretrained_model``), then a peft model
    (``get_base_model()``). A plain model comes back unchanged."""
    model = unwrap_parallel(model)
    inner = getattr(model, "pretrained_model", None)
    model = inner if isinstance(inner, nn.Module) else model
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


#: Module-name fragments of token embeddings and output heads (GPT-2, Llama, ...), cast like
#: the adapters so that they match the bf16 activations around them.
_EMBEDDING_NAMES = ("lm_head", "embed_tokens", "wte", "wpe")


def neftune_post_forward_hook(module: nn.Module, input: Any, output: Tensor) -> Tensor:
    """Forward hook for an embedding layer that adds NEFTune noise in training mode.

    NEFTune (Jain et al. 2023, Algorithm 1) adds uniform noise in ``[-b, b]`` with
    ``b = alpha / sqrt(L * d)`` to the (B, L, d) embeddings. Set ``module.neftune_noise_alpha``
    and register with ``module.register_forward_hook(neftune_post_forward_hook)``. In eval mode
    the output is returned unchanged.
    """
    if not module.training:
        return output
    seq_len, dim = output.shape[1], output.shape[2]  # output: (B, L, d)
    bound = module.neftune_noise_alpha / math.sqrt(seq_len * dim)
    return output + torch.empty_like(output).uniform_(-bound, bound)


def peft_module_casting_to_bf16(model: nn.Module) -> None:
    """Cast a PEFT model for bf16 training, in place.

    Adapter (tuner) layers go to bfloat16; normalisation layers to float32, for stable
    statistics; float32 token embeddings and output heads to bfloat16.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.to(torch.bfloat16)
        elif isinstance(module, nn.LayerNorm) or "norm" in name:
            module.to(torch.float32)
        elif any(part in name for part in _EMBEDDING_NAMES):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def trl_sanitze_kwargs_for_tagging(model: Any, tag_names: list[str], kwargs: dict | None = None) -> dict | None:
    """Add the trainer's hub tags to ``push_to_hub`` keyword arguments (TRL's spelling of the name).

    Args:
        model: the model being pushed; a model patched by unsloth adds the ``unsloth`` tag.
        tag_names: the trainer's tags.
        kwargs: the ``push_to_hub`` keyword arguments, changed in place; their ``tags`` (a str
            or a list) are kept, before the trainer's. None: nothing to tag.

    Returns:
        ``kwargs``.
    """
    tags = list(tag_names)
    if is_unsloth_available() and getattr(getattr(model, "config", None), "unsloth_version", None) is not None:
        tags.append("unsloth")
    if kwargs is None:
        return None
    existing = kwargs.get("tags")
    if existing is None:
        kwargs["tags"] = tags
    elif isinstance(existing, str):
        kwargs["tags"] = [existing] + [t for t in tags if t != existing]
    else:
        kwargs["tags"] = list(existing) + [t for t in tags if t not in existing]
    return kwargs

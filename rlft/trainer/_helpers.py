"""Small trainer helpers TRL 0.7.10 exported from ``trl.trainer.utils``."""

from __future__ import annotations

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


def wrap_peft(model: nn.Module, peft_config, args, owner: str) -> nn.Module:
    """``get_peft_model(model, peft_config)`` for a plain model, with a clear error for an adapted one.

    With gradient checkpointing, the (frozen) embeddings are made to output a tensor that requires
    grad, which checkpointed blocks need. ``owner`` names the trainer in error messages.
    """
    try:
        from peft import PeftModel, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise ImportError(f"{owner}: peft_config needs the peft package (pip install peft).") from err
    if isinstance(model, PeftModel):
        raise ValueError(f"{owner}: the model is already a PeftModel; pass peft_config=None or the base model.")
    if getattr(args, "gradient_checkpointing", False) and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)

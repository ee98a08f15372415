"""peft plumbing shared by the value-head wrappers and every trainer: one way to detect a peft
model, one way to wrap a model with a new adapter, one error when peft is not installed.

peft is an optional extra (``pip install "rlft[peft]"``), as it was for TRL 0.7: nothing here
imports it until a peft feature is used.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..import_utils import is_peft_available, require


def require_peft(feature: str) -> None:
    """Raise an ImportError naming the ``peft`` extra when peft is not installed; ``feature`` says what needed it."""
    require("peft", feature)


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (False, without importing anything, when peft is absent)."""
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def wrap_peft(
    model: nn.Module,
    peft_config: Any,
    *,
    owner: str,
    gradient_checkpointing: bool = False,
    kbit_kwargs: dict | None = None,
) -> nn.Module:
    """``get_peft_model(model, peft_config)``, the one way every rlft trainer adds an adapter.

    Args:
        model: a transformers model, or a peft model whose adapter(s) are merged into the base
            weights first (with a warning), so the new adapter trains on top of them (what TRL
            0.7.10's DPOTrainer did; its SFT and reward trainers silently ignored ``peft_config``
            then, which trained the old adapter instead of the one asked for).
        peft_config: a ``peft.PeftConfig``.
        owner: the caller's name, for messages.
        gradient_checkpointing: make the (frozen) embeddings output a tensor that requires grad,
            which checkpointed blocks need to back-propagate into the adapters.
        kbit_kwargs: arguments of peft's ``prepare_model_for_kbit_training`` for an 8/4-bit model
            (default: ``use_gradient_checkpointing=gradient_checkpointing``).
    """
    require_peft(f"{owner}(peft_config=...)")
    from peft import PeftConfig, get_peft_model, prepare_model_for_kbit_training

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"{owner}: peft_config must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}.")
    if is_peft_model(model):
        if not hasattr(model, "merge_and_unload"):
            raise ValueError(
                f"{owner}: the model already has a {model.peft_config[model.active_adapter].peft_type} adapter, which "
                "cannot be merged into its weights; pass peft_config=None to train that adapter, or pass the base model."
            )
        warnings.warn(
            f"{owner}: the model already has peft adapter(s) {sorted(model.peft_config)}; they are merged into the "
            "base weights and a fresh adapter from peft_config is trained on top. Pass peft_config=None to keep "
            "training the existing adapter instead.",
            UserWarning,
            stacklevel=3,
        )
        model = model.merge_and_unload()
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        kbit_kwargs = {"use_gradient_checkpointing": gradient_checkpointing} if kbit_kwargs is None else kbit_kwargs
        model = prepare_model_for_kbit_training(model, **kbit_kwargs)
    elif gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)

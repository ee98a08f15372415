"""Legacy mode: the transformers 4 spellings of TRL 0.7-era scripts, accepted by transformers 5 on request.

Most TRL 0.7 scripts break on arguments that transformers 5 removed, not on rlft's API
(``TrainingArguments(evaluation_strategy=...)``, ``from_pretrained(use_auth_token=...)``,
``pipeline(..., return_all_scores=True)``, ...). Legacy mode lets such a script run after
changing only its ``trl`` imports to ``rlft``:

    import rlft
    rlft.enable_legacy_mode()      # or run the script with RLFT_LEGACY=1

It is off by default and never turns itself on. When on, it wraps a few public entry points of
transformers (and one of datasets) so that each old spelling is translated to today's, with one
warning per spelling and process. Everything else passes through untouched. ``disable_legacy_mode()``
(or leaving a ``with legacy_mode():`` block) puts the original functions back.

The table of mappings is in docs/legacy.md; the TrainingArguments renames are shared with
`rlft._compat`, which rlft's own classes use without legacy mode.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ._compat import resolve_processing_class, translate_training_arguments, warn_once

__all__ = ["ENV_VAR", "disable_legacy_mode", "enable_legacy_mode", "is_legacy_mode_enabled", "legacy_mode"]

#: Environment variable read by ``import rlft``: 1/true/yes/on turns legacy mode on, 0/false/no/off or unset leaves it off.
ENV_VAR = "RLFT_LEGACY"
_ENV_ON = frozenset({"1", "true", "yes", "on"})
_ENV_OFF = frozenset({"", "0", "false", "no", "off"})

#: Optimizer names transformers 5 removed, and the implementation of the same algorithm that replaced them.
OPTIM_RENAMES = {"adamw_hf": "adamw_torch"}  # transformers' own AdamW; torch's decoupled-decay AdamW is the same update


# ----------------------------------------------------------------------------- the translations
def legacy_training_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments keyword arguments of transformers 4, in transformers 5 spelling.

    The renamed and removed fields of `rlft._compat` (``evaluation_strategy``, ``group_by_length``,
    ``no_cuda``, ``logging_dir``, ...), plus two values: ``report_to=None`` meant "every installed
    integration" in transformers 4 (it is ``"all"`` now), and ``optim="adamw_hf"`` is ``"adamw_torch"``.
    """
    out = translate_training_arguments(kwargs, "TrainingArguments")
    if "report_to" in out and out["report_to"] is None:
        warn_once("legacy.report_to", "TrainingArguments(report_to=None) meant every installed integration in "
                  "transformers 4; mapped to report_to='all'. Pass report_to='none' to log nowhere.")
        out["report_to"] = "all"
    optim = out.get("optim")
    if isinstance(optim, str) and optim in OPTIM_RENAMES:
        warn_once(f"legacy.optim.{optim}", f"TrainingArguments(optim={optim!r}) was removed from transformers; "
                  f"mapped to optim={OPTIM_RENAMES[optim]!r} (the same AdamW update).")
        out["optim"] = OPTIM_RENAMES[optim]
    return out


def legacy_from_pretrained_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments of transformers 4, in transformers 5 spelling.

    ``use_auth_token`` -> ``token``; ``load_in_8bit`` / ``load_in_4bit`` ->
    ``quantization_config=BitsAndBytesConfig(...)``; ``use_flash_attention_2=True`` ->
    ``attn_implementation="flash_attention_2"``. Giving an old and its new spelling together is an error.
    """
    out = dict(kwargs)
    if "use_auth_token" in out:
        _take(out, "use_auth_token", "token", where)  # the hub token, same values (True, a string)
    bits = {k: bool(out.pop(k)) for k in ("load_in_8bit", "load_in_4bit") if k in out}
    if bits:
        if out.get("quantization_config") is not None and any(bits.values()):
            raise TypeError(f"{where}: got both {' and '.join(bits)} (old spelling) and 'quantization_config'; pass only quantization_config.")
        if any(bits.values()):
            from transformers import BitsAndBytesConfig

            out["quantization_config"] = BitsAndBytesConfig(**{k: v for k, v in bits.items() if v})
        target = "quantization_config=BitsAndBytesConfig(" + ", ".join(f"{k}=True" for k, v in bits.items() if v) + ")"
        for name in bits:
            warn_once(f"legacy.{name}", f"{where}: '{name}' was removed from transformers; mapped to "
                      f"{target if any(bits.values()) else 'nothing (False was the default)'}.")
    if "use_flash_attention_2" in out:
        flash = bool(out.pop("use_flash_attention_2"))
        if flash:
            if out.get("attn_implementation") is not None:
                raise TypeError(f"{where}: got both 'use_flash_attention_2' and 'attn_implementation'; pass only attn_implementation.")
            out["attn_implementation"] = "flash_attention_2"
        warn_once("legacy.use_flash_attention_2", f"{where}: 'use_flash_attention_2' was removed from transformers; mapped to "
                  f"{'attn_implementation=' + repr('flash_attention_2') if flash else 'nothing (False was the default)'}.")
    return out


def _take(kwargs: dict[str, Any], old: str, new: str, where: str) -> None:
    """Move ``kwargs[old]`` to ``kwargs[new]`` (an explicit None under the new name counts as absent)."""
    if kwargs.get(new) is not None:
        raise TypeError(f"{where}: got both '{old}' (old spelling) and '{new}'; pass only '{new}'.")
    warn_once(f"legacy.{old}", f"{where}: '{old}' was removed; mapped to '{new}'.")
    kwargs[new] = kwargs.pop(old)


# ----------------------------------------------------------------------------- the wrappers
def _wrap_training_arguments_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **legacy_training_arguments(kwargs))

    return __init__


def _wrap_from_pretrained(original):
    func = original.__func__  # a classmethod on PreTrainedModel: every model class inherits it

    @functools.wraps(func)
    def from_pretrained(cls, *args, **kwargs):
        return func(cls, *args, **legacy_from_pretrained_kwargs(kwargs, f"{cls.__name__}.from_pretrained"))

    return classmethod(from_pretrained)


def _wrap_text_classification_parameters(original):
    @functools.wraps(original)
    def _sanitize_parameters(self, *args, return_all_scores=None, **kwargs):
        preprocess, forward, postprocess = original(self, *args, **kwargs)
        if return_all_scores is not None and "top_k" not in kwargs:
            warn_once("legacy.return_all_scores", "pipeline(..., return_all_scores=...) was removed from transformers; "
                      "mapped to its transformers 4 meaning: every label's score, in label order (top_k=None sorts "
                      "them by score instead).")
            # top_k without _legacy=False keeps transformers 4's output: a list per input, labels in id order.
            postprocess["top_k"] = None if return_all_scores else 1
        return preprocess, forward, postprocess

    return _sanitize_parameters


def _wrap_trainer_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if "tokenizer" in kwargs:
            where = type(self).__name__
            kwargs["processing_class"] = resolve_processing_class(kwargs.pop("tokenizer"), kwargs.pop("processing_class", None), where)
        original(self, *args, **kwargs)
        _adapt_old_compute_loss(self)

    return __init__


def _adapt_old_compute_loss(trainer) -> None:
    """Let a ``compute_loss(self, model, inputs, return_outputs=False)`` override of transformers 4 run.

    transformers 5 calls it with ``num_items_in_batch=``, and divides the loss by the accumulation
    steps only when it cannot tell that the loss was normalised by that count. An old override never
    uses the count, so its loss is divided by the accumulation steps, as transformers 4 did.
    """
    from transformers import Trainer

    override = type(trainer).compute_loss
    if override is Trainer.compute_loss:
        return
    params = inspect.signature(override).parameters
    if "num_items_in_batch" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    warn_once(f"legacy.compute_loss.{type(trainer).__qualname__}",
              f"{type(trainer).__name__}.compute_loss has the transformers 4 signature (no num_items_in_batch); it is "
              "called without that argument and its loss is averaged over gradient accumulation steps, as before.")
    old = trainer.compute_loss  # bound method

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        return old(model, inputs, return_outputs=return_outputs)

    trainer.compute_loss = compute_loss
    if trainer.loss_is_scaled_for_ga is None:
        trainer.loss_is_scaled_for_ga = False


def _wrap_load_dataset_builder(original):
    @functools.wraps(original)
    def load_dataset_builder(*args, **kwargs):
        if "use_auth_token" in kwargs:
            _take(kwargs, "use_auth_token", "token", "datasets.load_dataset")
        return original(*args, **kwargs)

    return load_dataset_builder


@dataclass(frozen=True)
class _Patch:
    """One wrapped attribute: ``module.owner.attr`` (or ``module.attr`` when owner is empty)."""

    module: str
    owner: str
    attr: str
    wrap: Callable[[Any], Any]

    def target(self):
        obj = importlib.import_module(self.module)
        return getattr(obj, self.owner) if self.owner else obj

    @property
    def name(self) -> str:
        return ".".join(p for p in (self.module, self.owner, self.attr) if p)


#: Every entry point legacy mode wraps (methods on the defining class, so names a script imported
#: before legacy mode was turned on are covered too).
PATCHES = (
    _Patch("transformers", "TrainingArguments", "__init__", _wrap_training_arguments_init),
    _Patch("transformers", "PreTrainedModel", "from_pretrained", _wrap_from_pretrained),
    _Patch("transformers.pipelines.text_classification", "TextClassificationPipeline", "_sanitize_parameters",
           _wrap_text_classification_parameters),
    _Patch("transformers", "Trainer", "__init__", _wrap_trainer_init),
    # load_dataset looks this name up in its module on every call
    _Patch("datasets.load", "", "load_dataset_builder", _wrap_load_dataset_builder),
)

#: patch name -> (object patched, the original attribute as stored on it). Empty when legacy mode is off.
_originals: dict[str, tuple[Any, Any]] = {}


# ----------------------------------------------------------------------------- switching
def enable_legacy_mode() -> None:
    """Accept the transformers 4 spellings of TRL 0.7-era scripts (see docs/legacy.md); one warning per spelling.

    Idempotent. Wraps `PATCHES` in place; `disable_legacy_mode` restores them. Not thread-safe with
    respect to other code patching the same attributes at the same time.
    """
    try:
        for patch in PATCHES:
            if patch.name in _originals:
                continue
            target = patch.target()
            if patch.attr not in vars(target):
                raise RuntimeError(f"legacy mode: {patch.name} is not defined where expected; this transformers/datasets "
                                   "version is not supported by rlft's legacy mode.")
            original = vars(target)[patch.attr]  # as stored (a classmethod stays a classmethod)
            setattr(target, patch.attr, patch.wrap(original))
            _originals[patch.name] = (target, original)
    except BaseException:
        disable_legacy_mode()  # all or nothing
        raise
    warn_once("legacy.enabled", "rlft legacy mode is on: transformers 4 spellings are translated (one warning each). "
              "See docs/legacy.md.", UserWarning)


def disable_legacy_mode() -> None:
    """Put back every original that `enable_legacy_mode` wrapped. A no-op when legacy mode is off."""
    for patch in reversed(PATCHES):
        saved = _originals.pop(patch.name, None)
        if saved is not None:
            target, original = saved
            setattr(target, patch.attr, original)


def is_legacy_mode_enabled() -> bool:
    return bool(_originals)


@contextmanager
def legacy_mode(enabled: bool = True) -> Iterator[None]:
    """Legacy mode on (or off, with ``enabled=False``) inside the block, and the previous state after it."""
    was_on = is_legacy_mode_enabled()
    if enabled:
        enable_legacy_mode()
    else:
        disable_legacy_mode()
    try:
        yield
    finally:
        if was_on:
            enable_legacy_mode()
        else:
            disable_legacy_mode()


def legacy_mode_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether ``RLFT_LEGACY`` asks for legacy mode; an unrecognised value is an error naming the accepted ones."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    if value in _ENV_ON:
        return True
    if value in _ENV_OFF:
        return False
    raise ValueError(f"{ENV_VAR}={value!r} is not understood: use 1/true/yes/on to turn legacy mode on, "
                     "0/false/no/off (or leave it unset) to keep it off.")

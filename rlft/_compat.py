"""Old argument spellings from TRL 0.7 / transformers 4, mapped to today's names.

Each old spelling is accepted, translated, and announced with one warning per
process (not one per call), so a TRL 0.7 script runs unchanged but its author
learns the new name.
"""

from __future__ import annotations

import warnings
from typing import Any

_warned: set[tuple[str, str]] = set()

#: TrainingArguments fields renamed by transformers since TRL 0.7 (old -> new), same meaning.
#: Checked against ``dataclasses.fields(transformers.TrainingArguments)`` of transformers 5.23
#: (``tests/trainer/test_reward_trainer.py::test_compat_tables_match_installed_transformers``).
TRAINING_ARGUMENT_RENAMES = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    # transformers 4 treated per_gpu_* as an override of per_device_* (one process per GPU).
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "push_to_hub_model_id": "hub_model_id",
    "push_to_hub_token": "hub_token",
}

#: TrainingArguments fields TRL 0.7 documented whose meaning moved into another field of
#: transformers 5: old name -> function(value) -> {new field: value} ({} when the value is the
#: old default and nothing needs setting).
TRAINING_ARGUMENT_CONVERSIONS = {
    # transformers 5 folds warmup_ratio into warmup_steps: a float below 1 is a ratio.
    "warmup_ratio": lambda v: {"warmup_steps": float(v)} if v else {},
    "adafactor": lambda v: {"optim": "adafactor"} if v else {},
    "group_by_length": lambda v: {"train_sampling_strategy": "group_by_length"} if v else {},
    "include_inputs_for_metrics": lambda v: {"include_for_metrics": ["inputs"]} if v else {},
    "include_tokens_per_second": lambda v: {"include_num_input_tokens_seen": True} if v else {},
    "split_batches": lambda v: {"accelerator_config": {"split_batches": True}} if v else {},
    "dispatch_batches": lambda v: {} if v is None else {"accelerator_config": {"dispatch_batches": bool(v)}},
}

#: TrainingArguments fields TRL 0.7 documented that transformers 5 removed without a
#: successor (old name -> TRL 0.7 default). They are accepted and dropped with one
#: warning; a non-default value is named in the warning since it no longer has an effect.
TRAINING_ARGUMENT_REMOVED = {
    "overwrite_output_dir": False,  # transformers 5 always writes into output_dir
    "logging_dir": None,  # logging integrations choose their own folder now
    "save_safetensors": True,  # always safetensors now
    "use_mps_device": False,  # MPS is picked automatically
    "jit_mode_eval": False,
    "use_ipex": False,
    "fp16_opt_level": "O1",  # apex AMP is gone
    "half_precision_backend": "auto",
    "fp16_backend": "auto",
    "tpu_num_cores": None,
    "tpu_metrics_debug": False,
    "past_index": -1,
    "fsdp_min_num_params": 0,  # moved into fsdp_config
    "fsdp_transformer_layer_cls_to_wrap": None,  # moved into fsdp_config
    "use_legacy_prediction_loop": False,
    "push_to_hub_organization": None,  # use hub_model_id="org/name"
    "mp_parameters": "",
    "torchdynamo": None,  # use torch_compile_backend
    "ray_scope": "last",
}

_OLD_TRAINING_ARGUMENT_NAMES = frozenset(TRAINING_ARGUMENT_RENAMES) | frozenset(TRAINING_ARGUMENT_CONVERSIONS) | frozenset(
    TRAINING_ARGUMENT_REMOVED
)


def warn_once(key: str, message: str, category: type[Warning] = FutureWarning) -> None:
    """Warn with ``message`` the first time ``key`` is seen in this process."""
    marker = (category.__name__, key)
    if marker in _warned:
        return
    _warned.add(marker)
    warnings.warn(message, category, stacklevel=3)


def rename_kwargs(kwargs: dict[str, Any], renames: dict[str, str], where: str) -> dict[str, Any]:
    """Return ``kwargs`` with old names replaced by new ones (one warning per old name).

    Giving both the old and the new name is an error, since silently preferring
    one would hide a mistake.
    """
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out:
            raise TypeError(f"{where}: got both '{old}' (old spelling) and '{new}'; pass only '{new}'.")
        warn_once(f"{where}.{old}", f"{where}: '{old}' is deprecated, use '{new}' instead (mapped for you).")
        out[new] = value
    return out


def resolve_processing_class(tokenizer: Any, processing_class: Any, where: str) -> Any:
    """Map TRL 0.7's ``tokenizer=`` onto transformers 5's ``processing_class=``."""
    if tokenizer is None:
        return processing_class
    if processing_class is not None and processing_class is not tokenizer:
        raise TypeError(f"{where}: got both 'tokenizer' and 'processing_class'; pass only 'processing_class'.")
    warn_once(f"{where}.tokenizer", f"{where}: 'tokenizer' is the TRL 0.7 name; transformers 5 calls it 'processing_class' (mapped for you).")
    return tokenizer


def translate_training_arguments(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Return TrainingArguments keyword arguments with TRL 0.7 / transformers 4 spellings translated.

    Renamed fields are renamed, fields whose meaning moved are converted, removed fields are
    dropped; each old name warns once per process. Names that are neither old nor known are
    left for the dataclass to reject.
    """
    out = rename_kwargs(kwargs, TRAINING_ARGUMENT_RENAMES, where)
    for old, convert in TRAINING_ARGUMENT_CONVERSIONS.items():
        if old not in out:
            continue
        value = out.pop(old)
        new = convert(value)
        for key, new_value in new.items():
            if key in out and key != "accelerator_config":
                raise TypeError(f"{where}: got both '{old}' (old spelling) and '{key}'; pass only '{key}'.")
            if key == "accelerator_config" and isinstance(out.get(key), dict):
                new_value = {**out[key], **new_value}
            out[key] = new_value
        target = ", ".join(f"{k}={v!r}" for k, v in new.items()) or "nothing (the old default)"
        warn_once(f"{where}.{old}", f"{where}: '{old}' was removed from transformers' TrainingArguments; '{old}={value!r}' is mapped to {target}.")
    for old, default in TRAINING_ARGUMENT_REMOVED.items():
        if old not in out:
            continue
        value = out.pop(old)
        note = "" if value == default else f" Your value {value!r} has no effect."
        warn_once(f"{where}.{old}", f"{where}: '{old}' no longer exists in transformers 5 and is ignored.{note}")
    return out

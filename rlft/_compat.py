"""Old argument spellings from TRL 0.7 / transformers 4, mapped to today's names.

Each old spelling is accepted, translated, and announced with one warning per
process (not one per call), so a TRL 0.7 script runs unchanged but its author
learns the new name.
"""

from __future__ import annotations

import warnings
from typing import Any

_warned: set[tuple[str, str]] = set()

#: TrainingArguments fields renamed by transformers since TRL 0.7 (old -> new).
TRAINING_ARGUMENT_RENAMES = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "push_to_hub_model_id": "hub_model_id",
    "push_to_hub_token": "hub_token",
    "fp16_backend": "half_precision_backend",
}

#: TrainingArguments fields TRL 0.7 documented that transformers 5 removed without a
#: successor. They are accepted, checked to hold their default, and dropped.
TRAINING_ARGUMENT_REMOVED = {
    "push_to_hub_organization": None,
    "tpu_metrics_debug": False,
    "mp_parameters": "",
    "use_ipex": False,
    "jit_mode_eval": False,
    "fp16_opt_level": "O1",
    "torchdynamo": None,
    "ray_scope": "last",
    "include_inputs_for_metrics": False,
    "dispatch_batches": None,
    "split_batches": False,
    "use_mps_device": False,
    "fsdp_min_num_params": 0,
    "fsdp_transformer_layer_cls_to_wrap": None,
    "tpu_num_cores": None,
    "past_index": -1,
    "use_legacy_prediction_loop": False,
    "logging_nan_inf_filter": True,
    "save_safetensors": True,
    "overwrite_output_dir": False,
    "include_tokens_per_second": False,
    "hub_always_push": False,
    "hub_private_repo": False,
    "half_precision_backend": "auto",
    "tf32": None,
    "eval_delay": 0,
    "log_on_each_node": True,
    "logging_dir": None,
    "ddp_backend": None,
    "save_on_each_node": False,
}


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

"""`rlft.trainer.utils`: the helpers TRL 0.7.10 exposed as ``trl.trainer.utils`` (thin re-exports)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "AdaptiveKLController": "rlft.trainer.kl_control",
    "FixedKLController": "rlft.trainer.kl_control",
    "RunningMoments": "rlft.utils.running",
    "ConstantLengthDataset": "rlft.data.sft",
    "DataCollatorForCompletionOnlyLM": "rlft.data.sft",
    "RewardDataCollatorWithPadding": "rlft.data.reward",
    "compute_accuracy": "rlft.data.reward",
    "DPODataCollatorWithPadding": "rlft.data.dpo",
    "pad_to_length": "rlft.data.dpo",
    "disable_dropout_in_model": "rlft.trainer._helpers",
    "exact_div": "rlft.trainer._helpers",
    "pad": "rlft.trainer._helpers",
    "PerPromptStatTracker": "rlft.utils.running",
    "get_global_statistics": "rlft.trainer._distributed",
    "neftune_post_forward_hook": "rlft.trainer._model_helpers",
    "peft_module_casting_to_bf16": "rlft.trainer._model_helpers",
    "trl_sanitze_kwargs_for_tagging": "rlft.trainer._model_helpers",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

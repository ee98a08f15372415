"""`rlft.trainer`: the trainers and their configs (TRL's ``trl.trainer``), resolved lazily."""

from importlib.util import find_spec as _find_spec

from .._lazy import lazy_exports

_EXPORTS = {
    # PPO
    "PPOConfig": ".ppo_config",
    "PPOTrainer": ".ppo_trainer",
    "AdaptiveKLController": ".kl_control",
    "FixedKLController": ".kl_control",
    "BaseTrainer": ".base",
    "RunningMoments": "rlft.utils.running",
    # shared helpers (TRL exported them from trl.trainer too)
    "disable_dropout_in_model": "._helpers",
    "peft_module_casting_to_bf16": "._model_helpers",
    # supervised
    "SFTTrainer": ".sft_trainer",
    "RewardConfig": ".reward_config",
    "RewardTrainer": ".reward_trainer",
    "compute_accuracy": "rlft.data.reward",
    "IterativeSFTTrainer": ".iterative_sft_trainer",
    "ConstantLengthDataset": "rlft.data.sft",
    "DataCollatorForCompletionOnlyLM": "rlft.data.sft",
    "RewardDataCollatorWithPadding": "rlft.data.reward",
    # DPO
    "DPOTrainer": ".dpo_trainer",
    "DPODataCollatorWithPadding": "rlft.data.dpo",
    # DDPO (needs the diffusers extra)
    "DDPOConfig": ".ddpo_config",
    "DDPOTrainer": ".ddpo_trainer",
    "DDPOStableDiffusionPipeline": "rlft.models.modeling_sd_base",
    "DefaultDDPOStableDiffusionPipeline": "rlft.models.modeling_sd_base",
}

# ``import *`` resolves all of ``__all__``: the diffusers-only names are listed only when it is installed.
_NEEDS_DIFFUSERS = {"DDPOTrainer", "DDPOStableDiffusionPipeline", "DefaultDDPOStableDiffusionPipeline"}
_HAS_DIFFUSERS = _find_spec("diffusers") is not None
__all__ = sorted(n for n in _EXPORTS if _HAS_DIFFUSERS or n not in _NEEDS_DIFFUSERS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

"""rlft: post-training for transformer language models, a drop-in for the TRL 0.7 API.

Names are resolved on first use, so ``import rlft`` is quick and never fails
because an optional extra (diffusers for DDPO) is missing; using such a name
without its extra raises an ImportError that says which extra to install.
"""

from __future__ import annotations

from importlib.util import find_spec as _find_spec
from os import environ as _environ

from ._lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> module that defines it (relative to this package).
_EXPORTS: dict[str, str] = {
    "set_seed": ".core",
    "PreTrainedModelWrapper": ".models",
    "AutoModelForCausalLMWithValueHead": ".models",
    "AutoModelForSeq2SeqLMWithValueHead": ".models",
    "create_reference_model": ".models",
    "SUPPORTED_ARCHITECTURES": ".models",
    "setup_chat_format": ".models.utils",
    "is_peft_available": ".import_utils",
    "is_diffusers_available": ".import_utils",
    "is_wandb_available": ".import_utils",
    "is_bitsandbytes_available": ".import_utils",
    "is_xpu_available": ".import_utils",
    "is_npu_available": ".import_utils",
    "PPOConfig": ".trainer.ppo_config",
    "PPOTrainer": ".trainer.ppo_trainer",
    "RewardConfig": ".trainer.reward_config",
    "RewardTrainer": ".trainer.reward_trainer",
    "SFTTrainer": ".trainer.sft_trainer",
    "IterativeSFTTrainer": ".trainer.iterative_sft_trainer",
    "DataCollatorForCompletionOnlyLM": ".data.sft",
    "DPOTrainer": ".trainer.dpo_trainer",
    "DDPOConfig": ".trainer.ddpo_config",
    "DDPOTrainer": ".trainer.ddpo_trainer",
    "DDPOPipelineOutput": ".models.modeling_sd_base",
    "DDPOSchedulerOutput": ".models.modeling_sd_base",
    "DDPOStableDiffusionPipeline": ".models.modeling_sd_base",
    "DefaultDDPOStableDiffusionPipeline": ".models.modeling_sd_base",
    "BestOfNSampler": ".extras.best_of_n_sampler",
    # opt-in translation of transformers 4 spellings (docs/legacy.md)
    "enable_legacy_mode": ".legacy",
    "disable_legacy_mode": ".legacy",
    "legacy_mode": ".legacy",
    "is_legacy_mode_enabled": ".legacy",
    "TextEnvironment": ".environment",
    "TextHistory": ".environment",
}

#: Names that need the diffusers extra. ``from rlft import *`` resolves all of ``__all__``, so they
#: are listed only when diffusers is installed (TRL 0.7.10 exported them on the same condition).
_NEEDS_DIFFUSERS = {"DDPOTrainer", "DDPOPipelineOutput", "DDPOSchedulerOutput", "DDPOStableDiffusionPipeline", "DefaultDDPOStableDiffusionPipeline"}
_HAS_DIFFUSERS = _find_spec("diffusers") is not None
__all__ = sorted(n for n in _EXPORTS if _HAS_DIFFUSERS or n not in _NEEDS_DIFFUSERS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

# RLFT_LEGACY=1 turns legacy mode on for scripts that cannot call rlft.enable_legacy_mode() (docs/legacy.md).
if _environ.get("RLFT_LEGACY"):
    from .legacy import enable_legacy_mode as _enable_legacy_mode, legacy_mode_requested as _legacy_mode_requested

    if _legacy_mode_requested():
        _enable_legacy_mode()

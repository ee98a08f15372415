"""`rlft.models`: value-head wrappers, reference models and chat-format setup (TRL's ``trl.models``)."""

from .modeling_base import PreTrainedModelWrapper, create_reference_model
from .modeling_value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, ValueHead
from .utils import ChatMlSpecialTokens, setup_chat_format

SUPPORTED_ARCHITECTURES = (AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "ChatMlSpecialTokens",
    "PreTrainedModelWrapper",
    "ValueHead",
    "create_reference_model",
    "setup_chat_format",
]

# DDPO pipelines need the optional diffusers extra: resolved on first use.
from importlib.util import find_spec as _find_spec  # noqa: E402

from .._lazy import lazy_exports as _lazy_exports  # noqa: E402

_LAZY = {
    "DDPOPipelineOutput": ".modeling_sd_base",
    "DDPOSchedulerOutput": ".modeling_sd_base",
    "DDPOStableDiffusionPipeline": ".modeling_sd_base",
    "DefaultDDPOStableDiffusionPipeline": ".modeling_sd_base",
}
__getattr__, __dir__ = _lazy_exports(__name__, _LAZY, globals())
if _find_spec("diffusers") is not None:  # ``import *`` resolves all of __all__ (TRL 0.7.10: the same condition)
    __all__ += sorted(_LAZY)

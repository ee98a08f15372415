"""The math of rlft as small pure functions: tensors in, tensors (or (loss, stats)) out."""

from .logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits, selected_log_probs
from .stats import clip_by_value, masked_mean, masked_sum, masked_var, masked_whiten, whiten

__all__ = [
    "clip_by_value",
    "entropy_from_logits",
    "logprobs_and_entropy",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "selected_log_probs",
    "whiten",
]

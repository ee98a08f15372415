"""The math of rlft as small pure functions: tensors in, tensors (or (loss, stats)) out."""

from .critic_free import (LOSS_AGGREGATIONS, SEQUENCE_ESTIMATORS, aggregate_loss, clipped_policy_loss,
                          discounted_returns, dr_grpo_advantages, group_stats, group_view, grpo_advantages, kl_k3,
                          normalise_with_stats, reinforce_pp_advantages, rloo_advantages, sequence_advantages,
                          sequence_to_token)
from .logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits, selected_log_probs
from .stats import clip_by_value, masked_mean, masked_sum, masked_var, masked_whiten, whiten

__all__ = [
    "LOSS_AGGREGATIONS",
    "SEQUENCE_ESTIMATORS",
    "aggregate_loss",
    "clipped_policy_loss",
    "discounted_returns",
    "dr_grpo_advantages",
    "group_stats",
    "group_view",
    "grpo_advantages",
    "kl_k3",
    "normalise_with_stats",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sequence_advantages",
    "sequence_to_token",
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

"""The statistics of a PPO step, with TRL 0.7's key names (plus rlft's additions).

`summarise_step` is what `PPOTrainer.record_step_stats` returns; the trainer gathers the
per-sample tensors of every process before calling it, so means and standard deviations are
those of the global batch.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..core import WANDB_PADDING, stack_dicts, stats_to_np
from ..functional import masked_mean, masked_var
from ..functional.critic_free import group_stats
from ..functional.logprobs import entropy_from_logits
from ..functional.ppo import approx_kl

#: Train stats that stay vectors (one entry per token) in the step's stats.
VECTOR_STATS = ("policy/advantages", "policy/ratio")
#: Mean sequence KL below which the negative-KL warning fires (as TRL 0.7).
NEGATIVE_KL_WARNING = -1.0
#: Scalar stats of a normal step; a skipped (non-finite) step reports them as NaN so logging code keeps working.
SCALAR_STATS = (
    "objective/kl", "objective/entropy", "ppo/mean_non_score_reward", "ppo/mean_scores", "ppo/std_scores",
    "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/entropy", "ppo/policy/approxkl",
    "ppo/policy/policykl", "ppo/policy/clipfrac", "ppo/policy/advantages_mean", "ppo/returns/mean",
    "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac", "ppo/val/mean", "ppo/val/var",
    "ppo/val/var_explained",
)
#: The critic's stats: a critic-free estimator has no value predictions, so these are left out.
CRITIC_STATS = tuple(k for k in SCALAR_STATS if k.startswith("ppo/val/")) + ("ppo/loss/value",)


def scalar_stats(uses_critic: bool) -> tuple[str, ...]:
    return SCALAR_STATS if uses_critic else tuple(k for k in SCALAR_STATS if k not in CRITIC_STATS)


def lengths(seqs: list[Tensor]) -> Tensor:
    return torch.tensor([float(len(x)) for x in seqs])


def length_stats(name: str, lens: Tensor) -> dict:
    """tokens/{name}_len_mean, _len_std and _dist of a (n,) tensor of lengths."""
    lens = lens.detach().float().cpu()
    return {
        f"tokens/{name}_len_mean": lens.mean().item(),
        f"tokens/{name}_len_std": lens.std().item() if lens.numel() > 1 else 0.0,
        f"tokens/{name}_dist": lens.numpy(),
    }


def stack_train_stats(all_stats: list[dict]) -> dict:
    """Minibatch stats stacked along a new first dim; the per-token vectors flattened to (1, N)."""
    train_stats = stack_dicts(all_stats) if all_stats else {}
    if "policy/advantages" in train_stats:
        train_stats["policy/advantages"] = torch.nan_to_num(train_stats["policy/advantages"].flatten(), WANDB_PADDING)[None]
    if "policy/ratio" in train_stats:
        train_stats["policy/ratio"] = train_stats["policy/ratio"].flatten()[None]
    return train_stats


def summarise_step(
    kl_coef: float, *, scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, non_score_reward: Tensor,
    masks: Tensor, kls: Tensor, query_lens: Tensor, response_lens: Tensor, train_stats: dict,
    num_generations: int = 1,
) -> dict:
    """TRL's step stats: KL, entropy, scores, lengths and the averaged minibatch stats.

    scores (B,); logprobs, ref_logprobs, non_score_reward, masks, kls (B, T); query_lens,
    response_lens (B,). With groups (``num_generations`` > 1) also ``ppo/group/reward_std``
    (mean within-group standard deviation of the scores) and ``ppo/group/frac_zero_std`` (share
    of groups whose scores are all equal: they give no learning signal to a group estimator).
    """
    kl_list = (kls * masks).sum(dim=-1)  # (B,) sequence KL with the configured estimator
    mean_kl = kl_list.mean()
    if mean_kl.item() < NEGATIVE_KL_WARNING:
        warnings.warn(
            f"The KL to the reference is negative ({mean_kl.item():.2f}): the responses are more likely under "
            "the reference than under the policy that produced them. This usually comes from generation "
            "settings that change the sampling distribution (min_length / min_new_tokens, top_k, top_p, "
            "temperature, suppressed EOS, a pad token equal to a real token) or from responses that were not "
            "sampled from this policy. Sample with do_sample=True, top_k=0, top_p=1.0 and no length forcing.",
            UserWarning,
            stacklevel=3,
        )
    stats = {
        "objective/kl": mean_kl,
        "objective/kl_dist": kl_list,
        "objective/logprobs": logprobs,
        "objective/ref_logprobs": ref_logprobs,
        "objective/kl_coef": kl_coef,
        "objective/entropy": (-logprobs * masks).sum(dim=-1).mean(),
        "ppo/mean_non_score_reward": masked_mean(non_score_reward, masks),
        "ppo/mean_scores": scores.mean(),
        "ppo/std_scores": scores.std() if scores.numel() > 1 else torch.zeros(()),
    }
    if num_generations > 1 and scores.numel() % num_generations == 0:
        group = group_stats(scores, num_generations)
        stats["ppo/group/reward_std"] = group["mean_group_std"]
        stats["ppo/group/frac_zero_std"] = group["frac_zero_std_groups"]
    for name, lens in (("queries", query_lens), ("responses", response_lens)):
        stats.update(length_stats(name, lens))
    for key, value in train_stats.items():
        mean = value.float().mean(dim=0)
        stats[f"ppo/{key}"] = mean.reshape(()) if mean.numel() == 1 and key not in VECTOR_STATS else mean
    if "ppo/val/error" in stats:
        stats["ppo/val/var_explained"] = 1 - stats["ppo/val/error"] / stats["ppo/returns/var"].clamp(min=1e-12)
    return stats


def to_numpy(stats: dict, expected: tuple[str, ...]) -> dict:
    """Tensors to numpy (0-d ones to float), with every expected scalar present (NaN when a step had no train stats)."""
    for key in expected:
        stats.setdefault(key, math.nan)
    return {k: (float(v) if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in stats_to_np(stats).items()}


def skipped_step_stats(expected: tuple[str, ...], query_lens: Tensor, response_lens: Tensor, kl_coef: float, lr: float) -> dict:
    """The stats of a step that changed no weight: NaN scalars (vectors left out), so logging code keeps working."""
    stats: dict = {key: math.nan for key in expected}
    for name, lens in (("queries", query_lens), ("responses", response_lens)):
        stats.update(length_stats(name, lens))
    stats["objective/kl_coef"] = kl_coef
    stats["ppo/skipped_minibatches"] = 0.0
    stats["ppo/learning_rate"] = lr
    return stats


def minibatch_stats(
    *, pg_loss: Tensor, vf_loss: Optional[Tensor], total: Tensor, logits: Tensor, logprobs: Tensor,
    old_logprobs: Tensor, mask: Tensor, advantages: Tensor, ratio: Tensor, clipfrac: Tensor, returns: Tensor,
    values: Tensor, vpreds: Optional[Tensor], vf_clipfrac: Optional[Tensor], kl_loss: Optional[Tensor] = None,
) -> dict:
    """The flat stats of one minibatch (TRL's names); the critic's only when it has one."""
    with torch.no_grad():
        kl_approx, kl_policy = approx_kl(logprobs.detach(), old_logprobs, mask)
        stats = {
            "loss/policy": pg_loss.detach(),
            "loss/total": total.detach(),
            "policy/entropy": masked_mean(entropy_from_logits(logits.detach()), mask),
            "policy/approxkl": kl_approx,
            "policy/policykl": kl_policy,
            "policy/clipfrac": clipfrac.detach(),
            "policy/advantages": advantages.detach(),
            "policy/advantages_mean": masked_mean(advantages, mask).detach(),
            "policy/ratio": ratio.detach(),
            "returns/mean": masked_mean(returns, mask),
            "returns/var": _safe_var(returns, mask),
        }
        if vf_loss is not None:
            stats.update({
                "loss/value": vf_loss.detach(),
                "val/vpred": masked_mean(vpreds.detach(), mask),
                "val/error": masked_mean((vpreds.detach() - returns) ** 2, mask),
                "val/clipfrac": vf_clipfrac.detach(),
                "val/mean": masked_mean(values, mask),
                "val/var": _safe_var(values, mask),
            })
        if kl_loss is not None:
            stats["loss/kl"] = kl_loss.detach()
    return stats


def _safe_var(values: Tensor, mask: Tensor) -> Tensor:
    return masked_var(values, mask) if mask.sum() > 0 else torch.zeros((), device=values.device)

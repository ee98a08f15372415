"""Critic-free policy-gradient estimators for language models, as pure functions.

GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024),
REINFORCE++ (Hu 2025) and the loss refinements of DAPO (Yu et al. 2025).

Notation, shared with `rlft.functional.ppo`:
    B  sequences in the batch; with sample groups, B = G * k
    k  samples per query (``num_generations``); the batch holds G groups of k
       *consecutive* rows that answer the same query
    T  response tokens
A mask is 1 on tokens that count and 0 on padding. Sequence-level estimators take
scores (B,) and return advantages (B,); `sequence_to_token` spreads them over the
tokens (B, T) for the clipped loss.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ppo import gae
from .stats import WHITEN_EPS, masked_mean, masked_sum, masked_whiten

#: Added to the within-group std before dividing in GRPO, so that a group of near-equal
#: rewards gets bounded advantages instead of a huge ratio; TRL's GRPOTrainer uses 1e-4.
GRPO_STD_EPS = 1e-4

SEQUENCE_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


# --------------------------------------------------------------------------- groups
def group_view(x: Tensor, k: int) -> Tensor:
    """View a per-sample tensor as groups of k consecutive samples. (B,) -> (B/k, k)."""
    if k < 1:
        raise ValueError(f"num_generations (k) must be >= 1, got {k}.")
    if x.dim() != 1 or x.shape[0] % k != 0:
        raise ValueError(
            f"expected a 1-D tensor whose length is a multiple of num_generations={k}, got shape {tuple(x.shape)}: "
            f"pass k samples per query in consecutive blocks, i.e. batch_size = (number of queries) * {k}."
        )
    return x.reshape(-1, k)  # (G, k)


def _group_centered(scores: Tensor, k: int) -> Tensor:
    """r - mean of its group, (B,) -> (G, k); exactly 0 in groups whose rewards are all equal.

    The mean of k equal floats can be off by one ulp, and GRPO divides that rounding
    error by std + eps ~ eps, which would turn a no-signal group into noise of order
    ulp(r) / eps (up to 0.54 for sixteen fp32 rewards of 820.4, measured). Such a group has no signal.
    """
    groups = group_view(scores, k)  # (G, k)
    centered = groups - groups.mean(dim=1, keepdim=True)  # (G, k)
    constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)  # (G, 1)
    return torch.where(constant, torch.zeros_like(centered), centered)


def _require_pairs(k: int, name: str) -> None:
    if k < 2:
        raise ValueError(f"{name} compares samples within a group and needs num_generations >= 2, got {k}.")


# --------------------------------------------------------------------------- sequence advantages
def grpo_advantages(scores: Tensor, k: int, *, eps: float = GRPO_STD_EPS) -> Tensor:
    """Group-normalised outcome advantage (Shao et al. 2024, sec. 4.1.2, outcome supervision).

    scores: (B,) with B a multiple of k. Returns (B,):
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps).
    The std is the sample std (Bessel-corrected, divisor k - 1): the paper writes only
    std(r); TRL's GRPOTrainer, verl and OpenRLHF all use torch's default unbiased std.
    A group of identical rewards gets 0.
    """
    _require_pairs(k, "grpo")
    centered = _group_centered(scores, k)  # (G, k)
    std = group_view(scores, k).std(dim=1, unbiased=True, keepdim=True)  # (G, 1)
    denom = std + eps
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))  # eps=0, constant group: 0/1, not 0/0
    return (centered / denom).reshape(-1)  # (B,)


def dr_grpo_advantages(scores: Tensor, k: int) -> Tensor:
    """GRPO advantage without the std division (Liu et al. 2025, "Dr. GRPO").

    scores: (B,) -> (B,): A_i = r_i - mean(r_group). Dividing by the std weights
    questions that are too easy or too hard more heavily; Dr. GRPO drops it.
    """
    return _group_centered(scores, k).reshape(-1)  # (B,)


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantage (Ahmadian et al. 2024, the RLOO estimator of Kool et al. 2019).

    scores: (B,) -> (B,): A_i = r_i - 1/(k-1) sum_{j != i} r_j. Computed as the
    equivalent k/(k-1) (r_i - mean(r_group)), since sum_{j != i} r_j = k mean - r_i.
    """
    _require_pairs(k, "rloo")
    return (k / (k - 1) * _group_centered(scores, k)).reshape(-1)  # (B,)


def sequence_advantages(kind: str, scores: Tensor, k: int) -> Tensor:
    """Sequence-level advantage chosen by name ("grpo", "dr_grpo", "rloo"). (B,) -> (B,)."""
    if kind == "grpo":
        return grpo_advantages(scores, k)
    if kind == "dr_grpo":
        return dr_grpo_advantages(scores, k)
    if kind == "rloo":
        return rloo_advantages(scores, k)
    raise ValueError(f"unknown sequence advantage estimator {kind!r}; choose one of {SEQUENCE_ESTIMATORS}")


def sequence_to_token(advantages: Tensor, mask: Tensor) -> Tensor:
    """Give every kept token its sequence's advantage. advantages: (B,); mask: (B, T) -> (B, T), 0 where masked."""
    spread = advantages[:, None].expand(mask.shape)  # (B, T)
    return torch.where(mask.bool(), spread, torch.zeros_like(spread))


def group_stats(scores: Tensor, k: int) -> dict[str, Tensor]:
    """Diagnostics of the reward groups, detached scalars.

    scores: (B,). "mean_group_std": mean over groups of the within-group sample std;
    "frac_zero_std_groups": share of groups whose rewards are all equal (no learning signal).
    """
    groups = group_view(scores.detach().float(), k)  # (G, k)
    std = groups.std(dim=1, unbiased=True) if k > 1 else torch.zeros(groups.shape[0], device=groups.device)
    constant = groups.amax(dim=1) == groups.amin(dim=1)  # (G,)
    return {"mean_group_std": std.mean(), "frac_zero_std_groups": constant.float().mean()}


# --------------------------------------------------------------------------- token advantages (REINFORCE++)
def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo returns-to-go G_t = sum_{s>=t} gamma^(s-t) r_s over kept tokens.

    rewards, mask: (B, T) -> (B, T). Masked positions contribute no reward (whatever
    they hold) and get return 0; the discount counts positions, as in `gae`. This is
    GAE with lambda = 1 and a zero value function (Schulman et al. 2015, eq. 18), so it
    reuses `gae` rather than repeating the discounted sum.
    """
    kept = mask.bool()
    rewards = torch.where(kept, rewards, torch.zeros_like(rewards))  # (B, T); drops nan/inf padding too
    returns, _ = gae(torch.zeros_like(rewards), rewards, mask, gamma=gamma, lam=1.0)  # (B, T)
    return torch.where(kept, returns, torch.zeros_like(returns))


def normalise_with_stats(values: Tensor, mask: Tensor, mean: Tensor | float, var: Tensor | float) -> Tensor:
    """(values - mean) / sqrt(var + eps) on kept tokens, 0 on masked ones, with the statistics given.

    values, mask: (B, T); mean, var: scalars. For the cross-process REINFORCE++
    normalisation: reduce the kept tokens' mean and (unbiased) variance over all
    processes, then call this. With the local statistics it equals
    `reinforce_pp_advantages` (same formula as `masked_whiten`, same WHITEN_EPS).
    """
    mean = torch.as_tensor(mean, dtype=values.dtype, device=values.device)
    var = torch.as_tensor(var, dtype=values.dtype, device=values.device)
    normalised = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    return torch.where(mask.bool(), normalised, torch.zeros_like(normalised))


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ token advantages (Hu 2025: returns-to-go with global-batch normalisation).

    rewards, mask: (B, T): the per-token rewards, i.e. the score on the last kept token
    plus the -beta * KL penalty on every token (`ppo.per_token_rewards`). Returns (B, T):
    A_t = sum_{s>=t} gamma^(s-t) r_s, whitened with the mean and unbiased variance of
    all kept tokens in the batch; 0 on masked tokens. For a batch spread over several
    processes, use `discounted_returns` and `normalise_with_stats` with global statistics.
    """
    returns = discounted_returns(rewards, mask, gamma)  # (B, T)
    whitened = masked_whiten(returns, mask)  # (B, T): mean 0, var 1 over kept tokens
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------- KL in the loss
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's "k3" estimate of KL(pi || pi_ref), as in GRPO eq. 4. (B, T) -> (B, T), >= 0.

    k3 = exp(q - p) - (q - p) - 1 with p = log pi(a), q = log pi_ref(a): unbiased for
    samples a ~ pi and never negative (e^x >= 1 + x). d k3 / d p = 1 - exp(q - p).
    """
    log_ratio = ref_logprobs - logprobs  # (B, T)
    return torch.exp(log_ratio) - log_ratio - 1.0


# --------------------------------------------------------------------------- losses
def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str, *, max_tokens: Optional[int] = None) -> Tensor:
    """Reduce a per-token loss to a scalar. per_token, mask: (B, T) -> scalar.

    "token_mean": sum over kept tokens / number of kept tokens in the batch (DAPO, Yu et al.
        2025, "token-level policy gradient loss"; also TRL 0.7's masked mean);
    "seq_mean_token_mean": mean over sequences of each sequence's token mean (GRPO eq. 3,
        the 1/G sum_i 1/|o_i| sum_t); a sequence with no kept token contributes 0;
    "seq_mean_token_sum_norm": sum over kept tokens / (B * max_tokens), a constant
        normaliser (Dr. GRPO, Liu et al. 2025, which divides by the generation budget); max_tokens is required, usually
        the generation budget (max_new_tokens). Ignored by the other modes.
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "seq_mean_token_mean":
        return masked_mean(per_token, mask, axis=1).mean()  # (B,) -> scalar
    if mode == "seq_mean_token_sum_norm":
        if max_tokens is None or max_tokens < 1:
            raise ValueError(
                f"loss aggregation 'seq_mean_token_sum_norm' needs max_tokens >= 1 (got {max_tokens!r}): "
                "pass the generation budget, e.g. max_new_tokens."
            )
        return masked_sum(per_token, mask) / (per_token.shape[0] * max_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    aggregation: str,
    max_tokens: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate with asymmetric bounds (DAPO "clip-higher", Yu et al. 2025), as a loss to minimise.

    logprobs, old_logprobs, advantages, mask: (B, T). Returns (loss, clipfrac, ratio):
    loss = aggregate_t max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) with
    r = exp(logp - logp_old), reduced by `aggregate_loss(aggregation, max_tokens=...)`;
    clipfrac = share of kept tokens where the clipped term was active (always a token
    mean); ratio: (B, T). With clip_low == clip_high and "token_mean" this is
    `ppo.policy_loss` (Schulman et al. 2017, eq. 7) exactly.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate_loss(torch.max(unclipped, clipped), mask, aggregation, max_tokens=max_tokens)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac, ratio

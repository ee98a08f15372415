"""PPO for language models as pure functions (Ziegler et al. 2019; Schulman et al. 2017).

Notation, shared by every function here:
    B  sequences in the batch
    T  response tokens (the actions); position t holds the log-probability and the
       value of the state *before* response token t was generated
    V  vocabulary size
A mask is 1 on real response tokens and 0 on padding (or on tokens the user
excluded with ``response_masks``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stats import clip_by_value, masked_mean

KL_ESTIMATORS = ("kl", "abs", "mse", "full")

#: Bound on the relative change of the adaptive KL coefficient per update
#: (Ziegler et al. 2019, section 2.2: the proportional error is clipped to +-0.2).
KL_PROPORTIONAL_ERROR_CLIP = 0.2


# --------------------------------------------------------------------------- KL penalty
def kl_plain(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log p(a) - log q(a): the unbiased single-sample estimate of KL(p || q). (B, T) -> (B, T)."""
    return logprobs - ref_logprobs


def kl_abs(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """|log p(a) - log q(a)|: never negative, biased upward. (B, T) -> (B, T)."""
    return (logprobs - ref_logprobs).abs()


def kl_mse(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """0.5 (log p(a) - log q(a))^2: Schulman's low-variance "k2" estimator. (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_full(logits: Tensor, ref_logits: Tensor, chunk_rows: int = 256) -> Tensor:
    """Exact KL(p || q) = sum_v p_v (log p_v - log q_v) per position, from full logits.

    logits, ref_logits: (B, T, V). Returns (B, T) in fp32. Evaluated in row chunks
    so only one chunk of fp32 log-softmax exists at a time.
    """
    lead = logits.shape[:-1]
    p_flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    q_flat = ref_logits.reshape(-1, ref_logits.shape[-1])
    out = []
    for start in range(0, p_flat.shape[0], chunk_rows):
        logp = torch.log_softmax(p_flat[start : start + chunk_rows].float(), dim=-1)
        logq = torch.log_softmax(q_flat[start : start + chunk_rows].float(), dim=-1)
        out.append((logp.exp() * (logp - logq)).sum(-1))
    if not out:
        return torch.zeros(lead, device=logits.device)
    return torch.cat(out).reshape(lead)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate chosen by name ("kl", "abs", "mse"). (B, T) -> (B, T).

    "full" needs the whole distributions: call `kl_full` on the logits instead.
    """
    if kind == "kl":
        return kl_plain(logprobs, ref_logprobs)
    if kind == "abs":
        return kl_abs(logprobs, ref_logprobs)
    if kind == "mse":
        return kl_mse(logprobs, ref_logprobs)
    if kind == "full":
        raise ValueError("kl_penalty='full' needs full logits: use kl_full(logits, ref_logits).")
    raise ValueError(f"unknown kl_penalty {kind!r}; choose one of {KL_ESTIMATORS}")


def adaptive_kl_coef(coef: float, current_kl: float, target: float, n_steps: int, horizon: float) -> float:
    """One update of the adaptive KL coefficient (Ziegler et al. 2019, eq. 2).

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    """
    error = min(max(current_kl / target - 1.0, -KL_PROPORTIONAL_ERROR_CLIP), KL_PROPORTIONAL_ERROR_CLIP)
    return coef * (1.0 + error * n_steps / horizon)


# --------------------------------------------------------------------------- rewards
def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last kept token in each row. mask: (B, T) -> (B,) long. Rows must keep a token."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def per_token_rewards(scores: Tensor, kl: Tensor, kl_coef: float, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Reward of each response token: -beta * KL, plus the sequence score on the last kept token
    (Ziegler et al. 2019, eq. 2).

    scores: (B,); kl, mask: (B, T). Returns (rewards, non_score_rewards), both (B, T).
    """
    non_score = -kl_coef * kl  # (B, T)
    last = last_token_index(mask)  # (B,)
    rewards = non_score.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, non_score


# --------------------------------------------------------------------------- advantages
def gae(values: Tensor, rewards: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2015, eq. 16).

    values, rewards, mask: (B, T). Returns (advantages, returns), both (B, T).
    delta_t = r_t + gamma V_{t+1} - V_t (with V_T = 0), A_t = sum_{k>=t} (gamma lam)^(k-t) delta_k.
    Masked positions carry zero reward and zero value. The discounted sum is one
    matmul with an upper-triangular discount matrix instead of a loop over t; it
    equals the backward recursion A_t = delta_t + gamma lam A_{t+1}.
    """
    values = values * mask
    rewards = rewards * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # V_{t+1}, (B, T)
    deltas = rewards + gamma * next_values - values  # (B, T)
    T = values.shape[1]
    steps = torch.arange(T, device=values.device, dtype=torch.float64)
    power = steps[None, :] - steps[:, None]  # (T, T): k - t
    discount = torch.where(power >= 0, (gamma * lam) ** power.clamp(min=0), torch.zeros_like(power))
    advantages = deltas.double() @ discount.T  # (B, T): A_t = sum_k discount[t, k] delta_k
    advantages = advantages.to(values.dtype)
    return advantages, advantages + values


# --------------------------------------------------------------------------- losses
def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise.

    logprobs, old_logprobs, advantages, mask: (B, T). Returns (loss, clipfrac, ratio):
    loss = mean_t max(-A r, -A clip(r, 1-eps, 1+eps)) with r = exp(logp - logp_old);
    clipfrac = share of tokens where the clipped term was the active one; ratio (B, T).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac, ratio


def value_loss(
    vpreds: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss: 0.5 mean_t max((V - R)^2, (clip(V, V_old +- eps) - R)^2).

    vpreds, old_values, returns, mask: (B, T). Returns (loss, clipfrac).
    """
    vclipped = clip_by_value(vpreds, old_values - cliprange_value, old_values + cliprange_value)
    unclipped = (vpreds - returns).square()
    clipped = (vclipped - returns).square()
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Two diagnostics of how far the policy moved in this update. (B, T) -> two scalars.

    approxkl = 0.5 mean (logp - logp_old)^2;  policykl = mean (logp_old - logp).
    """
    diff = logprobs - old_logprobs
    return 0.5 * masked_mean(diff.square(), mask), masked_mean(-diff, mask)

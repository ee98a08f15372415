"""The math of DDPO: a DDIM step that scores its own sample, and the clipped policy loss.

DDPO (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning")
treats each denoising step x_t -> x_{t-1} as an action of a policy whose density is
the Gaussian of the DDIM sampler with eta > 0 (Song et al. 2021, "Denoising
Diffusion Implicit Models", eq. 12 and 16). The policy-gradient update needs the
log-density of the sampled x_{t-1} under the current weights, which
`ddim_step_with_logprob` returns next to the sample.

Shapes: ``B`` batch, ``C`` latent channels, ``H``/``W`` latent height/width.
No diffusers import here: the scheduler's tensors come in as arguments.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

#: log(sqrt(2 pi)), the normalising constant of a unit Gaussian's log-density.
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

#: Added to the reward standard deviation before dividing (per-prompt and global
#: advantage normalisation), so a batch of equal rewards gives zero advantages.
ADVANTAGE_STD_EPS = 1e-6

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _per_sample(values: Tensor, timestep: Tensor, ndim: int) -> Tensor:
    """Index a per-timestep table (num_train_timesteps,) with ``timestep`` () or (B,), broadcastable to ndim."""
    out = values[timestep.long()]  # () or (B,)
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))  # (B, 1, 1, 1)


def ddim_step_with_logprob(
    model_output: Tensor,
    timestep: Tensor,
    sample: Tensor,
    *,
    alphas_cumprod: Tensor,
    final_alpha_cumprod: Tensor,
    step_ratio: int,
    eta: float,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    use_clipped_model_output: bool = False,
    prev_sample: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """One stochastic DDIM step x_t -> x_{t-1} and the log-density of x_{t-1}.

    Args:
        model_output: (B, C, H, W) the network's prediction (noise, sample or v).
        timestep: () or (B,) integer timesteps t of ``sample``.
        sample: (B, C, H, W) the current latent x_t.
        alphas_cumprod: (num_train_timesteps,) the scheduler's cumulative alpha-bar.
        final_alpha_cumprod: () alpha-bar used when t - step_ratio < 0.
        step_ratio: training timesteps per inference step (t_prev = t - step_ratio).
        eta: the DDIM noise scale; must be > 0 for the density to exist.
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample, clip_sample_range: clamp the predicted x_0 as the scheduler does.
        use_clipped_model_output: recompute the noise from the clipped x_0.
        prev_sample: (B, C, H, W) a given x_{t-1} to score instead of sampling one
            (the training pass scores the latents drawn during sampling).
        generator: for the noise when ``prev_sample`` is None.

    Returns:
        prev_sample: (B, C, H, W), and log_prob: (B,) the log-density of
        ``prev_sample`` under N(mean, std^2 I), averaged over the C*H*W elements
        (a mean rather than a sum, as in the DDPO reference code; the clip range
        of the ratio is tuned for this scale). It equals
        ``Normal(mean, std).log_prob(prev_sample).mean((1, 2, 3))``.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}.")
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for the DDIM step to have a log-probability; got {eta}.")
    ndim = sample.ndim
    timestep = torch.as_tensor(timestep, device=sample.device)
    alphas_cumprod = alphas_cumprod.to(sample.device)
    prev_timestep = timestep - step_ratio  # () or (B,)

    # Song et al. 2021, eq. 12 notation: alpha here is alpha-bar (cumulative product).
    alpha_t = _per_sample(alphas_cumprod, timestep.clamp(min=0), ndim).to(sample.dtype)  # (B, 1, 1, 1)
    alpha_prev = _per_sample(alphas_cumprod, prev_timestep.clamp(min=0), ndim)
    final = torch.as_tensor(final_alpha_cumprod, device=sample.device, dtype=alphas_cumprod.dtype)
    alpha_prev = torch.where(
        prev_timestep.reshape(prev_timestep.shape + (1,) * (ndim - prev_timestep.ndim)) >= 0, alpha_prev, final
    ).to(sample.dtype)
    beta_t = 1 - alpha_t

    # predicted x_0 and noise, from whichever quantity the network predicts
    if prediction_type == "epsilon":
        pred_x0 = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
        pred_eps = model_output
    elif prediction_type == "sample":
        pred_x0 = model_output
        pred_eps = (sample - alpha_t.sqrt() * pred_x0) / beta_t.sqrt()
    else:  # v-prediction (Salimans & Ho 2022, section 4)
        pred_x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
        pred_eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
    if clip_sample:
        pred_x0 = pred_x0.clamp(-clip_sample_range, clip_sample_range)
        if use_clipped_model_output:
            pred_eps = (sample - alpha_t.sqrt() * pred_x0) / beta_t.sqrt()

    # sigma_t(eta), Song et al. 2021, eq. 16
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)  # (B, 1, 1, 1)
    std = eta * variance.clamp(min=0).sqrt()
    # eq. 12: mean of x_{t-1} = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps_pred
    direction = (1 - alpha_prev - std**2).clamp(min=0).sqrt() * pred_eps
    mean = alpha_prev.sqrt() * pred_x0 + direction  # (B, C, H, W)

    if prev_sample is None:
        if generator is None:
            noise = torch.randn_like(model_output)
        else:
            noise = torch.randn(model_output.shape, generator=generator, device=generator.device, dtype=model_output.dtype)
        noise = noise.to(sample.device)  # (B, C, H, W)
        prev_sample = mean + std * noise
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)  # (B,)
    return prev_sample.to(sample.dtype), log_prob


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Log-density of ``x`` under N(mean, std^2), averaged over all but the batch dim.

    x, mean: (B, ...); std: broadcastable to x (e.g. (B, 1, 1, 1)). Returns (B,).
    """
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI  # (B, ...)
    return log_density.mean(dim=tuple(range(1, x.ndim)))  # (B,)


def ddpo_clipped_loss(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *, clip_range: float, adv_clip_max: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """DDPO's clipped importance-sampling objective (Black et al. 2023, eq. 4 with PPO clipping,
    Schulman et al. 2017, eq. 7), as a loss to minimise.

    Args:
        log_prob: (B,) log-density of the sampled x_{t-1} under the current policy.
        old_log_prob: (B,) the same under the policy that sampled it.
        advantages: (B,) normalised rewards; clamped to [-adv_clip_max, adv_clip_max].
        clip_range: epsilon of the ratio clip [1 - eps, 1 + eps].
        adv_clip_max: bound on |advantage|.

    Returns:
        loss: () mean over the batch of max(-A r, -A clip(r)), and stats:
        ``approx_kl`` (0.5 * mean of the squared log-ratio) and ``clipfrac`` (share
        of ratios outside the clip range), both detached.
    """
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = log_prob - old_log_prob  # (B,)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()  # pessimistic bound
    stats = {
        "approx_kl": (0.5 * log_ratio.detach() ** 2).mean(),
        "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
    }
    return loss, stats


def normalize_advantages(rewards: Tensor, eps: float = ADVANTAGE_STD_EPS) -> Tensor:
    """(r - mean) / (std + eps) over the whole batch. rewards: (B,) -> (B,). Population std, as DDPO."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)

"""DDPO math: the log-probability DDIM step against direct Gaussian densities and diffusers, and the clipped loss."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.functional.ddpo import (
    ddim_step_with_logprob,
    ddpo_clipped_loss,
    gaussian_log_prob,
    normalize_advantages,
)


def schedule(n=1000):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n) ** 2  # Stable Diffusion's scaled-linear schedule
    return torch.cumprod(1 - betas, 0)


def direct_log_prob(x, mean, std):
    """Slow oracle: loop over elements, sum log N(x; mean, std) by the formula, divide by the count."""
    out = []
    for b in range(x.shape[0]):
        xs, ms = x[b].flatten().tolist(), mean[b].flatten().tolist()
        s = float(std[b].flatten()[0]) if std.numel() > 1 else float(std)
        total = sum(-((xi - mi) ** 2) / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi) for xi, mi in zip(xs, ms))
        out.append(total / len(xs))
    return torch.tensor(out, dtype=torch.float64)


def test_gaussian_log_prob_matches_loop_and_torch_normal():
    torch.manual_seed(0)
    x, mean = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    got = gaussian_log_prob(x, mean, std)
    assert torch.allclose(got, direct_log_prob(x, mean, std), atol=1e-10)
    normal = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).mean((1, 2, 3))
    assert torch.allclose(got, normal, atol=1e-10)
    # hand value: x = mean, std = 1 -> -log(sqrt(2 pi)) = -0.918939
    assert gaussian_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 1)).item() == pytest.approx(-0.9189385, abs=1e-6)


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("t", [981, 501, 1])
def test_ddim_step_log_prob_is_the_gaussian_density_of_the_sample(eta, t):
    """Compute mean and std from the DDIM equations by hand; the step's log_prob must be their density."""
    torch.manual_seed(1)
    alphas = schedule().double()
    step_ratio = 20
    x_t, eps = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    a_t = alphas[t]
    a_prev = alphas[t - step_ratio] if t - step_ratio >= 0 else alphas[0]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    prev, log_prob = ddim_step_with_logprob(
        eps, torch.tensor(t), x_t, alphas_cumprod=alphas, final_alpha_cumprod=alphas[0], step_ratio=step_ratio, eta=eta
    )
    assert torch.allclose(log_prob, direct_log_prob(prev, mean, sigma.expand(2)), atol=1e-9)
    # scoring a given sample gives the same number, and the sample is mean + sigma * noise
    _, again = ddim_step_with_logprob(
        eps, torch.tensor([t, t]), x_t, alphas_cumprod=alphas, final_alpha_cumprod=alphas[0],
        step_ratio=step_ratio, eta=eta, prev_sample=prev,
    )
    assert torch.allclose(again, log_prob, atol=1e-12)
    noise = (prev - mean) / sigma
    assert abs(noise.std().item() - 1) < 0.35


def test_ddim_step_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler.set_timesteps(10)
    torch.manual_seed(2)
    x_t, eps, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    step_ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in scheduler.timesteps:
        expected = scheduler.step(eps, t, x_t, eta=1.0, variance_noise=noise).prev_sample
        mean = scheduler.step(eps, t, x_t, eta=1.0, variance_noise=torch.zeros_like(noise)).prev_sample
        prev_t = int(t) - step_ratio
        std = scheduler._get_variance(int(t), prev_t) ** 0.5
        prev, log_prob = ddim_step_with_logprob(
            eps, t.repeat(3), x_t, alphas_cumprod=scheduler.alphas_cumprod, final_alpha_cumprod=scheduler.final_alpha_cumprod,
            step_ratio=step_ratio, eta=1.0, prev_sample=expected,
        )
        oracle = torch.distributions.Normal(mean.double(), float(std)).log_prob(expected.double()).mean((1, 2, 3))
        assert torch.allclose(log_prob.double(), oracle, atol=1e-3, rtol=1e-4), int(t)


def test_per_sample_timesteps_equal_separate_calls():
    alphas = schedule()
    torch.manual_seed(3)
    x, eps, prev = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    kw = dict(alphas_cumprod=alphas, final_alpha_cumprod=alphas[0], step_ratio=100, eta=1.0)
    _, both = ddim_step_with_logprob(eps, torch.tensor([901, 401]), x, prev_sample=prev, **kw)
    _, first = ddim_step_with_logprob(eps[:1], torch.tensor(901), x[:1], prev_sample=prev[:1], **kw)
    _, second = ddim_step_with_logprob(eps[1:], torch.tensor(401), x[1:], prev_sample=prev[1:], **kw)
    assert torch.allclose(both, torch.cat([first, second]))


def test_v_and_sample_prediction_agree_with_epsilon():
    alphas = schedule().double()
    torch.manual_seed(4)
    x_t, eps = torch.randn(2, 2, 2, 2, dtype=torch.float64), torch.randn(2, 2, 2, 2, dtype=torch.float64)
    t = torch.tensor(600)
    a = alphas[t]
    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    kw = dict(alphas_cumprod=alphas, final_alpha_cumprod=alphas[0], step_ratio=50, eta=1.0)
    prev, lp = ddim_step_with_logprob(eps, t, x_t, **kw)
    for pred, kind in ((x0, "sample"), (v, "v_prediction")):
        _, lp2 = ddim_step_with_logprob(pred, t, x_t, prediction_type=kind, prev_sample=prev, **kw)
        assert torch.allclose(lp, lp2, atol=1e-8)


def test_ddim_step_rejects_eta_zero_and_unknown_prediction():
    alphas = schedule()
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(x, torch.tensor(10), x, alphas_cumprod=alphas, final_alpha_cumprod=alphas[0], step_ratio=1, eta=0.0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ddim_step_with_logprob(
            x, torch.tensor(10), x, alphas_cumprod=alphas, final_alpha_cumprod=alphas[0], step_ratio=1, eta=1.0,
            prediction_type="noise",
        )


def test_clipped_loss_hand_values():
    # ratio = exp(0) = 1 -> loss = -mean(A) = -(1 - 2)/2 = 0.5; nothing clipped, kl 0
    loss, stats = ddpo_clipped_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, -2.0]), clip_range=0.2, adv_clip_max=5)
    assert loss.item() == pytest.approx(0.5) and stats["approx_kl"].item() == 0 and stats["clipfrac"].item() == 0
    # A = +1, log-ratio = log 2: ratio 2 clipped to 1.2 -> max(-2, -1.2) = -1.2
    loss, stats = ddpo_clipped_loss(torch.tensor([math.log(2)]), torch.zeros(1), torch.ones(1), clip_range=0.2, adv_clip_max=5)
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"].item() == 1
    assert stats["approx_kl"].item() == pytest.approx(0.5 * math.log(2) ** 2)
    # A = -1, ratio 2: max(2, 1.2) = 2 (unclipped, pessimistic)
    loss, _ = ddpo_clipped_loss(torch.tensor([math.log(2)]), torch.zeros(1), -torch.ones(1), clip_range=0.2, adv_clip_max=5)
    assert loss.item() == pytest.approx(2.0)
    # advantage 10 clamps to adv_clip_max 3
    loss, _ = ddpo_clipped_loss(torch.zeros(1), torch.zeros(1), torch.tensor([10.0]), clip_range=0.2, adv_clip_max=3)
    assert loss.item() == pytest.approx(-3.0)


def test_clipped_loss_gradient_vanishes_outside_clip():
    lp = torch.tensor([math.log(2), 0.0], requires_grad=True)
    loss, _ = ddpo_clipped_loss(lp, torch.zeros(2), torch.ones(2), clip_range=0.2, adv_clip_max=5)
    loss.backward()
    assert lp.grad[0].item() == 0 and lp.grad[1].item() == pytest.approx(-0.5)


def test_normalize_advantages():
    adv = normalize_advantages(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(adv, torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-3)
    assert torch.equal(normalize_advantages(torch.ones(3)), torch.zeros(3))
    # PerPromptStatTracker (stateful) is tested in tests/utils/test_running.py.

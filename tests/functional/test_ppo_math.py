"""PPO math against independent slow loops written here, on hand-sized tensors."""

import math

import pytest
import torch

from rlft.functional.ppo import (adaptive_kl_coef, approx_kl, gae, kl_abs, kl_full, kl_mse, kl_penalty, kl_plain,
                                 last_token_index, per_token_rewards, policy_loss, value_loss)


def slow_gae(values, rewards, mask, gamma, lam):
    B, T = values.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        last = 0.0
        for t in reversed(range(T)):
            v = float(values[b, t] * mask[b, t])
            nv = float(values[b, t + 1] * mask[b, t + 1]) if t + 1 < T else 0.0
            r = float(rewards[b, t] * mask[b, t])
            delta = r + gamma * nv - v
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, adv + (values * mask).double()


def test_gae_hand_values():
    # one sequence, T=2, gamma=1, lam=1: A_1 = r_1 - V_1 ; A_0 = r_0 + V_1 - V_0 + A_1
    values = torch.tensor([[0.5, 0.25]])
    rewards = torch.tensor([[0.0, 1.0]])
    adv, ret = gae(values, rewards, torch.ones(1, 2), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.75]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0)])
def test_gae_matches_slow_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    mask = torch.ones(3, 7)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    adv, ret = gae(values, rewards, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = slow_gae(values, rewards, mask, gamma, lam)
    torch.testing.assert_close(adv.double(), want_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), want_ret, atol=1e-5, rtol=1e-5)


def test_kl_estimators_hand_values():
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(kl_plain(lp, ref), torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(kl_abs(lp, ref), torch.tensor([[0.5, 1.0]]))
    torch.testing.assert_close(kl_mse(lp, ref), torch.tensor([[0.125, 0.5]]))
    torch.testing.assert_close(kl_penalty(lp, ref, "mse"), kl_mse(lp, ref))
    with pytest.raises(ValueError, match="unknown kl_penalty"):
        kl_penalty(lp, ref, "nope")
    with pytest.raises(ValueError, match="full logits"):
        kl_penalty(lp, ref, "full")


def test_kl_full_matches_definition():
    # p = [3/4, 1/4], q = [1/2, 1/2]: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    logits = torch.log(torch.tensor([[[0.75, 0.25]]]))
    ref = torch.zeros(1, 1, 2)
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_full(logits, ref).item() == pytest.approx(want, abs=1e-6)
    big, bigref = torch.randn(2, 5, 30), torch.randn(2, 5, 30)
    p, q = torch.log_softmax(big.double(), -1), torch.log_softmax(bigref.double(), -1)
    torch.testing.assert_close(kl_full(big, bigref, chunk_rows=3).double(), (p.exp() * (p - q)).sum(-1), atol=1e-5, rtol=0)


def test_per_token_rewards_place_score_on_last_kept_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, non_score = per_token_rewards(scores, kl, 0.5, mask)
    # slow loop
    for b in range(2):
        last = max(i for i in range(4) if mask[b, i])
        for t in range(4):
            want = -0.5 * kl[b, t].item() + (scores[b].item() if t == last else 0.0)
            assert rewards[b, t].item() == pytest.approx(want)
            assert non_score[b, t].item() == pytest.approx(-0.5 * kl[b, t].item())
    torch.testing.assert_close(last_token_index(torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]])), torch.tensor([2, 3]))


def test_policy_loss_against_slow_loop():
    g = torch.Generator().manual_seed(1)
    lp, old, adv = torch.randn(2, 5, generator=g) * 0.3, torch.randn(2, 5, generator=g) * 0.3, torch.randn(2, 5, generator=g)
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    eps = 0.2
    loss, clipfrac, ratio = policy_loss(lp, old, adv, mask, eps)
    total, clipped_count, n = 0.0, 0, 0
    for b in range(2):
        for t in range(5):
            if not mask[b, t]:
                continue
            r = math.exp(lp[b, t] - old[b, t])
            a = adv[b, t].item()
            unclipped, clipped = -a * r, -a * min(max(r, 1 - eps), 1 + eps)
            total += max(unclipped, clipped)
            clipped_count += clipped > unclipped
            n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert clipfrac.item() == pytest.approx(clipped_count / n)
    assert ratio.shape == (2, 5)


def test_value_loss_against_slow_loop():
    vpred = torch.tensor([[1.0, 0.0, 2.0]])
    old = torch.tensor([[0.5, 0.5, 0.5]])
    ret = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1]])
    loss, clipfrac = value_loss(vpred, old, ret, mask, 0.2)
    # token 0: clip(1.0) = 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69, clipped wins
    # token 1: clip(0.0) = 0.3 -> max(0, 0.09) = 0.09, clipped wins
    # token 2: clip(2.0) = 0.7 -> max(4, 0.49) = 4, unclipped wins
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 4.0) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_approx_kl_and_adaptive_coef():
    lp, old = torch.tensor([[0.0, -1.0]]), torch.tensor([[-0.5, -0.5]])
    a, p = approx_kl(lp, old, torch.ones(1, 2))
    assert a.item() == pytest.approx(0.5 * (0.25 + 0.25) / 2)
    assert p.item() == pytest.approx(((-0.5 - 0.0) + (-0.5 + 1.0)) / 2)
    # KL far above target: error clipped at +0.2 -> beta * (1 + 0.2 * 256 / 10000)
    assert adaptive_kl_coef(0.2, 100.0, 6.0, 256, 10000) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    assert adaptive_kl_coef(0.2, 3.0, 6.0, 100, 1000) == pytest.approx(0.2 * (1 - 0.2 * 100 / 1000))
    assert adaptive_kl_coef(0.2, 6.6, 6.0, 100, 1000) == pytest.approx(0.2 * (1 + 0.1 * 100 / 1000))

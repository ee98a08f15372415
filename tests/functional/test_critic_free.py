"""Critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++, DAPO losses) against slow loops written here."""

import math
import statistics

import pytest
import torch

from rlft.functional.critic_free import (GRPO_STD_EPS, LOSS_AGGREGATIONS, aggregate_loss, clipped_policy_loss,
                                         discounted_returns, dr_grpo_advantages, group_stats, group_view,
                                         grpo_advantages, kl_k3, normalise_with_stats, reinforce_pp_advantages,
                                         rloo_advantages, sequence_advantages, sequence_to_token)
from rlft.functional.ppo import policy_loss
from rlft.functional.stats import WHITEN_EPS

# Two groups of k=4: [1, 0, 0, 1] and [2, 2, 2, 2].
HAND = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


# --------------------------------------------------------------------------- slow references
def slow_group_advantages(scores, k, kind, eps=GRPO_STD_EPS):
    out = []
    for g in range(0, len(scores), k):
        group = [float(x) for x in scores[g : g + k]]
        mean = sum(group) / k
        for i, r in enumerate(group):
            if kind == "grpo":
                out.append((r - mean) / (statistics.stdev(group) + eps))
            elif kind == "dr_grpo":
                out.append(r - mean)
            else:  # rloo: baseline = mean of the *other* k-1 rewards
                others = group[:i] + group[i + 1 :]
                out.append(r - sum(others) / (k - 1))
    return torch.tensor(out, dtype=torch.float64)


def slow_returns(rewards, mask, gamma):
    B, T = rewards.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            r = float(rewards[b, t]) if mask[b, t] else 0.0
            running = r + gamma * running
            out[b, t] = running if mask[b, t] else 0.0
    return out


def slow_whiten_kept(values, mask):
    kept = [float(values[b, t]) for b in range(values.shape[0]) for t in range(values.shape[1]) if mask[b, t]]
    mean, var = statistics.fmean(kept), statistics.variance(kept)
    out = torch.zeros(values.shape, dtype=torch.float64)
    for b in range(values.shape[0]):
        for t in range(values.shape[1]):
            if mask[b, t]:
                out[b, t] = (float(values[b, t]) - mean) / math.sqrt(var + WHITEN_EPS)
    return out


def slow_aggregate(per_token, mask, mode, max_tokens=None):
    B, T = per_token.shape
    rows = [[float(per_token[b, t]) for t in range(T) if mask[b, t]] for b in range(B)]
    if mode == "token_mean":
        flat = [x for row in rows for x in row]
        return sum(flat) / len(flat)
    if mode == "seq_mean_token_mean":
        return sum(sum(row) / len(row) if row else 0.0 for row in rows) / B
    return sum(sum(row) for row in rows) / (B * max_tokens)


def ragged_mask(B, T, lengths):
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


# --------------------------------------------------------------------------- sequence advantages
def test_hand_example():
    # group 1: mean 0.5, centred [.5, -.5, -.5, .5], sample std sqrt((4 * .25) / 3) = 1/sqrt(3)
    #   GRPO (eps=0): .5 * sqrt(3) = sqrt(3)/2 ~ 0.8660 with signs [+, -, -, +]
    #   RLOO: r_1 = 1 vs mean(0, 0, 1) = 1/3 -> 2/3; r_2 = 0 vs mean(1, 0, 1) = 2/3 -> -2/3
    #   Dr. GRPO: [.5, -.5, -.5, .5]
    # group 2: all 2.0 -> 0 for every estimator
    h = math.sqrt(3) / 2
    torch.testing.assert_close(grpo_advantages(HAND, 4, eps=0.0), torch.tensor([h, -h, -h, h, 0, 0, 0, 0]))
    torch.testing.assert_close(grpo_advantages(HAND, 4)[0], torch.tensor(0.5 / (1 / math.sqrt(3) + 1e-4)))
    torch.testing.assert_close(dr_grpo_advantages(HAND, 4), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    t = 2 / 3
    torch.testing.assert_close(rloo_advantages(HAND, 4), torch.tensor([t, -t, -t, t, 0, 0, 0, 0]))


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_sequence_advantages_match_slow_loop(kind, k):
    scores = torch.randn(4 * k, generator=torch.Generator().manual_seed(k))
    got = sequence_advantages(kind, scores, k)
    torch.testing.assert_close(got.double(), slow_group_advantages(scores, k, kind), atol=1e-5, rtol=1e-5)


def test_rloo_is_leave_one_out_and_a_rescaled_dr_grpo():
    scores = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = 4
    groups = scores.reshape(-1, k)
    loo_mean = (groups.sum(1, keepdim=True) - groups) / (k - 1)  # mean of the other k-1
    torch.testing.assert_close(rloo_advantages(scores, k), (groups - loo_mean).reshape(-1))
    torch.testing.assert_close(rloo_advantages(scores, k), k / (k - 1) * dr_grpo_advantages(scores, k))
    # advantages sum to zero within each group (the baseline is unbiased)
    torch.testing.assert_close(rloo_advantages(scores, k).reshape(-1, k).sum(1), torch.zeros(3, dtype=torch.float64))


def test_constant_groups_give_exactly_zero():
    # fp32 mean of sixteen 820.399... is off by one ulp; without the guard GRPO turns it into ~0.54
    scores = torch.full((16,), 820.399169921875)
    for kind in ("grpo", "dr_grpo", "rloo"):
        assert torch.equal(sequence_advantages(kind, scores, 16), torch.zeros(16)), kind


def test_group_errors():
    with pytest.raises(ValueError, match=r"multiple of num_generations=4.*batch_size = \(number of queries\) \* 4"):
        group_view(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        group_view(torch.zeros(6), 0)
    with pytest.raises(ValueError, match="1-D"):
        group_view(torch.zeros(2, 4), 4)
    for fn in (grpo_advantages, rloo_advantages):
        with pytest.raises(ValueError, match="num_generations >= 2"):
            fn(torch.zeros(4), 1)
    torch.testing.assert_close(dr_grpo_advantages(torch.arange(3.0), 1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"unknown sequence advantage estimator 'gae'.*'grpo', 'dr_grpo', 'rloo'"):
        sequence_advantages("gae", HAND, 4)


def test_group_view_keeps_consecutive_blocks():
    assert torch.equal(group_view(torch.arange(6), 3), torch.tensor([[0, 1, 2], [3, 4, 5]]))


def test_group_stats():
    # groups [1, 0, 0, 1] (std 1/sqrt(3)) and [2, 2, 2, 2] (std 0, all equal)
    stats = group_stats(HAND, 4)
    torch.testing.assert_close(stats["mean_group_std"], torch.tensor(0.5 / math.sqrt(3)))
    torch.testing.assert_close(stats["frac_zero_std_groups"], torch.tensor(0.5))
    # groups [1, 2], [3, 3], [5, 5]: two of three have equal rewards
    scores = torch.tensor([1.0, 2.0, 3.0, 3.0, 5.0, 5.0], requires_grad=True)
    stats = group_stats(scores, 2)
    assert not any(v.requires_grad for v in stats.values())
    torch.testing.assert_close(stats["mean_group_std"], torch.tensor(statistics.stdev([1, 2]) / 3))
    torch.testing.assert_close(stats["frac_zero_std_groups"], torch.tensor(2 / 3))


def test_sequence_to_token():
    mask = ragged_mask(3, 4, [4, 2, 0])
    adv = torch.tensor([1.5, -2.0, 3.0])
    want = torch.tensor([[1.5, 1.5, 1.5, 1.5], [-2.0, -2.0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(sequence_to_token(adv, mask), want)


# --------------------------------------------------------------------------- REINFORCE++
def test_discounted_returns_hand_values():
    # r = [1, 2, 3], gamma = 0.5: G_2 = 3, G_1 = 2 + 1.5 = 3.5, G_0 = 1 + 1.75 = 2.75
    got = discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), 0.5)
    torch.testing.assert_close(got, torch.tensor([[2.75, 3.5, 3.0]]))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_discounted_returns_match_slow_loop_and_ignore_masked_values(gamma):
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(3, 6, generator=g)
    mask = ragged_mask(3, 6, [6, 3, 1])
    mask[0, 2] = 0  # a hole inside a response (a user response_mask)
    got = discounted_returns(rewards, mask, gamma)
    torch.testing.assert_close(got.double(), slow_returns(rewards, mask, gamma), atol=1e-5, rtol=1e-5)
    poisoned = torch.where(mask.bool(), rewards, torch.tensor(float("nan")))
    assert torch.equal(discounted_returns(poisoned, mask, gamma), got)


def test_reinforce_pp_matches_slow_loop_and_is_globally_whitened():
    g = torch.Generator().manual_seed(3)
    rewards = 0.1 * torch.randn(4, 5, generator=g)
    mask = ragged_mask(4, 5, [5, 2, 4, 1])
    got = reinforce_pp_advantages(rewards, mask, gamma=0.95)
    want = slow_whiten_kept(slow_returns(rewards, mask, 0.95), mask)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    kept = got[mask.bool()]
    torch.testing.assert_close(kept.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.var(unbiased=True), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert torch.equal(got[~mask.bool()], torch.zeros(int((mask == 0).sum())))
    # values at masked positions change nothing that is kept
    changed = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))
    assert torch.equal(reinforce_pp_advantages(changed, mask, gamma=0.95), got)


def test_reinforce_pp_default_gamma_is_undiscounted():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = ragged_mask(2, 3, [3, 2])
    # returns [[1, 1, 1], [2, 2, -]]: kept {1, 1, 1, 2, 2}, mean 1.4, sample var 0.3
    got = reinforce_pp_advantages(rewards, mask)
    s = math.sqrt(0.3 + WHITEN_EPS)
    torch.testing.assert_close(got, torch.tensor([[-0.4 / s, -0.4 / s, -0.4 / s], [0.6 / s, 0.6 / s, 0.0]]))


def test_normalise_with_stats_reproduces_local_whitening():
    # the cross-process path: reduce mean/var elsewhere, then normalise with them
    g = torch.Generator().manual_seed(4)
    rewards, mask = torch.randn(3, 4, generator=g), ragged_mask(3, 4, [4, 3, 2])
    returns = discounted_returns(rewards, mask, 1.0)
    kept = returns[mask.bool()]
    got = normalise_with_stats(returns, mask, kept.mean(), kept.var(unbiased=True))
    torch.testing.assert_close(got, reinforce_pp_advantages(rewards, mask), atol=1e-6, rtol=1e-6)
    # given statistics are used as given (not recomputed locally)
    torch.testing.assert_close(normalise_with_stats(returns, mask, 1.0, 4.0),
                               torch.where(mask.bool(), (returns - 1.0) / math.sqrt(4.0 + WHITEN_EPS), 0.0))
    # a zero global variance (every kept return equal) stays finite thanks to WHITEN_EPS
    flat = normalise_with_stats(torch.full((1, 2), 3.0), torch.ones(1, 2), 2.0, 0.0)
    torch.testing.assert_close(flat, torch.full((1, 2), 1.0 / math.sqrt(WHITEN_EPS)))


# --------------------------------------------------------------------------- KL k3
def test_kl_k3_value_and_gradient():
    # p = log pi = -1, q = log pi_ref = -2: q - p = -1, k3 = e^-1 + 1 - 1 = e^-1
    lp = torch.tensor([[-1.0, -0.5, -3.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -0.5, -1.0]])
    k3 = kl_k3(lp, ref)
    torch.testing.assert_close(k3[0, 0], torch.tensor(math.exp(-1)))
    assert k3[0, 1] == 0  # equal log-probs: no divergence
    torch.testing.assert_close(k3[0, 2], torch.tensor(math.exp(2) - 2 - 1))
    assert (k3 >= 0).all()
    k3.sum().backward()
    torch.testing.assert_close(lp.grad, 1 - torch.exp(ref - lp.detach()))


def test_kl_k3_nonnegative_on_random_inputs():
    g = torch.Generator().manual_seed(5)
    lp, ref = 3 * torch.randn(50, 7, generator=g), 3 * torch.randn(50, 7, generator=g)
    assert (kl_k3(lp, ref) >= 0).all()


# --------------------------------------------------------------------------- loss aggregation
@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_aggregate_loss_matches_slow_loop(mode):
    g = torch.Generator().manual_seed(6)
    per_token = torch.randn(4, 6, generator=g)
    mask = ragged_mask(4, 6, [6, 1, 3, 4])
    got = aggregate_loss(per_token, mask, mode, max_tokens=8)
    assert got.dim() == 0
    torch.testing.assert_close(got.double(), torch.tensor(slow_aggregate(per_token, mask, mode, 8),
                                                          dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_aggregation_hand_values():
    # rows [1, 1, 1, 1] and [4, -, -, -]: token_mean 8/5; seq_mean_token_mean (1 + 4)/2;
    # Dr. GRPO with a budget of 10 tokens: 8 / (2 * 10)
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 9.0, 9.0, 9.0]])
    mask = ragged_mask(2, 4, [4, 1])
    torch.testing.assert_close(aggregate_loss(per_token, mask, "token_mean"), torch.tensor(1.6))
    torch.testing.assert_close(aggregate_loss(per_token, mask, "seq_mean_token_mean"), torch.tensor(2.5))
    torch.testing.assert_close(aggregate_loss(per_token, mask, "seq_mean_token_sum_norm", max_tokens=10),
                               torch.tensor(0.4))


def test_dr_grpo_normaliser_is_constant_across_lengths():
    # the per-token weight is 1/(B * max_tokens) whatever each response's length
    per_token = torch.arange(1.0, 13.0).reshape(3, 4)
    mask = ragged_mask(3, 4, [4, 2, 1])
    got = aggregate_loss(per_token, mask, "seq_mean_token_sum_norm", max_tokens=16)
    torch.testing.assert_close(got, (per_token * mask).sum() / (3 * 16))
    w = torch.zeros_like(per_token, requires_grad=True)
    aggregate_loss(per_token + w, mask, "seq_mean_token_sum_norm", max_tokens=16).backward()
    torch.testing.assert_close(w.grad, mask / 48)


def test_aggregation_errors():
    x, m = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="needs max_tokens >= 1.*max_new_tokens"):
        aggregate_loss(x, m, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="needs max_tokens >= 1"):
        aggregate_loss(x, m, "seq_mean_token_sum_norm", max_tokens=0)
    with pytest.raises(ValueError, match=r"unknown loss aggregation 'sum'.*'token_mean', 'seq_mean_token_mean'"):
        aggregate_loss(x, m, "sum")


# --------------------------------------------------------------------------- clipped loss
def _policy_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(3, 5, generator=g) - 2
    logprobs = old + 0.4 * torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    return logprobs, old, adv, ragged_mask(3, 5, [5, 3, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_token_mean_equals_ppo_policy_loss_exactly(seed):
    logprobs, old, adv, mask = _policy_inputs(seed)
    got = clipped_policy_loss(logprobs, old, adv, mask, clip_low=0.2, clip_high=0.2, aggregation="token_mean")
    want = policy_loss(logprobs, old, adv, mask, 0.2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_clipped_policy_loss_matches_slow_loop(mode):
    logprobs, old, adv, mask = _policy_inputs(7)
    lo, hi = 0.2, 0.28
    per_token = torch.zeros(3, 5)
    clipped_count = 0
    for b in range(3):
        for t in range(5):
            r = math.exp(float(logprobs[b, t] - old[b, t]))
            a = float(adv[b, t])
            unclipped, clipped = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
            per_token[b, t] = max(unclipped, clipped)
            clipped_count += int(mask[b, t] and clipped > unclipped)
    loss, clipfrac, ratio = clipped_policy_loss(logprobs, old, adv, mask, clip_low=lo, clip_high=hi,
                                                aggregation=mode, max_tokens=5)
    torch.testing.assert_close(loss.double(), torch.tensor(slow_aggregate(per_token, mask, mode, 5),
                                                           dtype=torch.float64), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(clipfrac, torch.tensor(clipped_count / mask.sum().item()))
    torch.testing.assert_close(ratio, torch.exp(logprobs - old))


def test_clip_higher_leaves_ratios_below_the_upper_bound_unclipped():
    # ratio 1.25 lies in (1 + 0.2, 1 + 0.28]: clip-higher keeps its gradient for A > 0,
    # the symmetric 0.2 clip cuts it to a constant 1.2 with zero gradient.
    old = torch.tensor([[0.0]])
    adv, mask = torch.tensor([[2.0]]), torch.ones(1, 1)
    lp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    loss, clipfrac, _ = clipped_policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, aggregation="token_mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-2.5))
    assert clipfrac == 0 and lp.grad.abs().item() > 0
    lp.grad = None
    loss, clipfrac, _ = clipped_policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.2, aggregation="token_mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-2.4))
    assert clipfrac == 1 and lp.grad.item() == 0
    # the lower bound is clip_low: ratio 0.75 with A < 0 is clipped at 0.8 -> loss 0.8 * 1
    lp2 = torch.tensor([[math.log(0.75)]])
    loss, clipfrac, _ = clipped_policy_loss(lp2, old, -adv / 2, mask, clip_low=0.2, clip_high=0.28,
                                            aggregation="token_mean")
    torch.testing.assert_close(loss, torch.tensor(0.8))
    assert clipfrac == 1

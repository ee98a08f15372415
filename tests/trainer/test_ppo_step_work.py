"""The cheaper per-step bookkeeping of PPOTrainer against independent computations: the logged policy
entropy (one exp pass instead of a log-softmax, `entropy_from_logits`) and the NaN/inf check of the
gradients without clipping (`gradients_finite`, no norm)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import set_seed
from rlft.trainer._ppo_guards import gradients_finite


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logged_policy_entropy_equals_the_naive_entropy_of_a_fresh_forward(model_path, pad_tokenizer, arch):
    """learning_rate 0 and one minibatch per epoch: ppo/policy/entropy is the mean over the response tokens of
    -sum p log p, from a plain forward of each whole (unpadded) sequence, in float64."""
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path(arch))
    config = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=2, learning_rate=0.0, seed=0)
    trainer = PPOTrainer(config, model, None, pad_tokenizer)
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13]), torch.tensor([14])]
    responses = [torch.tensor([20, 21, 22, 23, 24]), torch.tensor([25, 26]), torch.tensor([27, 28, 29]), torch.tensor([30])]
    stats = trainer.step(queries, responses, [torch.tensor(1.0)] * 4)

    lm = trainer.accelerator.unwrap_model(trainer.model).pretrained_model
    per_sample = []  # (sum of token entropies, token count) per sample
    with torch.no_grad():
        for q, r in zip(queries, responses):
            logits = lm(input_ids=torch.cat([q, r])[None]).logits[0, len(q) - 1 : -1].double()  # (len(r), V): predicts r
            p = torch.softmax(logits, -1)
            per_sample.append(((-(p * torch.log(p)).sum(-1)).sum().item(), len(r)))
    # one minibatch of the whole batch per epoch: the stat is the token mean over all responses, twice
    expected = sum(h for h, _ in per_sample) / sum(n for _, n in per_sample)
    assert stats["ppo/policy/entropy"] == pytest.approx(expected, abs=1e-5)


def test_gradients_finite_matches_a_per_tensor_check_and_leaves_the_gradients_alone():
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7)),
              torch.nn.Parameter(torch.randn(2, 2, dtype=torch.float64)), torch.nn.Parameter(torch.randn(4))]
    for p in params[:3]:
        p.grad = torch.randn_like(p) * 1e30  # large but finite
    params[3].grad = None  # a parameter outside the loss
    before = [None if p.grad is None else p.grad.clone() for p in params]
    assert gradients_finite(params) is True
    assert all(b is None and p.grad is None or torch.equal(b, p.grad) for b, p in zip(before, params))
    for bad in (math.nan, math.inf, -math.inf):
        for which in (0, 2):
            params[which].grad.view(-1)[1] = bad
            naive = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
            assert gradients_finite(params) is naive is False, (bad, which)
            params[which].grad.view(-1)[1] = 0.0
    assert gradients_finite([]) is True


@pytest.mark.parametrize("switch", [None, "torch"])
def test_step_runs_the_linear_layers_on_onednn_unless_switched_off(model_path, pad_tokenizer, monkeypatch, switch):
    """PPOTrainer.step routes the policy's and the reference's linear layers through rlft.utils.onednn_linear
    (forward and backward), restores them after, and RLFT_ONEDNN_LINEARS=torch keeps torch's kernels."""
    from rlft.utils import onednn_linear

    if not onednn_linear.onednn_available():
        pytest.skip("this torch build has no oneDNN linear op")
    if switch:
        monkeypatch.setenv(onednn_linear.ONEDNN_LINEARS_ENV, switch)
    calls = {"n": 0}
    real = onednn_linear.OneDNNLinear.apply

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(onednn_linear.OneDNNLinear, "apply", counting)
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, seed=0), model, None, pad_tokenizer)
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13]), torch.tensor([14])]
    responses = [torch.tensor([20, 21, 22]), torch.tensor([23, 24]), torch.tensor([25]), torch.tensor([26, 27, 28, 29])]
    stats = trainer.step(queries, responses, [1.0, 0.0, 0.5, -1.0])
    assert math.isfinite(stats["ppo/loss/total"])
    assert (calls["n"] > 0) == (switch is None), calls
    assert not any("forward" in m.__dict__ for m in trainer.model.modules()), "layers left routed after step"

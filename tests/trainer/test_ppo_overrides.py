"""step() goes through the TRL-named methods, so a subclass that overrides one changes the step (issue 18).

TRL 0.7 users extend PPOTrainer this way: custom per-token rewards in `compute_rewards`, a custom
forward in `batched_forward_pass`, a custom `loss`, extra stats in `record_step_stats`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import PPODecorators, set_seed


def _make(cls, model_path, tokenizer, **cfg):
    cfg.setdefault("batch_size", 4)
    cfg.setdefault("mini_batch_size", 2)
    cfg.setdefault("ppo_epochs", 1)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    return cls(PPOConfig(**cfg), model, None, tokenizer)


def _batch():
    g = torch.Generator().manual_seed(0)
    qs = [torch.randint(5, 900, (n,), generator=g) for n in (3, 5, 2, 4)]
    rs = [torch.randint(5, 900, (n,), generator=g) for n in (4, 2, 5, 3)]
    return qs, rs, [1.0, 0.0, 0.5, 2.0]


def test_compute_rewards_override_shapes_the_returns(model_path, pad_tokenizer):
    class Bonus(PPOTrainer):
        def compute_rewards(self, scores, logprobs, ref_logprobs, masks):
            rewards, non_score, kls = super().compute_rewards(scores, logprobs, ref_logprobs, masks)
            return rewards + 10.0 * masks, non_score, kls  # +10 on every kept token

    plain = _make(PPOTrainer, model_path, pad_tokenizer).step(*_batch())
    bonus = _make(Bonus, model_path, pad_tokenizer).step(*_batch())
    # returns are discounted reward sums (gamma=1): each kept token adds 10 per later kept token
    assert bonus["ppo/returns/mean"] > plain["ppo/returns/mean"] + 10.0


def test_batched_forward_pass_is_the_only_forward(model_path, pad_tokenizer):
    calls = []

    class Counting(PPOTrainer):
        def batched_forward_pass(self, model, queries, responses, model_inputs=None, return_logits=False, response_masks=None):
            calls.append((len(queries), return_logits, torch.is_grad_enabled()))
            return super().batched_forward_pass(model, queries, responses, model_inputs, return_logits, response_masks)

    _make(Counting, model_path, pad_tokenizer, ppo_epochs=2).step(*_batch())
    # rollout: policy and reference over the 4 samples without gradients; then 2 epochs x 2 minibatches with them
    assert calls[:2] == [(4, False, False), (4, False, False)]
    assert calls[2:] == [(2, True, True)] * 4


def test_loss_override_is_what_gets_minimised(model_path, pad_tokenizer):
    class NoLoss(PPOTrainer):
        def loss(self, *args, **kwargs):
            pg, vf, stats = super().loss(*args, **kwargs)
            return pg * 0.0, vf * 0.0, stats

    trainer = _make(NoLoss, model_path, pad_tokenizer, optimizer_lr=None) if False else _make(NoLoss, model_path, pad_tokenizer)
    trainer.optimizer = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=1.0)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.step(*_batch())
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_compute_advantages_and_train_minibatch_overrides(model_path, pad_tokenizer):
    seen = {}

    class Custom(PPOTrainer):
        def compute_advantages(self, values, rewards, mask):
            values, advantages, returns = super().compute_advantages(values, rewards, mask)
            return values, torch.full_like(advantages, 3.0), returns

        def train_minibatch(self, old_logprobs, values, logprobs, logits, vpreds, mask, advantages, returns, ref_logprobs=None):
            seen.setdefault("advantages", []).append(advantages.clone())
            return super().train_minibatch(old_logprobs, values, logprobs, logits, vpreds, mask, advantages, returns)

    stats = _make(Custom, model_path, pad_tokenizer).step(*_batch())
    assert len(seen["advantages"]) == 2
    assert all(torch.all(a == 3.0) for a in seen["advantages"])
    assert stats["ppo/policy/advantages_mean"] == pytest.approx(3.0)


def test_train_minibatch_puts_every_module_in_training_mode(model_path, pad_tokenizer):
    """Also a submodule left in eval mode (train() is skipped only when every module already trains)."""
    seen = []

    class EvalFirst(PPOTrainer):
        def train_minibatch(self, *args, **kwargs):
            self.model.pretrained_model.transformer.h[0].eval()
            out = super().train_minibatch(*args, **kwargs)
            seen.append(all(m.training for m in self.model.modules()))
            return out

    _make(EvalFirst, model_path, pad_tokenizer).step(*_batch())
    assert seen == [True, True]


def test_record_step_stats_override_adds_keys(model_path, pad_tokenizer):
    class Extra(PPOTrainer):
        def record_step_stats(self, kl_coef, **data):
            stats = super().record_step_stats(kl_coef, **data)
            stats["custom/mean_kl_per_token"] = (data["kls"] * data["masks"]).sum() / data["masks"].sum()
            return stats

    stats = _make(Extra, model_path, pad_tokenizer).step(*_batch())
    assert np.isfinite(stats["custom/mean_kl_per_token"])


def test_kl_penalty_alias_and_step_safety_checker(model_path, pad_tokenizer):
    trainer = _make(PPOTrainer, model_path, pad_tokenizer, kl_penalty="mse")
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert torch.allclose(trainer._kl_penalty(lp, ref), 0.5 * (lp - ref) ** 2)
    qs, rs, scores = _batch()
    q, r, s, m = trainer._step_safety_checker(4, qs, rs, scores)
    assert len(q) == 4 and m is None and float(s[3]) == 2.0
    with pytest.raises(ValueError, match="batch_size is 3"):
        trainer._step_safety_checker(3, qs, rs, scores)


def test_device_cache_switch_is_per_trainer(model_path, pad_tokenizer):
    """Two trainers with different optimize_device_cache settings do not overwrite each other (or the class)."""
    a = _make(PPOTrainer, model_path, pad_tokenizer, optimize_device_cache=True)
    b = _make(PPOTrainer, model_path, pad_tokenizer, optimize_device_cache=False)
    assert PPODecorators.optimize_device_cache is False
    freed = []
    import rlft.trainer.ppo_trainer as module

    original = module.free_device_cache
    module.free_device_cache = lambda: freed.append(1)
    try:
        b.step(*_batch())
        assert freed == []
        a.step(*_batch())
        assert freed == [1]
    finally:
        module.free_device_cache = original

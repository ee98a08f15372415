"""Non-finite values in scores, rollout, loss or gradients never reach the weights: the step is
skipped, counted and warned about, and too many in a row stop training with NonFiniteError."""

import math
import warnings

import pytest
import torch

from rlft.utils.faults import NonFiniteError, NonFiniteGuard

from ._ppo_helpers import make_ppo

NAN = float("nan")


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randint(5, 900, (3 + i % 3,), generator=g) for i in range(n)]
    rs = [torch.randint(5, 900, (4,), generator=g) for _ in range(n)]
    return qs, rs


def snapshot(trainer):
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    adam_steps = [float(s["step"]) for s in trainer.optimizer.state.values() if "step" in s]
    return params, adam_steps, trainer.kl_ctl.value, dict(trainer.running.state_dict())


def assert_untouched(trainer, snap):
    params, adam_steps, kl, running = snap
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert [float(s["step"]) for s in trainer.optimizer.state.values() if "step" in s] == adam_steps
    assert trainer.kl_ctl.value == kl and trainer.running.state_dict() == running
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


@pytest.fixture
def trainer(model_path, tokenizer):
    t = make_ppo(model_path, tokenizer, scheduler=False, max_consecutive_nonfinite_steps=3)
    t.step(*batch(seed=1), [torch.tensor(1.0)] * 4)  # a good step first: the optimizer has state
    return t


@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_nonfinite_score_skips_the_step(trainer, bad):
    snap = snapshot(trainer)
    with pytest.warns(UserWarning, match=r"non-finite values .* the scores \(positions \[2\]"):
        stats = trainer.step(*batch(), [torch.tensor(1.0), 0.5, torch.tensor(bad), 2.0])
    assert_untouched(trainer, snap)
    assert stats["ppo/nonfinite/skipped"] == 1.0 and stats["ppo/nonfinite/total"] == 1.0
    assert math.isnan(stats["objective/kl"]) and math.isnan(stats["ppo/loss/total"])
    assert stats["tokens/responses_len_mean"] == 4.0 and trainer.current_step == 2
    # the next good step trains and resets the streak
    stats = trainer.step(*batch(), [torch.tensor(1.0)] * 4)
    assert stats["ppo/nonfinite/skipped"] == 0.0 and stats["ppo/nonfinite/consecutive"] == 0.0
    assert stats["ppo/nonfinite/total"] == 1.0
    assert not torch.equal(trainer.model.v_head.summary.weight, snap[0]["v_head.summary.weight"])


def _poison(module, when_training: bool):
    """Forward hook making ``module``'s output NaN in train (or eval) mode only."""
    def hook(mod, args, out):
        if mod.training == when_training:
            return out * NAN
        return out
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("where,module,match", [
    ("rollout logits", lambda m: m.pretrained_model.lm_head, "the rollout \\(log-probs"),
    ("rollout values", lambda m: m.v_head, "the rollout \\(values"),
])
def test_nonfinite_rollout_skips_the_step(trainer, where, module, match):
    handle = _poison(module(trainer.model), when_training=False)  # the rollout runs in eval mode
    snap = snapshot(trainer)
    with pytest.warns(UserWarning, match=match):
        stats = trainer.step(*batch(), [torch.tensor(1.0)] * 4)
    handle.remove()
    assert_untouched(trainer, snap)
    assert stats["ppo/nonfinite/skipped"] == 1.0


def test_nonfinite_loss_is_not_backpropagated(trainer):
    handle = _poison(trainer.model.pretrained_model.lm_head, when_training=True)  # rollout fine, training forward NaN
    snap = snapshot(trainer)
    with pytest.warns(UserWarning, match="the PPO loss"):
        stats = trainer.step(*batch(), [torch.tensor(1.0)] * 4)
    handle.remove()
    assert_untouched(trainer, snap)
    assert stats["ppo/nonfinite/skipped"] == 1.0 and math.isnan(stats["ppo/loss/total"])
    assert math.isfinite(stats["objective/kl"])  # the rollout itself was fine


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_nonfinite_gradients_are_not_applied(model_path, tokenizer, max_grad_norm):
    trainer = make_ppo(model_path, tokenizer, scheduler=False, max_grad_norm=max_grad_norm)
    weight = trainer.model.v_head.summary.weight
    handle = weight.register_hook(lambda g: g * math.inf)  # finite loss, infinite gradient
    snap = snapshot(trainer)
    with pytest.warns(UserWarning, match="the gradients"):
        stats = trainer.step(*batch(), [torch.tensor(1.0)] * 4)
    handle.remove()
    params, *_ = snap
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, params[name]), name
    assert not trainer.optimizer.state  # Adam never stepped
    assert stats["ppo/nonfinite/skipped"] == 1.0


def test_too_many_in_a_row_stop_with_the_last_good_checkpoint(trainer, tmp_path):
    good = trainer.save_checkpoint(tmp_path)
    nan_scores = [torch.tensor(NAN)] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.step(*batch(), nan_scores)
        trainer.save_checkpoint(tmp_path)  # saved during the streak: not "good"
        trainer.step(*batch(), nan_scores)
        with pytest.raises(NonFiniteError, match="3 non-finite steps in a row") as info:
            trainer.step(*batch(), nan_scores)
    assert info.value.checkpoint == good and str(good) in str(info.value)
    assert "max_consecutive_nonfinite_steps=3" in str(info.value)


def test_skip_disabled_raises_at_once_and_changes_nothing(model_path, tokenizer):
    trainer = make_ppo(model_path, tokenizer, scheduler=False, skip_nonfinite_steps=False)
    snap = snapshot(trainer)
    with pytest.raises(NonFiniteError, match="skip_nonfinite_steps=False") as info:
        trainer.step(*batch(), [torch.tensor(NAN)] + [torch.tensor(1.0)] * 3)
    assert info.value.checkpoint is None and "No checkpoint was saved" in str(info.value)
    assert_untouched(trainer, snap)
    assert trainer.current_step == 0


def test_counters_survive_a_checkpoint(trainer, tmp_path, model_path, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.step(*batch(), [torch.tensor(NAN)] * 4)
    path = trainer.save_checkpoint(tmp_path)
    fresh = make_ppo(model_path, tokenizer, scheduler=False, max_consecutive_nonfinite_steps=3)
    fresh.load_checkpoint(path)
    assert (fresh.nonfinite.total, fresh.nonfinite.consecutive) == (1, 1)


def test_guard_validates_and_round_trips():
    with pytest.raises(ValueError, match="max_consecutive"):
        NonFiniteGuard(max_consecutive=0)
    g = NonFiniteGuard(max_consecutive=2)
    with pytest.warns(UserWarning):
        g.bad_step("x", 0)
    h = NonFiniteGuard()
    h.load_state_dict(g.state_dict())
    assert (h.total, h.consecutive) == (1, 1)

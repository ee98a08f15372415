"""PPOTrainer's default optimizer (fused Adam where torch has it) and the split of the PPO-epoch time."""

from __future__ import annotations

import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.trainer._ppo_helpers import default_optimizer as _default_optimizer

EPOCH_PARTS = ("forward", "backward", "optimizer")


def adam_reference(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float,
                   betas=(0.9, 0.999), eps=1e-8) -> list[torch.Tensor]:
    """Adam (Kingma & Ba 2015, Algorithm 1) written out in float64, one step per entry of ``grads``."""
    b1, b2 = betas
    out = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(p) for p in out]
    v = [torch.zeros_like(p) for p in out]
    for t, step_grads in enumerate(grads, start=1):
        for p, m_i, v_i, g in zip(out, m, v, step_grads):
            g = g.double()
            m_i.mul_(b1).add_((1 - b1) * g)  # first moment
            v_i.mul_(b2).add_((1 - b2) * g * g)  # second moment
            m_hat = m_i / (1 - b1**t)
            v_hat = v_i / (1 - b2**t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return out


def test_default_optimizer_is_fused_adam_and_matches_the_adam_formula():
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 24), (24,), (3, 5, 7), (1,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    start = [p.detach().clone() for p in params]
    grads = [[torch.randn(s, generator=g) * scale for s in shapes] for scale in (1.0, 0.1, 3.0, 1.0, 0.5)]
    opt = _default_optimizer(params, lr=1e-2)
    assert opt.defaults["fused"] is True
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
    expected = adam_reference(start, grads, lr=1e-2)
    for p, want, before in zip(params, expected, start):
        assert not torch.equal(p.detach(), before)  # it moved (five steps of about lr each)
        torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=1e-6)
    # the state dict loads into a plain Adam: checkpoints stay loadable with either
    plain = torch.optim.Adam([torch.nn.Parameter(s.clone()) for s in start], lr=1e-2)
    plain.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_default_optimizer_is_fused_for_every_floating_dtype(dtype):
    p = torch.nn.Parameter(torch.randn(8, 4).to(dtype))
    opt = _default_optimizer([p], lr=1e-2)
    assert opt.defaults["fused"] is True
    p.grad = torch.randn(8, 4).to(dtype)
    before = p.detach().clone()
    opt.step()
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), before)


def test_default_optimizer_falls_back_where_fused_adam_does_not_apply():
    """Complex parameters have no fused kernel: the optimizer is torch's plain Adam, which still steps."""
    real = torch.nn.Parameter(torch.randn(4))
    cplx = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = _default_optimizer([real, cplx], lr=1e-2)
    assert not opt.defaults["fused"]
    reference = torch.optim.Adam([torch.nn.Parameter(real.detach().clone()), torch.nn.Parameter(cplx.detach().clone())],
                                 lr=1e-2)
    grads = [torch.randn(4), torch.randn(3, dtype=torch.complex64)]
    for params in (opt.param_groups[0]["params"], reference.param_groups[0]["params"]):
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
    opt.step()
    reference.step()
    for p, q in zip(opt.param_groups[0]["params"], reference.param_groups[0]["params"]):
        assert torch.equal(p, q)


def test_step_splits_the_ppo_epoch_time(model_path, tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    config = PPOConfig(batch_size=4, mini_batch_size=2, gradient_accumulation_steps=2, ppo_epochs=2, max_grad_norm=1.0)
    trainer = PPOTrainer(config, model, None, tokenizer)
    assert trainer.optimizer.defaults["fused"] is True
    g = torch.Generator().manual_seed(0)
    qs = [torch.randint(5, 900, (3 + i,), generator=g) for i in range(4)]
    rs = [torch.randint(5, 900, (4,), generator=g) for _ in range(4)]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    stats = trainer.step(qs, rs, [torch.tensor(float(i)) for i in range(4)])
    parts = [stats[f"time/ppo/optimize_step/{part}"] for part in EPOCH_PARTS]
    assert all(isinstance(s, float) and s >= 0 for s in parts), parts
    assert all(s > 0 for s in parts), parts  # each ran: 2 epochs x 2 minibatches, one optimizer step per epoch
    assert sum(parts) <= stats["time/ppo/optimize_step"] <= stats["time/ppo/total"]
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_demo_phase_clock_uses_the_epoch_split(model_path, pad_tokenizer):
    """`train_ppo`'s forward/backward come from the step's split; the phases add up to the wall time."""
    from rlft.demo.train import PPOSettings, make_trainer, train_ppo

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    s = PPOSettings(batch_size=4, mini_batch_size=2, max_new_tokens=4, generation_batch_size=4)
    trainer = make_trainer(model, pad_tokenizer, s)
    seen = []
    original = trainer.step

    def step(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    trainer.step = step
    result = train_ppo(trainer, pad_tokenizer, ["a good film", "the plot is"], lambda texts: [0.5] * len(texts), s,
                       time_budget_s=600, max_steps=2)
    phases = result.phase_seconds
    assert list(phases) == ["generate", "score", "forward", "backward", "other"]
    assert all(v >= 0 for v in phases.values())
    forward = sum(st["time/ppo/forward_pass"] + st["time/ppo/optimize_step/forward"] for st in seen)
    backward = sum(st["time/ppo/optimize_step/backward"] + st["time/ppo/optimize_step/optimizer"] for st in seen)
    assert phases["forward"] == pytest.approx(forward) and phases["backward"] == pytest.approx(backward)
    assert sum(phases.values()) == pytest.approx(result.seconds)

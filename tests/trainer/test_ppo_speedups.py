"""PPOTrainer's faster defaults against the straightforward computations they replace."""

from __future__ import annotations

import torch

from rlft.trainer.ppo_trainer import _default_optimizer


def test_default_optimizer_is_fused_adam_and_matches_plain_adam():
    torch.manual_seed(0)
    fast_params = [torch.nn.Parameter(torch.randn(40, 24)), torch.nn.Parameter(torch.randn(24))]
    slow_params = [torch.nn.Parameter(p.detach().clone()) for p in fast_params]
    fast = _default_optimizer(fast_params, lr=1e-2)
    slow = torch.optim.Adam(slow_params, lr=1e-2)  # TRL's default, the per-parameter loop on CPU
    assert fast.defaults["fused"] is True
    for _ in range(6):
        grads = [torch.randn_like(p) for p in fast_params]
        for p, q, g in zip(fast_params, slow_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fast.step()
        slow.step()
    for p, q in zip(fast_params, slow_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    # the state dict round-trips into a plain Adam (checkpoints stay loadable either way)
    plain = torch.optim.Adam(slow_params, lr=1e-2)
    plain.load_state_dict(fast.state_dict())

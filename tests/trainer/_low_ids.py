"""The programmatic reward of the PPO learning tests: the share of response tokens with a low id."""

from __future__ import annotations

import torch

LOW_IDS = 200  # reward: the share of response tokens with an id below this (about 20% at random)


def learn_low_ids(trainer, steps: int, *, n: int = 16, new_tokens: int = 8, seed: int = 0) -> list[float]:
    """``steps`` PPO steps of ``trainer`` on ``n`` random 4-token prompts each; the batch's mean reward per step."""
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        qs = [torch.randint(5, 900, (4,), generator=g) for _ in range(n)]
        rs = trainer.generate(qs, return_prompt=False, batch_size=n, do_sample=True, top_k=0, top_p=1.0,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None)
        scores = [(r < LOW_IDS).float().mean() for r in rs]
        trainer.step(qs, rs, scores)
        history.append(torch.stack(scores).mean().item())
    return history

"""Pairwise (Bradley-Terry) reward-model loss.

Notation: ``B`` batch of preference pairs. ``r_chosen`` / ``r_rejected`` are the scalar
rewards the model gives the preferred and the dispreferred completion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_reward_loss(
    rewards_chosen: Tensor, rewards_rejected: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean of ``-log sigmoid(r_chosen - r_rejected - margin)`` over the batch.

    Bradley-Terry preference loss (Ouyang et al. 2022, eq. 1); the margin term is the
    Llama 2 variant (Touvron et al. 2023, eq. 2), where ``margin`` grows with how much
    better the chosen answer was rated. ``-logsigmoid(x)`` is the stable form of
    ``-log(1 / (1 + exp(-x)))``.

    rewards_chosen, rewards_rejected: (B,) or (B, 1). margin: (B,) or None (no margin).
    Returns the scalar loss and detached stats: accuracy (strictly r_chosen > r_rejected),
    mean chosen and rejected reward, mean margin between them.
    """
    if rewards_chosen.shape != rewards_rejected.shape:
        raise ValueError(f"rewards_chosen {tuple(rewards_chosen.shape)} and rewards_rejected {tuple(rewards_rejected.shape)} differ in shape")
    chosen = rewards_chosen.reshape(rewards_chosen.shape[0], -1)  # (B, 1)
    rejected = rewards_rejected.reshape(rewards_rejected.shape[0], -1)  # (B, 1)
    if chosen.shape[1] != 1:
        raise ValueError(f"a reward model must output one scalar per sequence, got shape {tuple(rewards_chosen.shape)}")
    chosen, rejected = chosen[:, 0], rejected[:, 0]  # (B,)
    diff = chosen - rejected  # (B,)
    if margin is not None:
        diff = diff - margin.to(diff.dtype).reshape(-1)
    loss = -F.logsigmoid(diff).mean()
    stats = {
        "accuracy": (chosen > rejected).float().mean().detach(),
        "rewards/chosen": chosen.mean().detach(),
        "rewards/rejected": rejected.mean().detach(),
        "rewards/margins": (chosen - rejected).mean().detach(),
    }
    return loss, stats

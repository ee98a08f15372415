"""Statistics that persist across steps: running score moments (PPO) and per-prompt reward buffers (DDPO).

They hold state, so they live here rather than in `rlft.functional`; the arithmetic they
apply is the pure `rlft.functional.stats.merge_moments` and a plain standardisation.
TRL 0.7.10 exposed both as ``trl.trainer.utils.RunningMoments`` / ``PerPromptStatTracker``
(and ``trl.trainer.RunningMoments``); `rlft.trainer.utils` re-exports them under those names.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..functional.ddpo import ADVANTAGE_STD_EPS
from ..functional.stats import merge_moments

__all__ = ["PerPromptStatTracker", "RunningMoments"]


class RunningMoments:
    """Mean and standard deviation of every value seen so far, merged batch by batch.

    ``mean`` and ``var`` are the mean and population variance of all values passed to
    `update`; ``std`` is the sample (Bessel-corrected, n - 1) standard deviation of the same
    values, as in TRL 0.7.10. ``update(xs)`` returns the mean and sample standard deviation of
    ``xs`` itself. The state starts as mean 0, variance 1 with a negligible count (1e-24), so
    the first batch sets it.

    Args:
        accelerator: optional; its ``gather`` is used (when ``gather`` is not given) so that every
            process merges the values of all processes and keeps the same moments.
        gather: optional function from a local 1-D tensor to the concatenation over processes.
    """

    def __init__(self, accelerator=None, gather: Callable[[Tensor], Tensor] | None = None):
        self.mean = 0.0
        self.std = 1.0
        self.var = 1.0
        self.count = 1e-24
        if gather is None and accelerator is not None:
            gather = accelerator.gather
        self._gather = gather

    @torch.no_grad()
    def update(self, xs: Tensor) -> tuple[float, float]:
        """Merge the values of ``xs`` (any shape) into the running moments; returns (mean, std) of ``xs``."""
        xs = xs.detach().float().flatten()
        if self._gather is not None:
            xs = self._gather(xs)
        n = xs.numel()
        batch_mean = xs.mean().item()
        batch_var = xs.var(unbiased=False).item() if n > 1 else 0.0
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count, batch_mean, batch_var, n)
        self.std = (self.var * self.count / max(self.count - 1, 1e-24)) ** 0.5  # sample std of all values
        return batch_mean, (batch_var * n / (n - 1)) ** 0.5 if n > 1 else 0.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std, self.var, self.count = state["mean"], state["std"], state["var"], state["count"]


class PerPromptStatTracker:
    """Normalises each reward by the statistics of recent rewards for the same prompt.

    DDPO (Black et al. 2023, section 5.1 / appendix) normalises advantages per
    prompt, so that easy prompts do not dominate the update. The tracker keeps the
    last ``buffer_size`` rewards of every prompt; while a prompt has fewer than
    ``min_count`` rewards, the statistics of the whole current batch are used.
    Standard deviations are population ones (NumPy's default), plus ``ADVANTAGE_STD_EPS``.

    Args:
        buffer_size: rewards kept per prompt (the oldest are dropped first).
        min_count: rewards a prompt needs before its own statistics are used.
    """

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts, rewards) -> np.ndarray:
        """prompts: (B,) strings; rewards: (B,) numbers. Returns the (B,) advantages."""
        prompts = np.asarray(prompts)
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            kept = prompts == prompt
            buffer = self.stats.setdefault(str(prompt), deque(maxlen=self.buffer_size))
            buffer.extend(rewards[kept].tolist())
            source = rewards if len(buffer) < self.min_count else np.asarray(buffer)
            advantages[kept] = (rewards[kept] - source.mean()) / (source.std() + ADVANTAGE_STD_EPS)
        return advantages

    def get_stats(self) -> dict[str, dict[str, float]]:
        """Per prompt: mean, (population) std and count of the buffered rewards."""
        return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)} for k, v in self.stats.items()}

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count, "stats": {k: list(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.stats = {k: deque(v, maxlen=self.buffer_size) for k, v in state["stats"].items()}

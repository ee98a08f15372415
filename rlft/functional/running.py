"""Running mean and standard deviation of scores across steps (and processes)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class RunningMoments:
    """Mean and standard deviation of every value seen so far, merged batch by batch.

    Uses the parallel-variance merge of Chan et al. (1979). ``gather`` (optional)
    maps a local tensor to the concatenation over processes, so every process keeps
    the same moments. ``update(xs)`` returns the mean and (unbiased) std of ``xs``
    itself, as TRL's RunningMoments does; the running values are in ``mean``/``std``.
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
        xs = xs.detach().float().flatten()
        if self._gather is not None:
            xs = self._gather(xs)
        n = xs.numel()
        batch_mean = xs.mean().item()
        batch_var = xs.var(unbiased=False).item() if n > 1 else 0.0
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.std = (self.var * total / max(total - 1, 1e-24)) ** 0.5
        self.count = total
        return batch_mean, (batch_var * n / (n - 1)) ** 0.5 if n > 1 else 0.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std, self.var, self.count = state["mean"], state["std"], state["var"], state["count"]

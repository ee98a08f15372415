"""Cross-process plumbing shared by the trainers (one copy, so the copies cannot drift)."""

from __future__ import annotations

import torch
from torch import Tensor


def is_distributed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type != DistributedType.NO


def mean_over_processes(stats: dict, accelerator) -> dict:
    """Average every tensor of ``stats`` over processes (others are returned as they are)."""
    if not is_distributed(accelerator):
        return stats
    import torch.distributed as dist

    out = {}
    for key, value in stats.items():
        if isinstance(value, Tensor):
            value = value.detach().to(accelerator.device).float().clone()
            dist.all_reduce(value, dist.ReduceOp.SUM)
            value /= accelerator.num_processes
        out[key] = value
    return out


def any_over_processes(flag: bool, accelerator) -> bool:
    """True on every process when ``flag`` is True on any of them."""
    if not is_distributed(accelerator):
        return flag
    import torch.distributed as dist

    t = torch.tensor(float(flag), device=accelerator.device)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return bool(t.item())

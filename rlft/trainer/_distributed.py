"""Cross-process plumbing shared by the trainers (one copy, so the copies cannot drift).

Sharded models (FSDP2, DeepSpeed ZeRO) have their own module, `_sharding`."""

from __future__ import annotations

import torch
from torch import Tensor


def is_distributed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type != DistributedType.NO


def shards_parameters(accelerator) -> bool:
    """True under DeepSpeed or FSDP, where parameters are flattened or sharded across processes."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


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


def get_global_statistics(accelerator, xs: Tensor, mask: Tensor | None = None, device="cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and element count of ``xs`` over every process (TRL's ``trl.trainer.utils`` name).

    xs: any shape; mask: same shape, 1 where an element counts (None: all count). The variance
    is taken around the global mean (a second reduction), so it equals the variance of all
    processes' kept elements concatenated. TRL 0.7.10 summed masked-out elements into the
    mean; here they count nowhere.
    """
    from ..functional.stats import masked_sum

    xs = xs.to(accelerator.device)
    weight = torch.ones_like(xs) if mask is None else torch.broadcast_to(mask.to(xs.device, xs.dtype), xs.shape)
    # masked_sum selects the kept elements, so NaN/inf in masked-out padding never reaches the sums.
    total, count = accelerator.reduce(torch.stack([masked_sum(xs, weight), weight.sum()]), reduction="sum")
    mean = total / count
    var = accelerator.reduce(masked_sum((xs - mean) ** 2, weight), reduction="sum") / count
    return mean.to(device), var.to(device), count.to(device)


def gather_rows(t: Tensor, accelerator, pad_value: float = 0) -> Tensor:
    """Concatenate ``t`` (n, ...) from every process along dim 0, padding the other dims to the largest.

    Processes may hold different n and different trailing sizes (e.g. T, the longest
    response). Rows come in process order. Returns ``t`` itself when not distributed.
    """
    if not is_distributed(accelerator):
        return t
    import torch.distributed as dist

    t = t.detach().to(accelerator.device)
    world = accelerator.num_processes
    shape = torch.tensor(list(t.shape), device=t.device, dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    target = torch.stack(shapes).max(dim=0).values.tolist()  # pad every dim (dim 0 too) to the largest
    padded = torch.full(target, pad_value, dtype=t.dtype, device=t.device)
    padded[tuple(slice(0, s) for s in t.shape)] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    width = target[1:]
    return torch.cat([part[: int(s[0])] for part, s in zip(parts, shapes)])[(slice(None), *(slice(0, w) for w in width))]


def masked_whiten_over_processes(values: Tensor, mask: Tensor, accelerator, shift_mean: bool = True) -> Tensor:
    """`rlft.functional.masked_whiten` with the mean and variance of the kept elements of *all* processes.

    values, mask: (B, T); B and T may differ between processes. With one process this
    is exactly ``masked_whiten``; with several, only the moments are reduced across
    processes (`get_global_statistics`) and the whitening itself is the same
    `whiten_with_moments`, so a global batch split over processes is whitened as it would
    be on one process (up to summation order).
    """
    from ..functional.stats import bessel_correction, masked_whiten, whiten_with_moments

    if not is_distributed(accelerator):
        return masked_whiten(values, mask, shift_mean=shift_mean)
    mean, var, count = get_global_statistics(accelerator, values, torch.broadcast_to(mask, values.shape), device=values.device)
    if count == 0:
        raise ValueError("masked_whiten_over_processes: no kept element on any process (every response is masked).")
    var = bessel_correction(var, count)  # unbiased, as masked_var
    return whiten_with_moments(values, mean.to(values.dtype), var.to(values.dtype), shift_mean=shift_mean)

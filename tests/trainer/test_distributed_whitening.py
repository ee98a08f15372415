"""The cross-process whitening is `masked_whiten` plus a reduction: bit-identical on one process, and the
whitening of the whole batch when the batch is split over (simulated) processes."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from rlft.functional.stats import WHITEN_EPS, masked_mean, masked_var, masked_whiten
from rlft.trainer._distributed import get_global_statistics, masked_whiten_over_processes


def batch(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(B, T, generator=g) * 3 + 1
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    values = values.masked_fill(mask == 0, float("nan"))  # padding may hold anything
    return values, mask


@pytest.mark.parametrize("shift_mean", [True, False])
def test_one_process_is_bit_identical_to_masked_whiten(shift_mean):
    values, mask = batch()
    single = SimpleNamespace(distributed_type=DistributedType.NO)
    got = masked_whiten_over_processes(values, mask, single, shift_mean=shift_mean)
    want = masked_whiten(values, mask, shift_mean=shift_mean)
    kept = mask.bool()
    assert torch.equal(got[kept], want[kept])
    # and masked_whiten is still the formula it was: (x - mean) * rsqrt(var + eps), mean back when asked
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    formula = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    formula = formula if shift_mean else formula + mean
    assert torch.equal(want[kept], formula[kept])


class _Group:
    """A rendezvous for simulated processes (threads): reduce() sums every member's tensor, in rank order."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=30)
        self.slots = [None] * n


class _FakeProcess:
    distributed_type = DistributedType.MULTI_CPU
    device = torch.device("cpu")

    def __init__(self, group, rank):
        self.group, self.rank = group, rank
        self.num_processes = len(group.slots)

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        self.group.slots[self.rank] = tensor.clone()
        self.group.barrier.wait()
        total = sum(self.group.slots[1:], self.group.slots[0].clone())
        self.group.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return total


def run_split(shards, fn):
    group = _Group(len(shards))
    out = [None] * len(shards)
    errors = []

    def work(rank):
        try:
            out[rank] = fn(_FakeProcess(group, rank), *shards[rank])
        except Exception as e:  # surfaced below; a failing thread must not hang the test
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_split_batch_is_whitened_like_the_whole_batch(shift_mean):
    values, mask = batch(B=5, T=7, seed=3)
    # process 0 holds rows 0-1, process 1 rows 2-4 cut to their own longest response (T differs)
    t1 = int(mask[2:].sum(1).max())
    shards = [(values[:2], mask[:2]), (values[2:, :t1], mask[2:, :t1])]
    parts = run_split(shards, lambda acc, v, m: masked_whiten_over_processes(v, m, acc, shift_mean=shift_mean))
    want = masked_whiten(values, mask, shift_mean=shift_mean)
    for (v, m), got, rows in zip(shards, parts, (slice(0, 2), slice(2, 5))):
        kept = m.bool()
        torch.testing.assert_close(got[kept], want[rows, : m.shape[1]][kept], rtol=1e-5, atol=1e-6)


def test_global_statistics_ignore_masked_nan():
    values, mask = batch(B=4, T=5, seed=1)
    (mean, var, count), = run_split([(values, mask)], lambda acc, v, m: get_global_statistics(acc, v, m))
    kept = values[mask.bool()]
    assert count.item() == kept.numel()
    torch.testing.assert_close(mean, kept.mean())
    torch.testing.assert_close(var, kept.var(unbiased=False))

"""Peak-memory measurement for tests and benchmarks.

On CUDA, ``torch.cuda.max_memory_allocated`` is exact. On CPU PyTorch keeps no
allocation statistics, so `peak_rss_delta` runs the function in a fresh (spawned,
not forked: a fork after OpenMP started can deadlock) child process and reports
how far the child's peak resident set rose above its resident set just before
the call. The child's inputs are built there by ``setup`` so that they count in
the baseline, not in the peak.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
from typing import Any, Callable


_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def rss_bytes() -> int:
    """Current resident set of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set of this process since start or the last `reset_peak_rss` (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(setup, fn, queue) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        state = setup() if setup is not None else None
        fn(state)  # warm-up: lazy kernels and thread pools
        del state
        state = setup() if setup is not None else None
        import gc

        gc.collect()
        reset_peak_rss()
        base = rss_bytes()
        fn(state)
        queue.put(max(0, peak_rss_bytes() - base))
    except BaseException as err:  # report, never hang the parent
        queue.put(err)


def peak_rss_delta(fn: Callable[[Any], object], setup: Callable[[], Any] | None = None, timeout: float = 300) -> int:
    """Bytes by which ``fn(setup())`` raises the peak resident set, measured in a spawned child.

    ``fn`` and ``setup`` must be importable module-level functions. Only a rough
    measure on CPU (page granularity, allocator caching), but enough to tell a
    full-vocabulary fp32 copy from a chunk of one.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, fn, queue))
    # A fixed mmap threshold makes glibc return freed blocks of 64 KiB and more to
    # the OS at once (its adaptive threshold would keep the warm-up's memory cached
    # and hide the measured run's allocations).
    saved = {k: os.environ.get(k) for k in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)
    try:
        proc.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    import queue as queue_mod
    import time

    deadline = time.monotonic() + timeout
    result: Any = None
    try:
        while True:
            try:
                result = queue.get(timeout=1.0)
                break
            except queue_mod.Empty:
                if not proc.is_alive():  # died before reporting (e.g. could not import fn)
                    raise RuntimeError(f"the measuring child process exited with code {proc.exitcode} before reporting") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"peak_rss_delta: no result within {timeout} s") from None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if isinstance(result, BaseException):
        raise RuntimeError(f"the measured function failed in the child process: {result!r}") from result
    return int(result)

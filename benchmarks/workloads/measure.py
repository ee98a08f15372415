"""Measurements shared by every benchmark subprocess: clocks, CPU contention, memory, matmul peak.

Standard library and torch only (imported in rlft's and in the TRL peers' environments).

Contention: a timed region records, from ``/proc/stat``, how much CPU the whole machine
spent (user + system + irq + steal) and, from ``os.times``, how much this process spent.
The difference is CPU used by *other* processes (or stolen by the hypervisor) while we
were timing; as a share of the machine's capacity (wall x CPUs) it is ``foreign_cpu``.
A run whose ``foreign_cpu`` exceeds `CONTENDED_FOREIGN_CPU` is contended: its times say
more about the neighbours than about the code.
"""

from __future__ import annotations

import os
import time

#: Share of the machine's CPU capacity used by other processes above which a run is contended.
CONTENDED_FOREIGN_CPU = 0.10
#: 1-minute load average (per CPU, before the run, excluding our own last run's tail) above which
#: the driver waits before starting a run.
BUSY_LOADAVG_PER_CPU = 0.5


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (0, 0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Region:
    """Wall time, own CPU time and other processes' CPU share over a region of code."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ncpu = os.cpu_count() or 1

    def start(self) -> "Region":
        self.loadavg_start = os.getloadavg()[0]
        self.t0 = time.perf_counter()
        self.cpu0 = process_cpu_seconds()
        self.busy0, _ = machine_busy_jiffies()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        own = process_cpu_seconds() - self.cpu0
        busy1, _ = machine_busy_jiffies()
        machine = (busy1 - self.busy0) / self.hz
        foreign = max(0.0, machine - own) / max(wall * self.ncpu, 1e-9)
        return {
            "wall_s": wall,
            "cpu_s": own,
            "cpu_util": own / max(wall * self.ncpu, 1e-9),
            "foreign_cpu": foreign,
            "loadavg_1m_start": self.loadavg_start,
            "loadavg_1m_end": os.getloadavg()[0],
        }


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def malloc_trim() -> None:
    """Return the C heap's free memory to the OS, so that both sides start from a trimmed baseline."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- matmul peak
def matmul_peak_flops(device: str = "cpu", dtype=None, seconds_per_size: float = 0.4) -> dict:
    """Best measured matmul throughput (FLOP/s) over a few square and model-shaped sizes and, on CPU in
    fp32, over both kernels torch can reach: its own matmul (MKL's sgemm) and oneDNN's inner product.

    fp32 on CPU, bf16 on CUDA. Each size runs for about ``seconds_per_size`` after a warm-up; the best
    (kernel, size) rate is the peak MFU is measured against: what this machine's arithmetic actually
    reaches, not a datasheet number. Both kernels count because rlft runs its linear layers on oneDNN,
    which on the benchmark's AMD CPU reaches about twice MKL's rate (about 460 against 210 GFLOP/s);
    a peak measured with MKL alone would let MFU pass 100%. ``kernel_peaks`` keeps each kernel's best.
    """
    import torch

    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sizes = [(2048, 2048, 2048), (1024, 1024, 1024), (2048, 256, 8192), (2048, 256, 1024), (2048, 1024, 256)]
    if device == "cuda":
        sizes = [(8192, 8192, 8192), (4096, 4096, 4096)] + sizes
    onednn = (device == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    rates = {}
    for m, k, n in sizes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        kernels = {"matmul": lambda a=a, b=b: a @ b}
        if onednn:
            w = b.t().contiguous()  # (n, k): a linear layer's weight
            kernels["onednn"] = lambda a=a, w=w: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
        for kernel, product in kernels.items():
            for _ in range(2):
                product()
            if device == "cuda":
                torch.cuda.synchronize()
            reps, t0 = 0, time.perf_counter()
            while True:
                product()
                reps += 1
                if device == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                if elapsed > seconds_per_size:
                    break
            rates[f"{kernel} {m}x{k}x{n}"] = 2 * m * k * n * reps / elapsed
    best = max(rates, key=rates.get)
    kernel_peaks = {}
    for key, rate in rates.items():
        kernel = key.split(" ")[0]
        kernel_peaks[kernel] = max(kernel_peaks.get(kernel, 0.0), rate)
    return {"peak_flops": rates[best], "peak_shape": best, "rates": rates, "kernel_peaks": kernel_peaks,
            "dtype": str(dtype).replace("torch.", "")}

"""How much one competing CPU job slows a PPO step, with torch's default threads and with rlft's.

    python benchmarks/contention.py [--steps 3]

Runs `benchmarks/ppo_bench.py` (the 5M-parameter GPT-2 PPO workload: generate + step) four ways,
each a fresh process, and prints seconds per iteration and the slowdown against the first:

    alone            no competitor, torch's defaults (an OpenMP thread per core)
    busy, default    one competitor (a 2-thread torch matmul loop, torch's defaults), the benchmark
                     with torch's defaults: what issue 20 saw (about 7x)
    busy, rlft       the same competitor; the benchmark with what `rlft` sets at start
                     (OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS = free cores; rlft/cli/_threads.py)
    both rlft        competitor and benchmark both with rlft's settings (two rlft jobs)

Run it on an otherwise idle machine; the load average is printed before each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPETITOR = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a.T / 1024)\n"


def _env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    if policy == "rlft":
        sys.path.insert(0, str(HERE.parent))
        from rlft.cli._threads import free_cores, other_runnable, usable_cores

        env["OMP_WAIT_POLICY"] = "PASSIVE"
        env["OMP_NUM_THREADS"] = str(free_cores(usable_cores(), other_runnable()))
    return env


def _bench(steps: int, policy: str) -> float:
    env = _env(policy)
    threads = env.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # torch's default: a thread per core
    out = subprocess.run([sys.executable, str(HERE / "ppo_bench.py"), "--steps", str(steps), "--warmup", "1",
                          "--threads", threads], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout[out.stdout.index("{"):])
    return float(result["s_per_iteration_median"]), threads


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for name, competitor, policy in (("alone", None, "default"), ("busy, default", "default", "default"),
                                     ("busy, rlft", "default", "rlft"), ("both rlft", "rlft", "rlft")):
        proc = None
        if competitor:
            proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_env(competitor))
            time.sleep(5)  # let it spin up (and show in the run queue)
        try:
            load = os.getloadavg()[0]
            seconds, threads = _bench(args.steps, policy)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
                time.sleep(2)
        rows.append((name, seconds, threads, load))
        print(f"{name:<16} {seconds:7.3f} s/iteration  threads={threads:<8} load before {load:.2f}", flush=True)
    base = rows[0][1]
    print("\nslowdown against alone: " + ", ".join(f"{n} {s / base:.2f}x" for n, s, _, _ in rows[1:]))


if __name__ == "__main__":
    main()

"""rlft against TRL, side by side, on fixed offline workloads.

    bash benchmarks/setup_peers.sh                  # once: the TRL peers' own environments
    python benchmarks/compare.py                    # every workload, 3 interleaved repeats
    python benchmarks/compare.py --workloads dpo,ppo --repeats 5 --profile --json out.json
    python benchmarks/compare.py --workloads reward_tiny_long --rlft-src /tmp/old   # rlft from another source tree
    python benchmarks/compare.py --workloads ppo --mixed-precision bf16            # both sides under bf16 autocast

Every Trainer workload (SFT padded / packed, reward, DPO) comes in four rows, so that a win
on one shape or setting is not read as a general one: ``<name>`` (gradient checkpointing off
on both sides), ``<name>_defaults`` (each library's documented defaults), and the same two on
a second data shape, ``<name>_long`` and ``<name>_long_defaults`` (pre-tokenised pairs of a
16-64 token prompt and 24-160 token answers). ``reward_tiny_long*`` is the reward workload of
issue 22: that shape on the tiny GPT-2 of ``rlft.testing.tiny``, which keeps GPT-2's dropout.

For each workload, runs rlft and its TRL peer alternately (A B A B ...), each run a fresh
subprocess in its own environment (`workloads/worker.py`), all on the same fixtures built
here once with a fixed seed (`workloads/fixtures.py`). Each run excludes its warm-up steps.
Prints per workload steps/s, tokens/s, peak memory (RSS rise on CPU, max allocated on CUDA),
MFU (model FLOPs per second over this machine's measured matmul peak) and the ratio
rlft/TRL with its spread over the repeat pairs; with ``--profile``, where the time goes.

Contention: every run records the CPU share other processes used while it was timed. A
workload with any run above `measure.CONTENDED_FOREIGN_CPU` gets no ratio (CONTENDED); its
raw numbers are still printed. Runs wait (up to ``--wait-quiet`` seconds) for a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import fixtures, measure, spec

WORKER = HERE / "workloads" / "worker.py"
VENVS = HERE / ".venvs"
#: A workload's runs whose fastest and slowest differ by more than this factor are flagged noisy.
NOISY_SPREAD = 1.25


def python_of(impl: str, peer: str) -> str:
    if impl == "rlft":
        return sys.executable
    exe = VENVS / peer / "bin" / "python"
    if not exe.exists():
        raise SystemExit(f"compare.py: the TRL peer environment {exe.parent.parent} is missing; run: bash benchmarks/setup_peers.sh")
    return str(exe)


def foreign_cpu_now(seconds: float = 1.0) -> float:
    """Share of the machine's CPU used by everything else over the next ``seconds``."""
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    b0, _ = measure.machine_busy_jiffies()
    c0 = measure.process_cpu_seconds()
    time.sleep(seconds)
    b1, _ = measure.machine_busy_jiffies()
    own = measure.process_cpu_seconds() - c0
    return max(0.0, (b1 - b0) / hz - own) / (seconds * ncpu)


def wait_quiet(max_wait: float) -> float:
    """Wait until other processes use under the contention threshold (or ``max_wait`` passes)."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = foreign_cpu_now()
        if busy <= measure.CONTENDED_FOREIGN_CPU or time.monotonic() > deadline:
            return busy


def run_worker(impl: str, workload: spec.Workload, args, fixtures_dir: str, profile: bool = False) -> dict:
    cmd = [python_of(impl, workload.peer), str(WORKER), "--impl", impl, "--workload", workload.name,
           "--fixtures", fixtures_dir, "--arch", args.arch, "--threads", str(args.threads)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if profile:
        cmd.append("--profile")
    if args.mixed_precision == "bf16":
        cmd.append("--bf16")  # both sides: Trainer workloads bf16=True, PPO workloads mixed_precision="bf16"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    if impl == "rlft" and args.rlft_src:
        env["PYTHONPATH"] = str(Path(args.rlft_src).resolve())  # ahead of the installed (editable) rlft
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    raise RuntimeError(f"{impl}/{workload.name} failed (exit {proc.returncode}):\n{tail}")


# ---------------------------------------------------------------- summary
def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(name: str, runs: dict[str, list[dict]], peak: float) -> dict:
    w = spec.WORKLOADS[name]
    out = {"workload": name, "peer": w.peer, "training": w.training, "sides": {}}
    for impl, rs in runs.items():
        if not rs:
            continue
        mem_key = "cuda_peak_mib" if "cuda_peak_mib" in rs[0] else "peak_rss_delta_mib"
        out["sides"][impl] = {
            "library": rs[0]["library"],
            "steps_per_s": _median(rs, "steps_per_s"),
            "tokens_per_s": _median(rs, "tokens_per_s"),
            "tokens_per_step": rs[0]["tokens"] / max(len(rs[0]["step_s"]), 1),
            "model_flops_per_step": rs[0]["model_flops"] / max(len(rs[0]["step_s"]), 1),
            "mfu": _median(rs, "flops_per_s") / peak,
            "peak_mem_mib": max(r[mem_key] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "foreign_cpu_max": max(r["foreign_cpu"] for r in rs),
            "spread": max(r["steps_per_s"] for r in rs) / min(r["steps_per_s"] for r in rs),
            "runs": len(rs),
        }
    a, b = runs.get("rlft", []), runs.get("trl", [])
    contended = any(r["foreign_cpu"] > measure.CONTENDED_FOREIGN_CPU for r in a + b)
    out["contended"] = contended
    if a and b:
        pairs = [x["steps_per_s"] / y["steps_per_s"] for x, y in zip(a, b)]
        out["speed_ratio"] = None if contended else statistics.median(pairs)
        out["speed_ratio_raw"] = statistics.median(pairs)
        out["speed_ratio_range"] = [min(pairs), max(pairs)]
        out["memory_ratio"] = out["sides"]["rlft"]["peak_mem_mib"] / out["sides"]["trl"]["peak_mem_mib"]
        out["token_mismatch"] = abs(out["sides"]["rlft"]["tokens_per_step"] / out["sides"]["trl"]["tokens_per_step"] - 1)
        out["noisy"] = any(s["spread"] > NOISY_SPREAD for s in out["sides"].values())
    return out


def format_table(rows: list[dict], device: str) -> str:
    mem = "peak CUDA MiB" if device == "cuda" else "peak RSS rise MiB"
    head = f"| workload | peer | steps/s rlft | steps/s TRL | tokens/s rlft | tokens/s TRL | rlft/TRL speed (range) | {mem} rlft / TRL | MFU rlft / TRL |"
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        a, b = row["sides"].get("rlft"), row["sides"].get("trl")
        if not (a and b):
            continue
        if row["speed_ratio"] is None:
            ratio = f"CONTENDED (raw {row['speed_ratio_raw']:.2f}x, foreign CPU up to {max(a['foreign_cpu_max'], b['foreign_cpu_max']):.0%})"
        else:
            lo, hi = row["speed_ratio_range"]
            ratio = f"**{row['speed_ratio']:.2f}x** ({lo:.2f}-{hi:.2f}){' noisy' if row['noisy'] else ''}"
        lines.append(
            f"| {row['workload']} | {b['library']} | {a['steps_per_s']:.3g} | {b['steps_per_s']:.3g} | {a['tokens_per_s']:.0f} | "
            f"{b['tokens_per_s']:.0f} | {ratio} | {a['peak_mem_mib']:.0f} / {b['peak_mem_mib']:.0f} | {a['mfu']:.1%} / {b['mfu']:.1%} |"
        )
    return "\n".join(lines)


def _kernel_peaks(peak: dict) -> str:
    return ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak.get("kernel_peaks", {}).items()) or "one kernel"


def format_mfu_by_kernel(rows: list[dict], peak: dict) -> str:
    """MFU against each kernel's own peak, when the table's peak (the best kernel's) is not the only one:
    against torch matmul's (MKL's) peak, the yardstick of the tables printed before oneDNN joined it."""
    others = {k: v for k, v in peak.get("kernel_peaks", {}).items() if v < peak["peak_flops"]}
    lines = []
    for kernel, kernel_peak in others.items():
        scale = peak["peak_flops"] / kernel_peak
        cells = [f"{row['workload']} {row['sides']['rlft']['mfu'] * scale:.1%} / {row['sides']['trl']['mfu'] * scale:.1%}"
                 for row in rows if "rlft" in row["sides"] and "trl" in row["sides"]]
        lines.append(f"\nMFU rlft / TRL against the {kernel} kernel's peak alone ({kernel_peak / 1e9:.1f} GFLOP/s): "
                     + "; ".join(cells))
    return "".join(lines)


def format_profiles(profiles: dict) -> str:
    lines = []
    for name, sides in profiles.items():
        lines.append(f"\n{name}: share of timed wall time (profiled run)")
        for impl, prof in sides.items():
            cats = ", ".join(f"{k} {v:.0%}" for k, v in prof["categories"].items() if v >= 0.01)
            lines.append(f"  {impl:>4}: {cats}")
            lines.append("        top ops: " + ", ".join(f"{k} {v:.0%}" for k, v in prof["top_ops"][:5]))
    return "\n".join(lines)


def machine_description(threads: int, device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    desc = f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {threads} torch threads"
    if device == "cuda":
        import torch

        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(spec.WORKLOADS), help="comma-separated, of: " + ", ".join(spec.WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, equal for both sides")
    parser.add_argument("--arch", default="gpt2", choices=fixtures.ARCHS)
    parser.add_argument("--steps", type=int, default=None, help="override every workload's timed steps")
    parser.add_argument("--profile", action="store_true", help="one more profiled run per side: where the time goes")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                        help="bf16: both sides under bf16 autocast (Trainer workloads: bf16=True; PPO workloads: "
                             "mixed_precision='bf16', TRL's through accelerator_kwargs); weights stay fp32")
    parser.add_argument("--wait-quiet", type=float, default=120.0, help="seconds to wait for a quiet machine before each run")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--fixtures", default=None, help="fixture folder (default: a fresh temporary one)")
    parser.add_argument("--json", default=None, help="write all measurements here")
    parser.add_argument("--rlft-src", default=None, metavar="DIR",
                        help="run rlft's side from the package in DIR (DIR/rlft, e.g. `git archive COMMIT rlft | tar -x -C DIR`): "
                             "before/after measurements in one run")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in spec.WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(spec.WORKLOADS)}")

    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    tmp = None
    if args.fixtures is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlft-bench-")
        args.fixtures = tmp.name
    fixtures.build_all(args.fixtures)

    wait_quiet(args.wait_quiet)
    region = measure.Region().start()
    peak = measure.matmul_peak_flops(device)
    peak_region = region.stop()
    print(f"machine: {machine_description(args.threads, device)}")
    if args.rlft_src:
        print(f"rlft side: the package in {Path(args.rlft_src).resolve()}")
    print(f"matmul peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s {peak['dtype']} at {peak['peak_shape']} "
          f"(per kernel: {_kernel_peaks(peak)}; other processes' CPU during the measurement: "
          f"{peak_region['foreign_cpu']:.0%})", flush=True)

    results = {"command": command, "machine": machine_description(args.threads, device), "device": device,
               "matmul_peak": peak, "loadavg_start": os.getloadavg(), "runs": {}, "summary": [], "profiles": {}}
    for name in names:
        w = spec.WORKLOADS[name]
        if w.model == "smollm2" and fixtures.smollm2_dir() is None:
            print(f"  {name:>11}: skipped, the real SmolLM2-135M checkpoint is not there (run `./run demo` once to make it)")
            continue
        runs = {"rlft": [], "trl": []}
        for r in range(args.repeats):
            for impl in ("rlft", "trl"):
                busy = wait_quiet(args.wait_quiet)
                res = run_worker(impl, w, args, args.fixtures)
                res["foreign_cpu_before"] = busy
                runs[impl].append(res)
                source = f" ({res['library']})" if impl == "rlft" and args.rlft_src else ""
                print(f"  {name:>11} {impl:>4} run {r + 1}: {res['steps_per_s']:.3f} steps/s, {res['tokens_per_s']:.0f} tok/s, "
                      f"peak RSS rise {res['peak_rss_delta_mib']:.0f} MiB, other CPU {res['foreign_cpu']:.0%}{source}", flush=True)
        results["runs"][name] = runs
        summary = summarise(name, runs, peak["peak_flops"])
        results["summary"].append(summary)
        if args.profile:
            results["profiles"][name] = {}
            for impl in ("rlft", "trl"):
                wait_quiet(args.wait_quiet)
                results["profiles"][name][impl] = run_worker(impl, w, args, args.fixtures, profile=True)["profile"]
    results["loadavg_end"] = os.getloadavg()

    print(f"\n{command}\nmachine: {results['machine']}; matmul peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['dtype']})\n")
    print(format_table(results["summary"], device))
    print(format_mfu_by_kernel(results["summary"], peak))
    if any(s["contended"] for s in results["summary"]):
        print(f"\nCONTENDED: other processes used more than {measure.CONTENDED_FOREIGN_CPU:.0%} of the CPU during some runs; "
              "no ratio is reported for those workloads. Rerun on a quiet machine.")
    if results["profiles"]:
        print(format_profiles(results["profiles"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    main()

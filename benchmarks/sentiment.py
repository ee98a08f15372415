"""The sentiment task as a benchmark: does PPO move a real model's held-out sentiment?

Same pipeline as `rlft demo` (rlft/demo/pipeline.py), same flags (every DemoConfig field), but
the policy is trained against VADER by default (``--reward learned`` uses the MiniLM reward
model) and the run ends with one table: held-out judge scores before / after with 95% intervals,
the KL to the reference, steps done and the PPO time per phase (generate, score, forward: rollout
and epoch forwards, backward: backward passes and optimizer steps, other; see
`rlft.demo.train.train_ppo`). Not a timed test: run it on an idle machine, e.g.

    .venv/bin/python benchmarks/sentiment.py --output_dir runs/sentiment-vader --overwrite
    .venv/bin/python benchmarks/sentiment.py --reward learned --output_dir runs/sentiment-learned --overwrite
    .venv/bin/python benchmarks/sentiment.py --advantage_estimator rloo --num_generations 4 --output_dir runs/sentiment-rloo
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time


def main(argv=None) -> dict:
    from transformers import HfArgumentParser

    from rlft.demo import DemoConfig, run_demo

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--reward" or a.startswith("--reward=") for a in argv):
        argv += ["--reward", "vader"]
    (config,) = HfArgumentParser(DemoConfig).parse_args_into_dataclasses(argv)
    if config.output_dir is None:
        config = dataclasses.replace(config, output_dir=time.strftime(f"runs/sentiment-{config.reward}-%Y%m%d-%H%M%S"))
    load_before = os.getloadavg()
    summary = run_demo(config)
    load_after = os.getloadavg()
    print_table(summary, load_before, load_after)
    return summary


def print_table(summary: dict, load_before=None, load_after=None) -> None:
    b, a = summary["before"], summary["after"]
    judges = [k[:-5] for k in b if k.endswith("_mean") and k != "kl_mean"]
    trained_on = "VADER" if summary["reward"] == "vader" else "the learned MiniLM reward"
    print()
    print(f"sentiment benchmark: policy trained against {trained_on} with {summary.get('advantage_estimator', 'gae')}; "
          f"{summary['heldout_prompts']} held-out prompts"
          + (" (SMOKE TEST: tiny model)" if summary["smoke_test"] else ""))
    gain_ci = summary.get("gain_ci95", {})
    print(f"{'judge':<16}{'before':>18}{'after':>18}{'gain (paired by prompt)':>26}")
    for name in judges + ["kl"]:
        print(f"{name:<16}{b[name + '_mean']:>+10.3f} ± {b[name + '_ci95']:.3f}{a[name + '_mean']:>+10.3f} ± {a[name + '_ci95']:.3f}"
              f"{a[name + '_mean'] - b[name + '_mean']:>+18.3f} ± {gain_ci.get(name, float('nan')):.3f}")
    bon = summary["best_of_n"]
    print("best-of-n      " + "  ".join(f"{k[:-5]} {v:+.3f}" for k, v in bon.items() if k.endswith("_mean")))
    sec = summary["seconds"]
    print(f"PPO steps: {summary['ppo_steps']}; total {sec['total'] / 60:.1f} min; "
          + ", ".join(f"{k} {v:.0f}s" for k, v in sec.items() if k != "total"))
    print("PPO time per phase: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["ppo_phase_seconds"].items()))
    if load_before is not None:
        print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

"""Collect `benchmarks/sentiment.py` runs into one table (per run and per setting over seeds) and curves.

Each run directory is named ``<prefix>-<label>-s<seed>`` (e.g. ``runs/sentiment-rloo-s1``) and holds the
run's ``summary.json``, ``config.yaml`` and ``metrics.jsonl``. Usage:

    python benchmarks/sentiment_runs.py runs/sentiment-*-s* --plot docs/images/critic_free_curves.png

Prints a markdown table: steps in the budget, held-out gains (after - before, paired by prompt, with
the 95% interval), the KL to the reference after training, and the PPO time per phase; then the mean
and range over seeds per setting, and which settings meet the bar (KL <= --max_kl on every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

JUDGES = ("vader", "textblob", "learned_reward")


def load_run(path: Path) -> dict | None:
    summary = path / "summary.json"
    if not summary.is_file():
        return None
    m = re.match(r"(?:.*?-)?(?P<label>[^/]+?)-s(?P<seed>\d+)$", path.name)
    if m is None:
        return None
    label = m["label"]
    data = json.loads(summary.read_text())
    curve = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        elapsed = 0.0
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            elapsed += row.get("seconds", 0.0)
            curve.append((elapsed, row.get("reward_mean", math.nan), row.get("kl", math.nan)))
    return {"path": path, "label": label, "seed": int(m["seed"]), "summary": data, "curve": curve}


def run_row(run: dict) -> str:
    s = run["summary"]
    gain, ci = s["gain"], s["gain_ci95"]
    phases = s["ppo_phase_seconds"]
    cells = [run["label"], str(run["seed"]), str(s["ppo_steps"])]
    cells += [f"{gain[j]:+.3f} ± {ci[j]:.3f}" for j in JUDGES]
    cells.append(f"{s['after']['kl_mean']:.1f} ± {s['after']['kl_ci95']:.1f}")
    cells.append(" / ".join(f"{phases.get(k, 0):.0f}" for k in ("generate", "forward", "backward")))
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--max_kl", type=float, default=5.0, help="the KL bar (nats) every seed must meet")
    parser.add_argument("--plot", default=None, help="write reward and KL curves against PPO wall-clock to this PNG")
    args = parser.parse_args(argv)

    runs = [r for r in (load_run(Path(p)) for p in args.runs) if r is not None]
    if not runs:
        print("no finished runs (a run directory needs summary.json)", file=sys.stderr)
        return 1
    runs.sort(key=lambda r: (r["label"], r["seed"]))
    print("| setting | seed | steps | VADER gain | TextBlob gain | learned reward gain | KL after | generate / forward / backward s |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(run_row(run))

    by_label = defaultdict(list)
    for run in runs:
        by_label[run["label"]].append(run)
    bon_by_seed = {}  # best-of-n depends only on the seed (same prompts, same reference policy)
    for run in runs:
        s = run["summary"]
        bon_by_seed[run["seed"]] = {j: s["best_of_n"][j + "_mean"] - s["before"][j + "_mean"] for j in JUDGES}
    bon = {j: [b[j] for b in bon_by_seed.values()] for j in JUDGES}
    print()
    print("| setting | seeds | steps | VADER gain mean (range) | TextBlob gain mean (range) | learned gain mean (range) | KL max | KL <= %g on every seed |" % args.max_kl)
    print("|---|---|---|---|---|---|---|---|")
    for label, group in sorted(by_label.items()):
        cells = [label, ",".join(str(r["seed"]) for r in group), "/".join(str(r["summary"]["ppo_steps"]) for r in group)]
        for j in JUDGES:
            vals = [r["summary"]["gain"][j] for r in group]
            cells.append(f"{sum(vals) / len(vals):+.3f} ({min(vals):+.3f}..{max(vals):+.3f})")
        kls = [r["summary"]["after"]["kl_mean"] for r in group]
        cells += [f"{max(kls):.1f}", "yes" if max(kls) <= args.max_kl else "no"]
        print("| " + " | ".join(cells) + " |")
    print(f"| best-of-4 (same prompts) | {','.join(str(k) for k in sorted(bon_by_seed))} | - | "
          + " | ".join(f"{sum(v) / len(v):+.3f} ({min(v):+.3f}..{max(v):+.3f})" for v in (bon[j] for j in JUDGES)) + " | - | - |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(11, 4))
        colors = {}
        for run in runs:
            if not run["curve"]:
                continue
            color = colors.setdefault(run["label"], f"C{len(colors)}")
            t, reward, kl = zip(*run["curve"])
            style = "-" if run["seed"] == 0 else "--"
            ax_r.plot([x / 60 for x in t], reward, style, color=color, label=f"{run['label']} s{run['seed']}")
            if any(k != 0 for k in kl):  # a run with no KL term forwards no reference: its batch KL reads 0, unmeasured
                ax_k.plot([x / 60 for x in t], kl, style, color=color)
        ax_r.set_xlabel("PPO minutes")
        ax_r.set_ylabel("training reward (batch mean)")
        ax_k.set_xlabel("PPO minutes")
        ax_k.set_ylabel("KL to reference (nats, batch mean)")
        ax_k.axhline(args.max_kl, color="grey", lw=0.8)
        ax_r.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\ncurves: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

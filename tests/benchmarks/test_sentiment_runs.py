"""benchmarks/sentiment_runs.py: per-run rows, per-setting means over seeds, the KL bar, best-of-n once per seed."""

from __future__ import annotations

import json
from pathlib import Path

from .._scripts import load_script


def _load():
    return load_script("benchmarks/sentiment_runs.py", "sentiment_runs")


def _run(root: Path, name: str, vader_after: float, kl: float, bon_vader: float, steps: int) -> str:
    d = root / name
    d.mkdir()
    judges = ("vader", "textblob", "learned_reward")
    before = {f"{j}_mean": 0.1 for j in judges} | {f"{j}_ci95": 0.05 for j in judges} | {"kl_mean": 0.0, "kl_ci95": 0.0}
    after = {f"{j}_mean": vader_after for j in judges} | {f"{j}_ci95": 0.05 for j in judges} | {"kl_mean": kl, "kl_ci95": 0.5}
    summary = {
        "before": before, "after": after,
        "gain": {j: vader_after - 0.1 for j in judges} | {"kl": kl}, "gain_ci95": {j: 0.04 for j in judges} | {"kl": 0.5},
        "best_of_n": {f"{j}_mean": bon_vader for j in judges},
        "ppo_steps": steps, "ppo_phase_seconds": {"generate": 100.0, "forward": 200.0, "backward": 150.0},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "reward_mean": 0.1 * i, "kl": kl * i / 3, "seconds": 10.0}) for i in (1, 2, 3)))
    return str(d)


def test_setting_means_and_kl_bar(tmp_path, capsys):
    paths = [
        _run(tmp_path, "sentiment-rloo-kl02-s0", 0.5, 4.0, 0.4, 37),
        _run(tmp_path, "sentiment-rloo-kl02-s1", 0.7, 5.5, 0.6, 36),
        _run(tmp_path, "sentiment-gae-s0", 0.3, 3.0, 0.4, 33),
        _run(tmp_path, "sentiment-gae-s1", 0.2, 2.0, 0.6, 34),
        _run(tmp_path, "sentiment-grpo-s0", 0.9, 9.0, 0.4, 36),  # seed 0 three times, seed 1 twice
    ]
    assert _load().main(paths) == 0
    out = capsys.readouterr().out
    rloo = next(line for line in out.splitlines() if line.startswith("| rloo-kl02 | 0,1"))
    assert "+0.500 (+0.400..+0.600)" in rloo  # mean and range of the VADER gains 0.4 and 0.6
    assert "| 5.5 | no |" in rloo  # seed 1 is over the bar
    gae = next(line for line in out.splitlines() if line.startswith("| gae | 0,1"))
    assert "| 3.0 | yes |" in gae
    bon = next(line for line in out.splitlines() if line.startswith("| best-of-4"))
    assert "+0.400 (+0.300..+0.500)" in bon  # once per seed: 0.4 - 0.1 and 0.6 - 0.1, not four entries
    assert "| rloo-kl02 | 1 | 36 |" in out


def test_no_finished_runs(tmp_path, capsys):
    (tmp_path / "sentiment-x-s0").mkdir()
    assert _load().main([str(tmp_path / "sentiment-x-s0")]) == 1

"""benchmarks/sentiment.py prints the judges before / after with the paired gain interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _load():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sentiment.py"
    spec = importlib.util.spec_from_file_location("sentiment_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_shows_paired_gain(capsys):
    summary = {
        "reward": "vader", "heldout_prompts": 64, "smoke_test": False,
        "before": {"vader_mean": 0.118, "vader_ci95": 0.093, "kl_mean": 0.0, "kl_ci95": 0.0},
        "after": {"vader_mean": 0.449, "vader_ci95": 0.086, "kl_mean": 4.245, "kl_ci95": 0.483},
        "gain_ci95": {"vader": 0.071, "kl": 0.483},
        "best_of_n": {"vader_mean": 0.522, "vader_ci95": 0.085},
        "ppo_steps": 30, "seconds": {"ppo": 523.0, "total": 695.0},
        "ppo_phase_seconds": {"generate": 130.0, "forward": 118.0, "backward": 275.0},
    }
    _load().print_table(summary, (0.4, 0.4, 0.4), (2.0, 2.0, 2.0))
    out = capsys.readouterr().out
    vader = next(line for line in out.splitlines() if line.startswith("vader"))
    assert "+0.331 ± 0.071" in vader  # 0.449 - 0.118, with the paired interval
    assert "trained against VADER" in out and "PPO steps: 30" in out

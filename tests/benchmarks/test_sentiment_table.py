"""benchmarks/sentiment.py prints the judges before / after with the paired gain interval."""

from __future__ import annotations

from .._scripts import load_script


def _load():
    return load_script("benchmarks/sentiment.py", "sentiment_bench")


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

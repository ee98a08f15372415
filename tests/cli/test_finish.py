"""What every command does at the end: plots only for metrics that were logged, the --resume hint after Ctrl-C."""

from __future__ import annotations

import pytest

from rlft.cli import _print_summary
from rlft.cli._run import Finish, finish_run
from rlft.cli.dpo import PLOTS as DPO_PLOTS
from rlft.reporting import RunDir


def test_a_plot_without_any_of_its_metrics_is_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    run = RunDir(tmp_path / "run")
    for step in (1, 2):
        run.log_metrics(step, {"loss": 1.0 / step, "rewards/margins": 0.1 * step, "rewards/accuracies": 0.5})
    written = finish_run(run, Finish(command="dpo", title="t", summary="s", plots=DPO_PLOTS))
    assert [p.split("/")[-1] for p in written["plots"]] == ["dpo_loss_margins.png"]  # no blank dpo_eval.png
    assert not (run.plots_dir / "dpo_eval.png").exists()


@pytest.mark.parametrize("command", ["sft", "ppo", "dpo"])
def test_interrupted_run_prints_the_resume_hint(command, capsys):
    _print_summary(command, {"run_dir": "runs/x", "interrupted": True})
    assert f"Continue with: rlft {command} --output_dir runs/x --resume" in capsys.readouterr().out
    _print_summary(command, {"run_dir": "runs/x", "interrupted": False})
    assert "--resume" not in capsys.readouterr().out

"""Command-line mistakes a new user makes: each is a short error with the fix, no traceback,
a non-zero exit status, and no run directory left behind (the table of issue 20, section 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.cli._args import merged_config, parse_command
from rlft.reporting import RunDir


def _fake_run(path: Path, command: str, argv: list[str]) -> Path:
    """A run directory as rlft writes it before training starts (config.yaml with its header, nothing else)."""
    import importlib

    from rlft.cli import COMMANDS

    module = importlib.import_module(COMMANDS[command].module)
    defaults = module.CLI_DEFAULTS() if callable(module.CLI_DEFAULTS) else module.CLI_DEFAULTS
    parsed = parse_command(command, module.arguments(), [*argv, "--output_dir", str(path)],
                           cli_defaults=defaults, tiny_preset=module.TINY_PRESET)
    RunDir(path).save_config(merged_config(*parsed), header=f"rlft {command} (rlft test), now")
    return path


@pytest.fixture
def cases(tmp_path, model_path):
    """input name -> (argv, a piece of the expected error)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    ppo_run = _fake_run(tmp_path / "ppo-run", "ppo", ["--tiny"])
    (ppo_run / "model").mkdir()
    killed = _fake_run(tmp_path / "killed", "sft", ["--tiny"])  # SIGKILLed before its first checkpoint
    out = str(tmp_path / "out")
    return {
        "run dir as model": (["sft", "--tiny", "--model_name_or_path", str(ppo_run), "--output_dir", out],
                             "this is an rlft run directory; its trained model is"),
        "empty folder as model": (["ppo", "--tiny", "--model_name_or_path", str(empty), "--output_dir", out],
                                  "the folder is empty"),
        "negative lr with =": (["sft", "--tiny", "--learning_rate=-1e-3", "--output_dir", out], "--learning_rate -0.001: must be >= 0"),
        "negative lr": (["ppo", "--tiny", "--learning_rate", "-1e-3", "--output_dir", out], "--learning_rate -0.001: must be >= 0"),
        "batch size 0 sft": (["sft", "--tiny", "--per_device_train_batch_size", "0", "--output_dir", out],
                             "--per_device_train_batch_size 0: must be a positive integer"),
        "batch size 0 dpo": (["dpo", "--tiny", "--per_device_train_batch_size", "0", "--output_dir", out],
                             "--per_device_train_batch_size 0: must be a positive integer"),
        "demo steps": (["demo", "--tiny", "--max_ppo_steps", "-3"], "--max_ppo_steps -3: must be a positive integer"),
        "typo": (["sft", "--tiny", "--learning_rat", "1e-3", "--output_dir", out], "did you mean --learning_rate?"),
        "internal field": (["ppo", "--tiny", "--is_peft_model", "true", "--output_dir", out], "computed by rlft, not an option"),
        "reward_model": (["ppo", "--tiny", "--reward_model", model_path("gpt2"), "--output_dir", out], "use --reward instead"),
        "resume another command's run": (["sft", "--resume", "--output_dir", str(ppo_run)],
                                         f"is a run directory of rlft ppo, not rlft sft. Continue it with: rlft ppo --output_dir {ppo_run} --resume"),
        "causal LM as reward": (["ppo", "--tiny", "--reward", model_path("gpt2"), "--output_dir", out],
                                "this is not a trained reward model: its weights score.weight are not in the folder"),
        "resume before first checkpoint": (["sft", "--resume", "--output_dir", str(killed)],
                                           "no complete checkpoint yet (the run stopped before its first save)"),
    }


CASES = ["run dir as model", "empty folder as model", "negative lr with =", "negative lr", "batch size 0 sft", "batch size 0 dpo",
         "demo steps", "typo", "internal field", "reward_model", "resume another command's run", "causal LM as reward",
         "resume before first checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_cli_error_is_short_and_leaves_no_run_dir(case, cases, tmp_path, capsys):
    argv, expected = cases[case]
    before = {p.name for p in tmp_path.iterdir()}
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert err.startswith(f"rlft {argv[0]}: error: ")
    assert {p.name for p in tmp_path.iterdir()} == before  # no half-written run dir (out/ never appears)


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["sft", "--tiny", "--learning_rate", "-1e-3"], "--learning_rate -0.001: must be >= 0"),
    (["ppo", "--tiny", "--learning_rat", "1e-3"], "did you mean --learning_rate?"),
])
def test_cli_error_as_a_real_process(argv, expected, tmp_path):
    """The same through the console entry point: stderr is the error line and nothing else; no runs/ folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "rlft.cli", *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"rlft {argv[0]}: error: " + out.stderr.split(": error: ", 1)[1].strip()]
    assert expected in out.stderr and "Traceback" not in out.stderr and "usage:" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_failure_after_the_run_dir_was_created_removes_it(tmp_path, capsys, monkeypatch):
    """The safety net: an unexpected error before the first checkpoint leaves no run dir (and no traceback)."""
    import rlft.cli.sft as sft

    def broken(*args, **kwargs):
        from rlft.cli._run import open_run

        open_run(str(tmp_path / "out"), args[0], "sft", {"a": 1})
        raise ValueError("something deep inside broke")

    monkeypatch.setattr(sft, "run", broken)
    assert main(["sft", "--tiny", "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "ValueError: something deep inside broke" in err and "Traceback" not in err and "RLFT_TRACEBACK=1" in err
    assert not (tmp_path / "out").exists()
    def broken_later(*args, **kwargs):  # failing after training logged a step: the run is kept for inspection
        from rlft.cli._run import open_run

        open_run(str(tmp_path / "out"), args[0], "sft", {"a": 1}).log_metrics(1, {"loss": 1.0})
        raise ValueError("broke at step 2")

    monkeypatch.setattr(sft, "run", broken_later)
    assert main(["sft", "--tiny", "--output_dir", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "metrics.jsonl").is_file()
    monkeypatch.setattr(sft, "run", broken)
    monkeypatch.setenv("RLFT_TRACEBACK", "1")
    import shutil

    shutil.rmtree(tmp_path / "out")
    with pytest.raises(ValueError, match="deep inside"):
        main(["sft", "--tiny", "--output_dir", str(tmp_path / "out")])

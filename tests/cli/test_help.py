"""`rlft <command> --help`: common options first, the command-line defaults shown, and a cached text
that a second call prints without importing transformers (so it takes well under a second)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import sys; from rlft.cli import main; code = main([sys.argv[1], '--help']); print('TRANSFORMERS', 'transformers' in sys.modules, code)"


@pytest.mark.parametrize("command", ["ppo", "sft"])
def test_help_is_cached_and_lists_common_options_first(command, tmp_path):
    env = dict(os.environ, RLFT_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    first = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.replace("True", "False") == second.stdout.replace("True", "False")  # the same text
    assert "TRANSFORMERS False 0" in second.stdout  # the cached help needs no transformers import
    text = second.stdout
    assert text.startswith(f"usage: rlft {command} [--config FILE]") and len(text.split("\n\n")[0].splitlines()) == 1
    common = text.split("common options (all options below):", 1)[1]
    first_group = common.split("\n\n", 1)[0]
    for option in ("--model_name_or_path", "--dataset", "--output_dir", "--tiny", "--resume", "--learning_rate", "--use_peft"):
        assert option in first_group, option
    if command == "ppo":
        assert "--steps STEPS" in first_group and "(default: 100)" in first_group.split("--steps STEPS", 1)[1].split("--", 1)[0]
    assert len(list((tmp_path / "help").glob(f"{command}-*.txt"))) == 1

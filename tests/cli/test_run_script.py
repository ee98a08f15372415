"""The ./run entry point: `./run rlft ...` reaches the command line, and the editable install it makes
(a path entry) keeps working from the folder that holds the clone (issue 20, section 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_usage_lists_rlft():
    out = subprocess.run(["bash", str(REPO / "run"), "nonsense"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "rlft" in out.stderr.split("usage:")[1]


def test_run_rlft_reaches_the_command_line():
    venv = Path(os.environ.get("RLFT_VENV", REPO / ".venv"))
    if not list(venv.glob(".rlft-installed-*")):
        pytest.skip("./run setup has not run in this checkout (it would install packages)")
    out = subprocess.run(["bash", str(REPO / "run"), "rlft", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("rlft "), out.stderr


def test_a_clone_named_rlft_in_the_working_folder_does_not_shadow_a_path_install(tmp_path):
    """With the package on sys.path as a path entry (what `./run setup` installs), a folder named rlft
    without __init__.py in the current folder is only a namespace portion and the real package wins."""
    (tmp_path / "rlft").symlink_to(REPO)  # the clone, as `git clone ... rlft` leaves it
    script = tmp_path / "train.py"
    script.write_text("from rlft import PPOConfig\nimport rlft\nprint(rlft.__file__)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (REPO / "rlft" / "__init__.py").resolve()
    assert "editable_mode=compat" in (REPO / "run").read_text()

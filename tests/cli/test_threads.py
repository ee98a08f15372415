"""Thread settings at `rlft` start: a graceful default on a shared machine (issue 20), applied
before torch loads, never overriding what the user set."""

from __future__ import annotations

import os
import subprocess
import sys

from rlft.cli._threads import configure_threads, free_cores

PROBE = ("import os, sys; from rlft.cli import _threads; _threads.configure_threads(load=float(sys.argv[1])); import torch; "
         "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), os.environ.get('RLFT_THREADS_SET'))")


def _probe(load: float, **env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "RLFT_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(load)], env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_free_cores():
    assert free_cores(2, 0.0) == 2
    assert free_cores(2, 1.0) == 1  # one competing job on two cores: take one
    assert free_cores(2, 5.0) == 1  # never zero
    assert free_cores(16, 3.4) == 13


def test_threads_follow_the_free_cores_in_a_fresh_process():
    cores = len(os.sched_getaffinity(0))
    assert _probe(0.0) == [str(cores), "PASSIVE", "OMP_WAIT_POLICY,OMP_NUM_THREADS"]
    assert _probe(float(cores)) == ["1", "PASSIVE", "OMP_WAIT_POLICY,OMP_NUM_THREADS"]


def test_user_settings_win():
    assert _probe(0.0, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == ["1", "ACTIVE", "None"]
    threads, policy, chosen = _probe(5.0, RLFT_THREADS="keep")
    assert policy == "None" and chosen == "None"


def test_nothing_changes_once_torch_is_loaded():
    import torch  # noqa: F401 - loaded in this process already

    env = {}
    assert configure_threads(env, load=0.0)["set"] == [] and env == {}

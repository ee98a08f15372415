"""CPU threads for the command line on a shared machine.

torch sizes its OpenMP pool to every core, and GNU OpenMP's idle threads spin (busy-wait)
before they sleep. Two such jobs on the same cores take turns spinning against each other:
issue 20 saw a PPO step go from 17 s to about 120 s with one competing job on 2 cores. At
``rlft`` start, before torch is imported (the OpenMP runtime reads its environment only once,
when it loads), and only where the user set nothing:

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning;
- ``OMP_NUM_THREADS``: the cores this process may use (``os.sched_getaffinity``) minus the ones
  other processes keep busy (the 1-minute load average), at least 1.

Setting either variable yourself (or ``RLFT_THREADS=keep``) leaves that choice alone.
"""

from __future__ import annotations

import os
import sys

#: Set to "keep" to leave thread settings exactly as the environment has them.
THREADS_ENV = "RLFT_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), or os.cpu_count() where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(cores: int, load: float) -> int:
    """Cores left to us: ``cores`` minus the whole cores that the other runnable processes (``load``) occupy, at least 1."""
    return max(1, min(cores, cores - int(load + 0.5)))


def other_runnable(samples: int = 3, interval_s: float = 0.05) -> float:
    """How many other processes are running right now: /proc/loadavg's runnable count minus this one
    (median of a few samples); the 1-minute load average where /proc is missing."""
    import statistics
    import time

    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            try:
                return os.getloadavg()[0]
            except (AttributeError, OSError):
                return 0.0
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


#: Names of the variables rlft set (comma list), so later log lines can say who chose them.
CHOSEN_ENV = "RLFT_THREADS_SET"


def configure_threads(environ=os.environ, load: float | None = None) -> dict:
    """Set OMP_WAIT_POLICY and OMP_NUM_THREADS in ``environ`` where unset (see the module docstring).

    ``load``: the other processes' demand in cores (default: `other_runnable`). Returns the values
    now in force and which ones were set here ("set"). Must run before torch is imported to have
    an effect; once torch is loaded it changes nothing.
    """
    chosen: list[str] = []
    if environ.get(THREADS_ENV) != "keep" and "torch" not in sys.modules:
        if "OMP_WAIT_POLICY" not in environ:
            environ["OMP_WAIT_POLICY"] = "PASSIVE"
            chosen.append("OMP_WAIT_POLICY")
        if "OMP_NUM_THREADS" not in environ:
            environ["OMP_NUM_THREADS"] = str(free_cores(usable_cores(), other_runnable() if load is None else load))
            chosen.append("OMP_NUM_THREADS")
        if chosen:
            environ[CHOSEN_ENV] = ",".join(chosen)
    return {"OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS"), "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY"), "set": chosen}


def describe(environ=os.environ) -> str:
    """One line for logs: the thread count and wait policy in force, and which of them rlft chose."""
    chosen = environ.get(CHOSEN_ENV) or "none"
    return (f"CPU threads: {environ.get('OMP_NUM_THREADS') or 'torch default'} of {usable_cores()} cores, "
            f"OMP_WAIT_POLICY={environ.get('OMP_WAIT_POLICY') or 'default'} (chosen by rlft: {chosen}; "
            f"set them yourself, or {THREADS_ENV}=keep, to choose)")

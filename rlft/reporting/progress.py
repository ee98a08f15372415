"""A progress bar with the numbers a person watches during training, and a clean Ctrl-C.

`TrainingProgress` is a tqdm bar whose postfix shows chosen live metrics (reward
mean, KL, loss, ...) and tokens per second; tqdm's own ``<remaining`` field is the
time left. `graceful_interrupt` turns the first Ctrl-C into a request to stop at
the next safe point (after saving), and the second into a KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

#: How often (seconds) the bar redraws when the output is not a terminal (log files, CI).
NON_TTY_REFRESH_S = 5.0
#: Weight of the newest interval in the smoothed tokens/s (an exponential moving average).
TOKENS_PER_S_EMA = 0.3


def _short_label(key: str, keys: Sequence[str]) -> str:
    """The last part of ``key`` ("objective/kl" -> "kl") unless another key ends the same way."""
    tail = key.rsplit("/", 1)[-1]
    clash = sum(1 for k in keys if k.rsplit("/", 1)[-1] == tail) > 1
    return key if clash else tail


def _fmt(value: Any) -> str:
    try:
        value = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"


class TrainingProgress:
    """A progress bar for a training loop: ``with TrainingProgress(total, desc, keys) as bar: bar.update(...)``.

    Args:
        total: the number of units (steps, epochs, queries) the loop will do.
        desc: the text before the bar.
        keys: the metric names shown after the bar, from those passed to `update` (the
            latest value of each; a name not passed yet is left out), labelled by their last
            part ("objective/kl" -> "kl"); or a dict {label: metric name}.
        unit: the name of one unit, shown in the rate.
        initial: units already done (a resumed run).
        disable: no bar at all (None: disabled only when the environment variable
            ``RLFT_PROGRESS`` is "0"). Off a terminal the bar redraws every few seconds.
        file: where the bar is drawn (default: stderr).

    Attributes: ``n`` (units done), ``last`` (the latest value of every metric passed),
    ``tokens_per_second`` (smoothed; None before the first tokens) and ``seconds_left``.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "training",
        keys: Sequence[str] | dict[str, str] = (),
        unit: str = "step",
        initial: int = 0,
        disable: bool | None = None,
        file=None,
    ):
        self.total = total
        self.desc = desc
        labels = dict(keys) if isinstance(keys, dict) else {_short_label(k, keys): k for k in keys}
        self.labels = {label: key for label, key in labels.items()}
        self.keys = tuple(labels.values())
        self.unit = unit
        self.initial = int(initial)
        self.n = int(initial)
        self.last: dict[str, Any] = {}
        self.tokens_per_second: float | None = None
        self._file = file if file is not None else sys.stderr
        self._disable = disable
        self._bar = None
        self._start = None
        self._last_time = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "TrainingProgress":
        import os

        from tqdm.auto import tqdm

        disable = self._disable
        if disable is None:
            disable = os.environ.get("RLFT_PROGRESS", "1") == "0"
        is_tty = bool(getattr(self._file, "isatty", lambda: False)())
        self._bar = tqdm(
            total=self.total, desc=self.desc, unit=self.unit, initial=self.initial, disable=disable, file=self._file,
            dynamic_ncols=True, mininterval=0.1 if is_tty else NON_TTY_REFRESH_S, smoothing=0.1,
        )
        self._start = self._last_time = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ updates
    def update(self, n: int = 1, tokens: int | None = None, **metrics: Any) -> None:
        """Advance by ``n`` units; ``tokens`` processed during them feed tokens/s; ``metrics`` update the shown values.

        Metric names with slashes go in as ``update(1, **{"env/reward_mean": 0.3})``.
        """
        now = time.monotonic()
        if self._start is None:
            self._start = self._last_time = now
        if tokens is not None and tokens > 0:
            elapsed = max(now - self._last_time, 1e-9)
            rate = tokens / elapsed
            self.tokens_per_second = (
                rate if self.tokens_per_second is None
                else TOKENS_PER_S_EMA * rate + (1 - TOKENS_PER_S_EMA) * self.tokens_per_second
            )
        self._last_time = now
        self.last.update(metrics)
        self.n += n
        if self._bar is not None:
            self._bar.set_postfix(self.postfix(), refresh=False)
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def write(self, message: str) -> None:
        """Print a line above the bar without breaking it."""
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message, file=self._file)
        else:
            print(message, file=self._file, flush=True)

    def postfix(self) -> dict[str, str]:
        """The shown values: the chosen metrics (short names) and tokens/s."""
        shown = {label: _fmt(self.last[key]) for label, key in self.labels.items() if key in self.last}
        if self.tokens_per_second is not None:
            shown["tok/s"] = f"{self.tokens_per_second:.0f}"
        return shown

    @property
    def seconds_left(self) -> float | None:
        """Estimated seconds to ``total`` at the average rate of this session (None when unknown)."""
        if self.total is None or self._start is None:
            return None
        done = self.n - self.initial
        if done <= 0:
            return None
        rate = done / max(time.monotonic() - self._start, 1e-9)
        return max(0.0, (self.total - self.n) / rate)


# ---------------------------------------------------------------------- Ctrl-C
@dataclass
class StopFlag:
    """Set by `graceful_interrupt`: ``stop`` turns True on the first signal; ``count`` signals seen."""

    stop: bool = False
    count: int = 0
    message: str = ""

    def __bool__(self) -> bool:
        return self.stop


DEFAULT_STOP_MESSAGE = (
    "\nStopping after the current step and saving what was done (press Ctrl-C again to quit at once)."
)


@contextlib.contextmanager
def graceful_interrupt(
    message: str = DEFAULT_STOP_MESSAGE, signals: Sequence[int] = (signal.SIGINT,), file=None
) -> Iterator[StopFlag]:
    """Within the block, the first Ctrl-C sets ``flag.stop`` (and prints ``message``); a second raises KeyboardInterrupt.

    The loop checks ``flag.stop`` at its safe points (after a step), saves and leaves.
    The previous signal handlers come back when the block ends. Outside the main thread,
    where Python cannot install signal handlers, the flag is returned and never set.

    Args:
        message: printed (to ``file``, default stderr) on the first signal.
        signals: the signals handled (SIGINT; add ``signal.SIGTERM`` for schedulers that send it).
        file: where the message goes.
    """
    flag = StopFlag(message=message)
    out = file if file is not None else sys.stderr

    def handler(signum, frame):
        flag.count += 1
        if flag.count == 1:
            flag.stop = True
            print(message, file=out, flush=True)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""Training curves as PNG files, drawn from metrics rows (matplotlib, headless).

Uses matplotlib's object API with the Agg canvas directly (never pyplot), so it
works without a display and leaves the process's matplotlib backend alone.
matplotlib is an optional dependency: ``pip install "rlft[plots]"``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

#: Width and height of one panel, in inches; dots per inch of the PNG.
PANEL_SIZE = (6.0, 2.6)
DPI = 100
#: Without an explicit ``smooth``: a window of about a tenth of the points, once there are this many.
AUTO_SMOOTH_MIN_POINTS = 12


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Plotting needs matplotlib, an optional dependency of rlft: pip install \"rlft[plots]\" "
            "(or pip install matplotlib)."
        ) from err


def series(records: Sequence[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """The (x, y) points of ``key`` in ``records``: rows without the key or with a non-finite value are left out.

    Rows without ``x`` use their index in ``records``.
    """
    xs, ys = [], []
    for i, row in enumerate(records):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        x_value = row.get(x, i)
        xs.append(float(x_value) if isinstance(x_value, (int, float)) else float(i))
        ys.append(float(value))
    return xs, ys


def is_fraction_metric(key: str) -> bool:
    """Whether ``key`` names a fraction in [0, 1] (an accuracy), drawn on a fixed 0-1 axis."""
    return "accurac" in key.rsplit("/", 1)[-1]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start, so the output has the same length)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _auto_window(n: int, smooth: int | None) -> int:
    if smooth is not None:
        return max(1, int(smooth))
    return max(1, n // 10) if n >= AUTO_SMOOTH_MIN_POINTS else 1


def plot_curves(
    records: Sequence[dict],
    keys: Sequence[str],
    out_png: str | os.PathLike,
    title: str | None = None,
    smooth: int | None = None,
    xlabel: str = "step",
    x_title: str | None = None,
    ylabels: dict[str, str] | None = None,
    points: bool = False,
) -> Path:
    """Draw one panel per key (raw values and their moving average) against ``xlabel`` into ``out_png``.

    Args:
        records: metric rows, e.g. `RunDir.read_metrics()`; the x value of a row is ``row[xlabel]``
            (its index when absent).
        keys: the metrics to draw, one panel each, top to bottom. Keys that no row holds are
            skipped (with a warning when none is left: the PNG then says there is no data).
        out_png: the PNG file to write (folders are created).
        title: the figure's title.
        smooth: the moving-average window; None picks about a tenth of the points (no smoothing
            under 12 points); 1 or 0 draws the raw line only.
        xlabel: the row key used as x, also the axis label unless ``x_title`` is given.
        x_title: the x axis label (e.g. "prompt" when ``xlabel`` is a row counter).
        ylabels: axis labels with units per key (default: the key itself).
        points: draw markers only, no joining lines (for values of independent items such as
            prompts, where a line would suggest an order that means nothing).

    Metrics named like an accuracy (``accuracy``, ``accuracies``) get a fixed 0-1 axis, so one
    point or a constant value is not shown as a spread around itself.

    Returns:
        The PNG path.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    present = [(key, *series(records, key, xlabel)) for key in keys]
    present = [(key, xs, ys) for key, xs, ys in present if ys]

    panels = max(1, len(present))
    fig = Figure(figsize=(PANEL_SIZE[0], PANEL_SIZE[1] * panels + (0.4 if title else 0.0)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    if not present:
        warnings.warn(f"plot_curves: no row holds any of {list(keys)}; {out_png.name} says so.", UserWarning, stacklevel=2)
        axes[0].text(0.5, 0.5, f"no data for {', '.join(keys)}", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, (key, xs, ys) in zip(axes, present):
        window = 1 if points else _auto_window(len(ys), smooth)
        if points:
            ax.plot(xs, ys, color="tab:blue", linestyle="none", marker="o", markersize=4)
        elif window > 1:
            ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=1, label="raw")
            ax.plot(xs, moving_average(ys, window), color="tab:blue", linewidth=2, label=f"mean of {window}")
            ax.legend(loc="best", fontsize="small", frameon=False)
        else:
            ax.plot(xs, ys, color="tab:blue", linewidth=1.5, marker="o" if len(ys) <= 30 else None, markersize=3)
        ax.set_ylabel((ylabels or {}).get(key, key), fontsize="small")
        if is_fraction_metric(key):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)  # "0.2" reads better than "+2e-1" over tiny ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel(x_title or xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, format="png")
    return out_png

"""plot_curves: a valid PNG with one panel per present key; smoothing; missing keys; no matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from rlft.reporting.plots import moving_average, plot_curves, series  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_series_skips_missing_and_non_finite():
    rows = [{"step": 1, "a": 1.0}, {"step": 2}, {"step": 3, "a": None}, {"step": 4, "a": float("nan")}, {"a": 5}]
    assert series(rows, "a") == ([1.0, 4.0], [1.0, 5.0])  # the last row has no step: its index


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([1, 2, 3], 1) == [1, 2, 3]


def test_plot_is_a_valid_png_with_one_panel_per_present_key(tmp_path):
    rows = [{"step": i, "loss": 1.0 / (i + 1), "acc": i / 40} for i in range(40)]
    one = plot_curves(rows, ["loss", "missing"], tmp_path / "p" / "one.png", title="t")
    two = plot_curves(rows, ["loss", "acc"], tmp_path / "two.png", smooth=5)
    assert one.read_bytes()[:8] == PNG_MAGIC and two.read_bytes()[:8] == PNG_MAGIC
    (w1, h1), (w2, h2) = png_size(one), png_size(two)
    assert w1 == w2 and h2 > 1.7 * h1 * 0.9  # a second panel makes the figure about twice as tall


def test_plot_without_any_key_warns_and_still_writes(tmp_path):
    with pytest.warns(UserWarning, match="no row holds"):
        out = plot_curves([{"step": 0}], ["x"], tmp_path / "empty.png")
    png_size(out)


def test_missing_matplotlib_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from rlft.reporting.plots import plot_curves\n"
        "try:\n    plot_curves([{'step': 0, 'a': 1}], ['a'], 'x.png')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert "pip install \"rlft[plots]\"" in out


def _drawn_figure(monkeypatch, *args, **kwargs):
    """Call plot_curves and return the matplotlib Figure it saved."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    plot_curves(*args, **kwargs)
    return saved[0]


def test_points_axis_titles_units_and_a_fixed_accuracy_axis(tmp_path, monkeypatch):
    rows = [{"step": i + 1, "score/best": float(i % 3), "eval_accuracy": 1.0 if i == 0 else None} for i in range(5)]
    fig = _drawn_figure(monkeypatch, rows, ["score/best", "eval_accuracy"], tmp_path / "p.png", x_title="prompt", points=True,
                        ylabels={"score/best": "score (reward units)"})
    top, bottom = fig.axes
    line = top.get_lines()[0]
    assert line.get_linestyle() == "None" and line.get_marker() == "o"  # per-prompt values are not joined
    assert bottom.get_xlabel() == "prompt" and top.get_ylabel() == "score (reward units)"
    assert bottom.get_ylim() == (-0.02, 1.02)  # one accuracy point: the full 0-1 axis, not 0.96-1.04
    curve = _drawn_figure(monkeypatch, rows, ["score/best"], tmp_path / "c.png")
    assert curve.axes[0].get_lines()[0].get_linestyle() == "-" and curve.axes[0].get_xlabel() == "step"

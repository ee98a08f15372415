"""Run directories, metrics files, plots, reports and progress bars for training runs.

Used by the ``rlft`` command line and the demo; usable from any training script::

    from rlft.reporting import RunDir, TrainingProgress, graceful_interrupt
    from rlft.reporting.plots import plot_curves
    from rlft.reporting.report import Section, write_report

matplotlib (for `plot_curves`) is imported only when a plot is drawn.
"""

from __future__ import annotations

from .plots import plot_curves
from .progress import StopFlag, TrainingProgress, graceful_interrupt
from .report import Section, write_report
from .run_dir import RunDir

__all__ = ["RunDir", "Section", "StopFlag", "TrainingProgress", "graceful_interrupt", "plot_curves", "write_report"]

"""The sentiment demo behind `rlft demo` (see rlft/demo/pipeline.py for the stages).

`DemoConfig` holds the settings (one command-line flag per field); `run_demo(config)` runs it and
returns the summary. Heavy imports happen inside `run_demo`.
"""

from .config import DemoConfig


def run_demo(config: DemoConfig) -> dict:
    from .pipeline import run_demo as _run

    return _run(config)


__all__ = ["DemoConfig", "run_demo"]

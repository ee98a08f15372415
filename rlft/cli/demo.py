"""``rlft demo``: the real-asset sentiment demo. Options are `rlft.demo.DemoConfig`'s fields; `rlft.demo.run_demo` runs it."""

from __future__ import annotations

from ._args import CLIError

DESCRIPTION = "The real-asset demo: sentiment-controlled generation with PPO on offline assets (see rlft.demo)."


def _demo_module():
    try:
        import rlft.demo as demo
    except ImportError as err:
        raise CLIError(f"the demo is not available in this installation of rlft ({err}).") from None
    if not hasattr(demo, "DemoConfig") or not hasattr(demo, "run_demo"):
        raise CLIError("rlft.demo does not define DemoConfig and run_demo yet.")
    return demo


def arguments():
    return (_demo_module().DemoConfig,)


def run(config) -> dict:
    """Run the demo; its summary dict is returned (and printed by the command line)."""
    summary = _demo_module().run_demo(config)
    return summary if isinstance(summary, dict) else {}

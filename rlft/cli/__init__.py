"""The ``rlft`` command line: one subcommand per trainer, each writing a run directory.

``COMMANDS`` is the whole dispatch: command name -> the module that declares its
dataclasses (``arguments()``) and runs it (``run(*parsed_dataclasses)``). Modules are
imported only for the command used, so ``rlft --help`` is quick and works without
the optional extras. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "sft": Command("rlft.cli.sft", "supervised fine-tuning of a causal LM on a text column (SFTTrainer)"),
    "reward": Command("rlft.cli.reward", "train a reward model on chosen/rejected pairs (RewardTrainer)"),
    "dpo": Command("rlft.cli.dpo", "direct preference optimisation on prompt/chosen/rejected (DPOTrainer)"),
    "ppo": Command("rlft.cli.ppo", "PPO against a reward model, VADER or a Python function (PPOTrainer)"),
    "bon": Command("rlft.cli.bon", "best-of-n sampling: keep the best-scored generations (BestOfNSampler)"),
    "ddpo": Command("rlft.cli.ddpo", "DDPO for a Stable Diffusion pipeline (DDPOTrainer; needs diffusers)"),
    "demo": Command("rlft.cli.demo", "the real-asset sentiment demo (rlft.demo)"),
}


def _top_parser() -> argparse.ArgumentParser:
    from .. import __version__

    listing = "\n".join(f"  {name:<8} {cmd.help}" for name, cmd in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="rlft",
        description="Post-training for language models (and DDPO for diffusion models); every command writes a run "
        "directory with config.yaml, metrics.jsonl, model/, samples/, plots/ and report.html.",
        epilog=f"commands:\n{listing}\n\n'rlft <command> --help' lists every option of a command. "
        "Options come from a --config YAML/JSON file and/or flags; --tiny makes an offline smoke run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rlft {__version__}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's options")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rlft <command> [options]``; returns the exit status (0, 2 for usage errors, 130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ._threads import configure_threads

    configure_threads()  # before torch loads its OpenMP runtime: see rlft/cli/_threads.py
    try:
        top = _top_parser().parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
        return _dispatch(top.command, argv[1:])
    except SystemExit as exit_:  # argparse's --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)


#: Set to 1 to see the traceback of an unexpected error instead of its one-line summary.
TRACEBACK_ENV = "RLFT_TRACEBACK"


def _print_help(name: str) -> int:
    """Print ``rlft <name> --help`` from the cache, or render it (and cache it)."""
    from ._args import CLIError, build_parser
    from ._help import cached_help, store_help

    text = cached_help(name)
    if text is None:
        try:
            module = importlib.import_module(COMMANDS[name].module)
            parser = build_parser(name, module.arguments(), module.DESCRIPTION)
            defaults = getattr(module, "CLI_DEFAULTS", None)
            defaults = (defaults() if callable(defaults) else defaults) or {}
            known = {a.dest for a in parser._actions}
            parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})  # the defaults a run really gets
            text = parser.format_help()
        except CLIError as err:
            print(f"rlft {name}: error: {err}", file=sys.stderr)
            return 2
        store_help(name, text)
    sys.stdout.write(text)
    return 0


def _dispatch(name: str, argv: list[str]) -> int:
    from ._args import CLIError, parse_command
    from ._help import HELP_FLAGS

    if len(argv) == 1 and argv[0] in HELP_FLAGS:
        return _print_help(name)

    _quiet_library_progress_bars()
    _quiet_known_noise()
    output_dir = None
    existed = True
    try:
        module = importlib.import_module(COMMANDS[name].module)
        defaults = getattr(module, "CLI_DEFAULTS", None)
        parsed = parse_command(
            name, module.arguments(), argv, description=module.DESCRIPTION,
            cli_defaults=defaults() if callable(defaults) else defaults, tiny_preset=getattr(module, "TINY_PRESET", None),
        )
        output_dir = next((getattr(p, "output_dir") for p in parsed if getattr(p, "output_dir", None)), None)
        existed = output_dir is None or Path(output_dir).exists()
        summary = module.run(*parsed)
    except CLIError as err:
        _remove_unstarted_run(output_dir, existed)
        print(f"rlft {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlft {name}: interrupted (a second Ctrl-C quits without saving).", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line reports, the traceback is one variable away
        _remove_unstarted_run(output_dir, existed)
        if os.environ.get(TRACEBACK_ENV):
            raise
        message = " ".join(str(err).split()) or "(no message)"
        print(f"rlft {name}: error: {type(err).__name__}: {message}\n"
              f"  (set {TRACEBACK_ENV}=1 to see where it happened)", file=sys.stderr)
        return 1
    if isinstance(summary, dict):
        if _is_main_process():
            _print_summary(name, summary)
        return int(summary.get("exit_code", 0))
    return 0


def _remove_unstarted_run(output_dir: str | None, existed: bool) -> None:
    """Remove a run directory this command created and failed in before training logged anything
    (no metrics, no checkpoint), so the same command can be rerun without --overwrite."""
    if output_dir is None or existed or not _is_main_process():  # the main process owns the run directory
        return
    path = Path(output_dir)
    checkpoints = path / "checkpoints"
    metrics = path / "metrics.jsonl"
    started = (checkpoints.is_dir() and any(checkpoints.iterdir())) or (metrics.is_file() and metrics.stat().st_size > 0)
    if path.is_dir() and not started:
        shutil.rmtree(path, ignore_errors=True)


def _is_main_process() -> bool:
    from ._shard import is_main_process

    return is_main_process()


def _quiet_known_noise() -> None:
    """Warnings that every run would print and that no user can act on (real warnings stay)."""
    import warnings

    # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing when it adds an adapter.
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # rlft ppo feeds PPOTrainer.step itself, so PPOTrainer's "no dataset" reminder does not apply.
    warnings.filterwarnings("ignore", message=r"No dataset is provided: PPOTrainer.dataloader is None", category=UserWarning)


def _quiet_library_progress_bars() -> None:
    # Loading, saving and dataset.map bars of transformers/datasets would interleave with the
    # training bar; the command line shows one bar per run.
    try:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def _print_summary(name: str, summary: dict) -> None:
    where = summary.get("run_dir")
    if where:
        print(f"rlft {name}: done. Run directory: {where}")
        for key in ("report_html", "model_dir"):
            if summary.get(key):
                print(f"  {key.replace('_', ' ')}: {summary[key]}")
        if summary.get("interrupted"):
            print(f"rlft {name}: stopped early and saved. Continue with: rlft {name} --output_dir {where} --resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

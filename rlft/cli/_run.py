"""What every command does around its training loop: open the run directory, save the config,
report progress, stop cleanly on Ctrl-C, and finish with plots, a report and a model card."""

from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from ..reporting import RunDir, TrainingProgress
from ..reporting.report import Section, write_report
from ._args import CLIError
from ._shard import is_main_process

#: Exit status of a run stopped by Ctrl-C after saving (the shell convention for SIGINT).
EXIT_INTERRUPTED = 130


@dataclass
class RunOptions:
    """Options shared by every training command (the run directory itself is ``--output_dir``)."""

    tiny: bool = False
    """Smoke run offline: tiny random model (tiny-gpt2), tiny dataset and small sizes, unless set otherwise."""
    resume: bool = False
    """Continue the run in --output_dir from its latest checkpoint (its config.yaml is the base; flags override)."""
    overwrite: bool = False
    """Replace an existing run directory at --output_dir (only one that rlft wrote)."""
    num_samples: int = 4
    """Prompts whose generations before and after training go in samples/ and the report."""
    sample_max_new_tokens: int = 24
    """New tokens per before/after sample generation."""
    plots: bool = True
    """Draw plots/*.png and the report (needs matplotlib; without it the report has no plots)."""


@dataclass
class ModelDataOptions(RunOptions):
    """The model, its tokenizer and the dataset of a language-model command (sft, reward, dpo, ppo, bon).

    A command whose model or data means something more specific redefines just that field
    (with its own text under it); the field keeps its place in --help.
    """

    model_name_or_path: Optional[str] = None
    """A local causal-LM folder, or tiny-<arch> (tiny-gpt2, ...) for an offline smoke run."""
    tokenizer_name_or_path: Optional[str] = None
    """The tokenizer folder (default: the model's)."""
    dataset: Optional[str] = None
    """Training data: a .json/.jsonl/.csv/.parquet file, a datasets.save_to_disk folder, or 'tiny'."""
    dataset_split: str = "train"
    """The split of a saved DatasetDict."""


@dataclass
class TrainEvalOptions(ModelDataOptions):
    """A transformers.Trainer command's data: the training rows and the evaluation split (sft, reward, dpo)."""

    eval_dataset: Optional[str] = None
    """Evaluation data in the same formats as --dataset; default: --eval_fraction of the training data, or none."""
    eval_fraction: float = 0.0
    """Without --eval_dataset: hold out this fraction of the training rows (the last ones) for evaluation (0: no evaluation)."""
    max_train_samples: Optional[int] = None
    """Use only the first this many training rows."""


@dataclass
class PromptRewardOptions(ModelDataOptions):
    """Prompts from a dataset column, a text reward, and how responses are sampled (ppo, bon)."""

    dataset: Optional[str] = None
    """Prompts: a .json/.jsonl/.csv/.parquet file, a datasets.save_to_disk folder, or 'tiny'."""
    prompt_column: Optional[str] = None
    """The column holding the prompts (default: the first of query, prompt, text)."""
    max_prompts: Optional[int] = None
    """Use only the first this many prompts."""
    reward: Optional[str] = None
    """The reward: 'vader', 'length' (toy), a sequence-classifier folder, or module:function taking a list of texts."""
    reward_label: Optional[str] = None
    """For a reward model with several labels: the rewarded label (name or index)."""
    reward_batch_size: int = 16
    """Texts per forward pass of a reward model."""
    min_new_tokens: Optional[int] = None
    """With max_new_tokens: draw the number of new tokens at random in [min, max] (default: always max)."""
    max_new_tokens: int = 32
    """New tokens per generated response."""
    temperature: float = 1.0
    """Sampling temperature."""

    def check_new_tokens(self) -> None:
        """CLIError unless --min_new_tokens (when given) lies in [1, --max_new_tokens]."""
        if self.min_new_tokens is not None and not 0 < self.min_new_tokens <= self.max_new_tokens:
            raise CLIError(f"--min_new_tokens ({self.min_new_tokens}) must lie in [1, --max_new_tokens ({self.max_new_tokens})].")


def open_run(output_dir: str, options: RunOptions, command: str, config: dict) -> RunDir:
    """Create (or, with --resume, reopen) the run directory and write config.yaml."""
    if options.resume and not (Path(output_dir) / "config.yaml").is_file():
        raise CLIError(f"--resume: {output_dir} is not a run directory (no config.yaml).")
    if not is_main_process():  # the main process checks, creates and writes the run directory
        return _FollowerRunDir(output_dir, resume=options.resume)
    try:
        run = RunDir(output_dir, resume=options.resume, overwrite=options.overwrite)
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        raise CLIError(str(err)) from None
    saved = dict(config)
    if saved.get("accelerate_config"):  # its settings are saved resolved (fsdp / fsdp_config / deepspeed)
        saved["accelerate_config"] = None
    saved["resume"] = False  # the file describes the run; --resume is how it was (re)started
    saved["overwrite"] = False
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    run.save_config(saved, header=f"rlft {command} (rlft {__version__}), {stamp}.\nRerun: rlft {command} --config config.yaml --output_dir <new run>")
    return run


class _FollowerRunDir(RunDir):
    """The run directory seen from a non-main process of a multi-process run: it reads the files the main
    process writes and writes nothing itself (checkpoints are the trainers' business, on every process)."""

    def __init__(self, path, resume: bool = False):  # no folder checks: the main process makes them
        self.path = Path(path).expanduser()
        self.resumed = resume

    def save_config(self, obj, name=None, header=None):
        return self.path / (name or "config.yaml")

    def log_metrics(self, step, metrics):
        return {"step": step, **metrics}

    def truncate_metrics(self, last_step):
        return 0

    def save_samples(self, name, rows):
        return self._samples_file(name, create=False)

    append_samples = save_samples

    def write_model_card(self, title, body_markdown, tags=()):
        return self.path / "README.md"


def progress(total: int | None, command: str, keys: Sequence[str] | dict, unit: str = "step", initial: int = 0) -> TrainingProgress:
    return TrainingProgress(total, desc=f"rlft {command}", keys=keys, unit=unit, initial=initial,
                            disable=None if is_main_process() else True)  # one bar per run, not one per process


# ====================================================================== transformers.Trainer glue
def trainer_callback(run: RunDir, stop_flag, command: str, keys: Sequence[str] | dict, count_tokens: bool = False):
    """A TrainerCallback that logs to metrics.jsonl, draws the progress bar and honours the Ctrl-C flag."""
    from transformers import TrainerCallback

    class RunDirCallback(TrainerCallback):
        def __init__(self):
            self.bar: TrainingProgress | None = None
            self.tokens_seen = 0
            self.stopped_early = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(state.max_steps, command, keys, initial=state.global_step).__enter__()
            self.tokens_seen = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                run.log_metrics(state.global_step, logs)
                if self.bar is not None:
                    self.bar.update(0, **logs)
            # Logging runs after a step's update and before transformers decides whether to save:
            # a Ctrl-C noticed here still gets this step's checkpoint.
            self._maybe_stop(state, control)

        def on_step_end(self, args, state, control, **kwargs):
            tokens = state.num_input_tokens_seen - self.tokens_seen if count_tokens else None
            self.tokens_seen = state.num_input_tokens_seen
            if self.bar is not None:
                self.bar.update(1, tokens=tokens or None)
            if state.global_step >= state.max_steps:
                control.should_save = True  # the final state too, so --resume with more steps goes on from it
            self._maybe_stop(state, control)

        def _maybe_stop(self, state, control):
            if stop_flag.stop and state.global_step < state.max_steps:
                self.stopped_early = True
                control.should_training_stop = True
                control.should_save = True  # a checkpoint for --resume

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return RunDirCallback()


def train_hf(trainer, run: RunDir, options: RunOptions, command: str, keys: Sequence[str] | dict, count_tokens: bool = False) -> bool:
    """Train a transformers ``Trainer`` inside the run: metrics, progress bar, Ctrl-C, checkpoints, --resume.

    Saves the final (or interrupted) model and tokenizer to ``model/``. Returns True when Ctrl-C
    stopped training early.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..reporting import graceful_interrupt

    for cb in (PrinterCallback, ProgressCallback):  # the progress bar shows the numbers instead
        trainer.remove_callback(cb)
    mark_complete = _mark_complete_callback()
    if mark_complete is not None:
        trainer.add_callback(mark_complete)
    last = _last_trainer_checkpoint(run) if options.resume else None
    if options.resume:
        run.truncate_metrics(int(Path(last).name.split("-")[-1]))  # later rows will be logged again
    with graceful_interrupt() as stop:
        callback = trainer_callback(run, stop, command, keys, count_tokens)
        trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(run.model_dir))
    return callback.stopped_early


def _mark_complete_callback():
    try:
        from ..utils.checkpoint import MarkCheckpointCompleteCallback
    except ImportError:
        return None
    return MarkCheckpointCompleteCallback()


def _last_trainer_checkpoint(run: RunDir) -> str:
    """The latest complete ``checkpoint-<n>`` of a Trainer-based run (an error if there is none)."""
    try:
        from ..utils.checkpoint import latest_checkpoint
    except ImportError:  # an rlft without rlft.utils.checkpoint: transformers' own lookup
        from transformers.trainer_utils import get_last_checkpoint as latest_checkpoint
    last = latest_checkpoint(str(run.checkpoints_dir)) if run.checkpoints_dir.is_dir() else None
    if last is None:
        raise CLIError(no_checkpoint_message(run, command_of(run)))
    return str(last)


def command_of(run: RunDir) -> str:
    """The command that wrote ``run`` (from its config.yaml header), for messages."""
    from ._args import _saved_command

    return _saved_command(run.path / "config.yaml") or "<command>"


def no_checkpoint_message(run: RunDir, command: str) -> str:
    """What to do when --resume finds no checkpoint: the run stopped before its first one."""
    return (
        f"--resume: {run.path} has no complete checkpoint yet (the run stopped before its first save), so there "
        f"is nothing to continue. Start it afresh: the same command without --resume, with --overwrite "
        f"(rlft {command} --config {run.path / 'config.yaml'} --output_dir {run.path} --overwrite)."
    )


def training_arguments_for_run(args, run: RunDir, **changes):
    """A copy of the TrainingArguments whose checkpoints go to the run's checkpoints/ (config.yaml keeps the run path)."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.update(output_dir=str(run.checkpoints_dir), **changes)
    return type(args)(**values)


# ====================================================================== finishing
@dataclass
class Plot:
    """One PNG: its file name under plots/, the metrics drawn, and a title."""

    name: str
    keys: Sequence[str]
    title: str
    xlabel: str = "step"
    x_title: Optional[str] = None
    """The x axis label when the x key (``xlabel``) is a counter of something else (e.g. "prompt")."""
    points: bool = False
    """Markers only: values of independent items (prompts), not a curve."""


@dataclass
class Finish:
    """What a command hands to `finish_run` once training ends (or stops)."""

    command: str
    title: str
    summary: str
    plots: list[Plot] = field(default_factory=list)
    samples_table: list[dict] | None = None
    samples_heading: str = "Samples before and after training"
    extra_sections: list[Section] = field(default_factory=list)
    card_body: str = ""
    tags: Sequence[str] = ()
    images: list = field(default_factory=list)


def finish_run(run: RunDir, finish: Finish, draw_plots: bool = True) -> dict:
    """Draw the plots, write report.md/.html and the model card; returns the paths written (none on a non-main process)."""
    written: dict[str, Any] = {}
    if isinstance(run, _FollowerRunDir):
        return written
    records = run.read_metrics()
    images = []
    if draw_plots:
        try:
            from ..reporting.plots import plot_curves

            for plot in finish.plots:
                if not any(isinstance(row.get(key), (int, float)) for row in records for key in plot.keys):
                    continue  # e.g. dpo_eval.png of a run without an eval set: no blank image
                images.append(plot_curves(records, plot.keys, run.plots_dir / plot.name, title=plot.title, xlabel=plot.xlabel,
                                          x_title=plot.x_title, points=plot.points))
        except ImportError as err:
            print(f"rlft {finish.command}: no plots ({err})")
    sections = [Section("Summary", finish.summary)]
    if images:
        sections.append(Section("Curves", "Thin lines: values per step; thick lines: their moving average.", images=images))
    if finish.samples_table:
        sections.append(Section(finish.samples_heading, images=finish.images, table=finish.samples_table))
    sections.extend(finish.extra_sections)
    card = run.write_model_card(finish.title, finish.card_body or finish.summary, tags=[finish.command, *finish.tags])
    sections.append(Section("Files", _files_markdown(run, finish.command)))
    md, html = write_report(run, finish.title, sections)
    written.update(report_md=str(md), report_html=str(html), model_card=str(card), plots=[str(p) for p in images])
    return written


def model_loading_note(run: RunDir, model_path: str, adapter: bool, value_head: bool = True) -> str:
    """Model-card text: what ``model/`` holds and the one line that loads it (a LoRA adapter needs its base model)."""
    from pathlib import Path

    head = " with its value head (`value_head.safetensors`)" if value_head else ""
    if not adapter:
        return (f"`model/` holds the trained model{head}. Load it with "
                f"`AutoModelForCausalLMWithValueHead.from_pretrained(\"{run.model_dir}\")` (rlft) or, without the value head, "
                f"`AutoModelForCausalLM.from_pretrained(\"{run.model_dir}\")`.")
    base = Path(model_path).resolve()
    return (f"`model/` holds a LoRA adapter{head}, not a full model: its base model stays in `{base}` "
            f"(outside this run directory; keep it there). Load both with "
            f"`AutoModelForCausalLMWithValueHead.from_pretrained(\"{run.model_dir}\")` (rlft reads the base model's "
            "path from `adapter_config.json`), or sample from it with "
            f"`rlft bon --model_name_or_path {run.model_dir} ...`.")


def _files_markdown(run: RunDir, command: str) -> str:
    lines = [
        f"- `config.yaml`: every option of this run (`rlft {command} --config config.yaml --output_dir <new>` reruns it)",
        "- `metrics.jsonl`: one JSON object per logged step",
        "- `model/`: the trained model",
        "- `README.md`: the model card",
        "- `samples/`: sample generations (JSON lines)",
        "- `plots/`: the curves above as PNG files",
        "- `checkpoints/`: what `--resume` continues from",
    ]
    return "\n".join(line for line in lines if (run.path / line.split("`")[1].rstrip("/")).exists())


def mean_of(records: list[dict], key: str, first: bool, fraction: float = 0.2) -> float | None:
    """Mean of ``key`` over the first (or last) ``fraction`` of the rows holding it (at least one row)."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    if not values:
        return None
    n = max(1, int(len(values) * fraction))
    return statistics.fmean(values[:n] if first else values[-n:])


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def done_line(what: str, done: int, total: int, interrupted: bool) -> str:
    """The summary bullet ``- <what>: <done> of <total>``, marked when Ctrl-C stopped the run early."""
    return f"- {what}: {done} of {total}" + (" (stopped early with Ctrl-C)" if interrupted else "")


def trend(records: list[dict], key: str, fraction: float = 0.2) -> str:
    """``<mean over the first rows> -> <mean over the last rows>`` of ``key`` (``fraction`` as in `mean_of`)."""
    return f"{fmt(mean_of(records, key, True, fraction))} -> {fmt(mean_of(records, key, False, fraction))}"


def trainer_summary(
    headline: str, trainer, records: list[dict], interrupted: bool, metrics: Sequence[str], args: Any, names: Sequence[str]
) -> str:
    """The report summary of a transformers.Trainer command (sft, reward, dpo).

    ``headline``, then the optimizer steps done and the training-loss trend, the command's own
    ``metrics`` bullets, and the ``names`` fields of its training arguments ``args``.
    """
    return "\n".join([
        headline,
        "",
        done_line("optimizer steps", trainer.state.global_step, trainer.state.max_steps, interrupted),
        f"- training loss, first -> last logged steps: {trend(records, 'loss')}",
        *metrics,
        "",
        config_table(args, names),
    ])


def run_result(run: RunDir, interrupted: bool, written: dict, **counts: Any) -> dict:
    """What a command's ``run()`` returns: the run directory, ``counts`` (steps done, ...), whether Ctrl-C
    stopped it, the exit status (EXIT_INTERRUPTED then) and the paths `finish_run` wrote."""
    return {"run_dir": str(run.path), **counts, "interrupted": interrupted,
            "exit_code": EXIT_INTERRUPTED if interrupted else 0, **written}


def config_table(config: Any, names: Sequence[str]) -> str:
    """A Markdown list of chosen config fields."""
    get = config.get if isinstance(config, dict) else lambda n, d=None: getattr(config, n, d)
    missing = object()
    return "\n".join(f"- `{n}`: `{get(n, missing)}`" for n in names if get(n, missing) is not missing)

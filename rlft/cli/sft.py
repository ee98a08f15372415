"""``rlft sft``: supervised fine-tuning of a causal language model on a text column (`SFTTrainer`)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass

from ._args import merged_config, options_from_signature
from ._lora import LoraOptions, lora_config
from ._run import (
    Finish,
    Plot,
    TrainEvalOptions,
    finish_run,
    fmt,
    mean_of,
    open_run,
    run_result,
    train_hf,
    trainer_summary,
)
from ._shard import (
    ShardingOptions,
    announce,
    check_launch,
    outside_zero3_init,
    requested,
)

DESCRIPTION = "Supervised fine-tuning (SFTTrainer) of a causal language model on a text dataset."

BAR_KEYS = {"loss": "loss", "eval_loss": "eval_loss", "lr": "learning_rate"}
PLOTS = [Plot("sft_loss.png", ["loss", "eval_loss", "learning_rate"], "SFT: loss per step")]

#: TrainingArguments defaults for command-line runs: log often enough to draw curves, our bar instead of
#: transformers' printing, tokens counted for tokens/s, two checkpoints kept.
CLI_DEFAULTS = {"logging_steps": 10, "logging_first_step": True, "disable_tqdm": True, "report_to": "none",
                    "include_num_input_tokens_seen": True, "save_total_limit": 2}
TINY_PRESET = {
    "model_name_or_path": "tiny-gpt2", "dataset": "tiny", "max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
    "logging_steps": 1, "save_steps": 3, "max_seq_length": 64, "sample_max_new_tokens": 8, "use_cpu": True,
}


@dataclass
class SFTScriptArguments(TrainEvalOptions, LoraOptions, ShardingOptions):
    """Where the model and the data come from (the run directory is --output_dir)."""

    sample_prompt_tokens: int = 8
    """Before/after samples continue the first this many tokens of the first --num_samples texts."""


@functools.cache
def sft_options() -> type:
    """A dataclass of SFTTrainer's keyword arguments (built on first use, so `rlft --help` needs no transformers)."""
    from transformers import TrainingArguments

    from ..trainer.sft_trainer import SFTTrainer

    # A keyword that TrainingArguments also has (neftune_noise_alpha) is given there, once.
    taken = {f.name for f in dataclasses.fields(TrainingArguments)}
    return options_from_signature("SFTOptions", SFTTrainer.__init__, exclude=taken, doc=SFTTrainer.__doc__)


def arguments():
    from transformers import TrainingArguments

    return (SFTScriptArguments, sft_options(), TrainingArguments)


def run(args: SFTScriptArguments, options, training_args) -> dict:
    """Fine-tune as configured; returns a summary (run_dir, steps, interrupted, exit_code, ...)."""
    from ..trainer.sft_trainer import SFTTrainer
    from . import _data, _load

    check_launch("sft", requested(training_args.fsdp, training_args.deepspeed))
    with outside_zero3_init():  # a tiny model is built and saved whole
        model_path = _load.model_folder(args.model_name_or_path)
    tokenizer = _load.load_tokenizer(args.tokenizer_name_or_path or model_path)
    train, evaluation = _data.train_eval(args, kind="text")
    text_field = options.dataset_text_field or _load.pick_column(train, None, ("text", "content", "completion"), "--dataset_text_field")
    _load.require_columns(train, [text_field], "--dataset_text_field")

    run_dir = open_run(training_args.output_dir, args, "sft", merged_config(args, options, training_args))
    kwargs = asdict(options)
    kwargs["dataset_text_field"] = text_field
    trainer = SFTTrainer(
        model=_load.load_lm(model_path, tokenizer), args=_data.run_training_args(training_args, run_dir, evaluation), train_dataset=train,
        eval_dataset=evaluation, processing_class=tokenizer, peft_config=lora_config(args, "CAUSAL_LM", model_path), **kwargs,
    )
    announce("sft", trainer.accelerator, requested(training_args.fsdp, training_args.deepspeed))
    prompts = _data.text_prompts(train[text_field][: args.num_samples], tokenizer, args.sample_prompt_tokens)
    # with the accelerator: under ZeRO-3 the model was loaded partitioned (zero.Init) and is gathered for the call
    before = _data.lm_samples(run_dir, "before", trainer.model, tokenizer, prompts, args, training_args.seed, resume=args.resume,
                              accelerator=trainer.accelerator)

    interrupted = train_hf(trainer, run_dir, args, "sft", BAR_KEYS, count_tokens=True)
    after = _data.lm_samples(run_dir, "after", trainer.model, tokenizer, prompts, args, training_args.seed, accelerator=trainer.accelerator)
    records = run_dir.read_metrics()
    summary = trainer_summary(
        f"Supervised fine-tuning of `{args.model_name_or_path}` on the `{text_field}` column of `{args.dataset}`.",
        trainer, records, interrupted, [f"- evaluation loss at the end: {fmt(mean_of(records, 'eval_loss', False, fraction=0))}"],
        training_args, ["learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed"],
    )
    written = finish_run(run_dir, Finish(
        command="sft", title=f"SFT: {args.model_name_or_path}", summary=summary, plots=PLOTS,
        samples_table=_data.before_after(before, after),
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, steps=trainer.state.global_step, model_dir=str(run_dir.model_dir))

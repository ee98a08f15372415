"""``rlft dpo``: direct preference optimisation on prompt/chosen/rejected texts (`DPOTrainer`)."""

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
    open_run,
    run_result,
    train_hf,
    trainer_summary,
    trend,
)
from ._shard import (
    ShardingOptions,
    announce,
    check_launch,
    outside_zero3_init,
    requested,
)

DESCRIPTION = "Direct preference optimisation (DPOTrainer) of a language model on prompt/chosen/rejected triples."

BAR_KEYS = {"loss": "loss", "margin": "rewards/margins", "accuracy": "rewards/accuracies"}
PLOTS = [
    Plot("dpo_loss_margins.png", ["loss", "rewards/margins", "rewards/accuracies"], "DPO: loss and reward margins (training)"),
    Plot("dpo_eval.png", ["eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"], "DPO: evaluation"),
]

#: Command-line defaults: frequent logs for the curves; DPO batches hold columns the model's
#: forward does not take, so they must not be removed (DPOTrainer would warn and change it).
CLI_DEFAULTS = {"logging_steps": 10, "logging_first_step": True, "disable_tqdm": True, "report_to": "none", "save_total_limit": 2,
                    "remove_unused_columns": False}
TINY_PRESET = {
    "model_name_or_path": "tiny-gpt2", "dataset": "tiny", "max_steps": 6, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
    "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "max_length": 64, "max_prompt_length": 16,
    "eval_fraction": 0.25, "sample_max_new_tokens": 8, "use_cpu": True,
}


@dataclass
class DPOScriptArguments(TrainEvalOptions, LoraOptions, ShardingOptions):
    """Where the model, the reference and the preference data come from (the run directory is --output_dir)."""

    model_name_or_path: str | None = None
    """A local model folder (causal or encoder-decoder), or tiny-<arch> for an offline smoke run."""
    dataset: str | None = None
    """Triples with prompt, chosen and rejected columns: a .json/.jsonl/.csv/.parquet file, a save_to_disk folder, or 'tiny'."""
    ref_model_name_or_path: str | None = None
    """The frozen reference model's folder (default: a frozen copy of the model)."""


@functools.cache
def dpo_options() -> type:
    """A dataclass of DPOTrainer's keyword arguments (built on first use)."""
    from transformers import TrainingArguments

    from ..trainer.dpo_trainer import DPOTrainer

    taken = {f.name for f in dataclasses.fields(TrainingArguments)}
    # padding_value is left at DPOTrainer's default (the tokenizer's pad id): a saved 0 would mean token 0.
    exclude = taken | {"padding_value", "is_encoder_decoder"}
    return options_from_signature("DPOOptions", DPOTrainer.__init__, exclude=exclude, doc=DPOTrainer.__doc__)


def arguments():
    from transformers import TrainingArguments

    return (DPOScriptArguments, dpo_options(), TrainingArguments)


def run(args: DPOScriptArguments, options, training_args) -> dict:
    """Train as configured; returns a summary (run_dir, steps, interrupted, exit_code, ...)."""
    from ..trainer.dpo_trainer import DPOTrainer
    from . import _data, _load

    check_launch("dpo", requested(training_args.fsdp, training_args.deepspeed))
    with outside_zero3_init():  # a tiny model is built and saved whole
        model_path = _load.model_folder(args.model_name_or_path)
        ref_path = _load.model_folder(args.ref_model_name_or_path, "--ref_model_name_or_path") if args.ref_model_name_or_path else None
    tokenizer = _load.load_tokenizer(args.tokenizer_name_or_path or model_path)
    train, evaluation = _data.train_eval(args, kind="preference")
    _load.require_columns(train, ["prompt", "chosen", "rejected"], "--dataset (DPO needs prompt, chosen and rejected columns)")

    run_dir = open_run(training_args.output_dir, args, "dpo", merged_config(args, options, training_args))
    kwargs = asdict(options)
    model = _load.load_lm(model_path, tokenizer)
    ref_model = _load.load_lm(ref_path, tokenizer) if ref_path else None
    trainer = DPOTrainer(
        model=model, ref_model=ref_model, args=_data.run_training_args(training_args, run_dir, evaluation),
        train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
        peft_config=lora_config(args, "SEQ_2_SEQ_LM" if _load.is_encoder_decoder(model_path) else "CAUSAL_LM", model_path), **kwargs,
    )
    announce("dpo", trainer.accelerator, requested(training_args.fsdp, training_args.deepspeed))
    prompts = [str(p) for p in train["prompt"][: args.num_samples]]
    before = _data.lm_samples(run_dir, "before", trainer.model, tokenizer, prompts, args, training_args.seed, resume=args.resume,
                              accelerator=trainer.accelerator)  # ZeRO-3 loads the model partitioned: gathered for the call

    interrupted = train_hf(trainer, run_dir, args, "dpo", BAR_KEYS)
    after = _data.lm_samples(run_dir, "after", trainer.model, tokenizer, prompts, args, training_args.seed, accelerator=trainer.accelerator)
    records = run_dir.read_metrics()
    summary = trainer_summary(
        f"DPO (loss `{options.loss_type}`, beta {options.beta}) of `{args.model_name_or_path}` on the triples of `{args.dataset}`.",
        trainer, records, interrupted, [f"- reward margin (chosen - rejected), first -> last: {trend(records, 'rewards/margins')}"],
        training_args, ["learning_rate", "per_device_train_batch_size", "max_steps", "num_train_epochs", "seed"],
    )
    written = finish_run(run_dir, Finish(
        command="dpo", title=f"DPO: {args.model_name_or_path}", summary=summary, plots=PLOTS,
        samples_table=_data.before_after(before, after), tags=["dpo"],
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, steps=trainer.state.global_step, model_dir=str(run_dir.model_dir))

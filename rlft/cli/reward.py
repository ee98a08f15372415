"""``rlft reward``: train a reward model (one logit per sequence) on chosen/rejected pairs (`RewardTrainer`)."""

from __future__ import annotations

from dataclasses import dataclass

from ._args import merged_config
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

DESCRIPTION = "Train a reward model (RewardTrainer) on pairs of chosen and rejected texts."

BAR_KEYS = {"loss": "loss", "eval_loss": "eval_loss", "accuracy": "eval_accuracy"}
PLOTS = [Plot("reward_loss_accuracy.png", ["loss", "eval_loss", "eval_accuracy"], "Reward model: loss and pairwise accuracy")]

#: Command-line defaults: curves need frequent logs; accuracy needs an eval split (a tenth of the data by default).
CLI_DEFAULTS = {"logging_steps": 10, "logging_first_step": True, "disable_tqdm": True, "report_to": "none", "save_total_limit": 2,
                    "eval_fraction": 0.1}
TINY_PRESET = {
    "model_name_or_path": "tiny-gpt2", "dataset": "tiny", "max_steps": 6, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
    "learning_rate": 1e-3, "logging_steps": 1, "eval_steps": 2, "save_steps": 3, "max_length": 64, "gradient_checkpointing": False,
    "eval_fraction": 0.25, "use_cpu": True,
}


@dataclass
class RewardScriptArguments(TrainEvalOptions, LoraOptions, ShardingOptions):
    """Where the model and the preference pairs come from (the run directory is --output_dir)."""

    model_name_or_path: str | None = None
    """A local model folder (loaded as a one-logit sequence classifier), or tiny-<arch> for a smoke run."""
    dataset: str | None = None
    """Preference pairs: a .json/.jsonl/.csv/.parquet file, a datasets.save_to_disk folder, or 'tiny'."""
    chosen_column: str = "chosen"
    """The column with the preferred text."""
    rejected_column: str = "rejected"
    """The column with the other text."""
    prompt_column: str | None = "prompt"
    """A column put before both texts when the dataset has it (none: the texts are complete)."""
    margin_column: str | None = None
    """A column with the margin by which chosen should beat rejected (Llama 2's reward loss)."""


def arguments():
    from ..trainer.reward_config import RewardConfig

    return (RewardScriptArguments, RewardConfig)


def run(args: RewardScriptArguments, config) -> dict:
    """Train as configured; returns a summary (run_dir, steps, interrupted, exit_code, ...)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    from ..trainer.reward_trainer import RewardTrainer
    from . import _data, _load

    check_launch("reward", requested(config.fsdp, config.deepspeed))
    with outside_zero3_init():  # a tiny model is built and saved whole
        model_path = _load.model_folder(args.model_name_or_path)
    tokenizer = _load.load_tokenizer(args.tokenizer_name_or_path or model_path, padding_side="right")
    train, evaluation = _data.train_eval(args, kind="preference")
    _load.require_columns(train, [args.chosen_column, args.rejected_column], "--chosen_column / --rejected_column")
    if args.margin_column:
        _load.require_columns(train, [args.margin_column], "--margin_column")
    shown = evaluation if evaluation is not None else train
    sample_pairs = [dict(shown[i]) for i in range(min(args.num_samples, len(shown)))]

    run_dir = open_run(config.output_dir, args, "reward", merged_config(args, config))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new score head is expected: no load report about it
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenize = _pair_tokenizer(args, tokenizer)
    train_tok = train.map(tokenize, remove_columns=train.column_names)
    eval_tok = evaluation.map(tokenize, remove_columns=evaluation.column_names) if evaluation is not None else None
    trainer = RewardTrainer(model=model, args=_data.run_training_args(config, run_dir, eval_tok), train_dataset=train_tok,
                            eval_dataset=eval_tok, processing_class=tokenizer, peft_config=lora_config(args, "SEQ_CLS", model_path))
    announce("reward", trainer.accelerator, requested(config.fsdp, config.deepspeed))

    before = _pair_scores(run_dir, "before", trainer, tokenizer, sample_pairs, args, resume=args.resume)
    interrupted = train_hf(trainer, run_dir, args, "reward", BAR_KEYS)
    after = _pair_scores(run_dir, "after", trainer, tokenizer, sample_pairs, args)
    records = run_dir.read_metrics()
    summary = trainer_summary(
        f"Reward model trained from `{args.model_name_or_path}` on the pairs of `{args.dataset}`.",
        trainer, records, interrupted, [f"- pairwise accuracy on the eval pairs, first -> last evaluation: {trend(records, 'eval_accuracy', 0)}"],
        config, ["learning_rate", "per_device_train_batch_size", "max_steps", "num_train_epochs", "max_length", "seed"],
    )
    table = [{"chosen": a["chosen"], "rejected": a["rejected"], "margin before": b["score_chosen"] - b["score_rejected"],
              "margin after": a["score_chosen"] - a["score_rejected"]} for b, a in zip(before, after)]
    written = finish_run(run_dir, Finish(
        command="reward", title=f"Reward model: {args.model_name_or_path}", summary=summary, plots=PLOTS,
        samples_table=table, samples_heading="Reward margins (chosen - rejected) before and after training",
        card_body=summary + "\n\nUse it as a PPO reward: `rlft ppo --reward <this run>/model`.",
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, steps=trainer.state.global_step, model_dir=str(run_dir.model_dir))


def _texts(args, row) -> tuple[str, str]:
    prompt = str(row[args.prompt_column]) if args.prompt_column and args.prompt_column in row else ""
    return prompt + str(row[args.chosen_column]), prompt + str(row[args.rejected_column])


def _pair_tokenizer(args, tokenizer):
    def tokenize(row):
        chosen, rejected = _texts(args, row)
        c, r = tokenizer(chosen), tokenizer(rejected)
        out = {"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
               "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]}
        if args.margin_column:
            out["margin"] = float(row[args.margin_column])
        return out

    return tokenize


def _pair_scores(run_dir, name, trainer, tokenizer, pairs, args, resume=False) -> list[dict]:
    """Rewards of the sample pairs under the trainer's model; saved as samples/<name>.jsonl (kept when resuming).

    Call it on every process: a sharded model (FSDP2, ZeRO-3, whose partitioned parameters cannot run a
    forward outside DeepSpeed's engine) is gathered once for the pairs (`_sharding.gathered_parameters`).
    """
    import torch

    from ..trainer._sharding import gathered_parameters

    if resume and run_dir.read_samples(name):
        return run_dir.read_samples(name)
    model = trainer.model
    was_training = model.training
    model.eval()
    rows = []
    with gathered_parameters(model, trainer.accelerator), torch.no_grad():
        for pair in pairs:
            chosen, rejected = _texts(args, pair)
            enc = tokenizer([chosen, rejected], return_tensors="pt", padding=True).to(model.device)
            scores = model(**enc).logits[:, 0].float().tolist()
            rows.append({"chosen": chosen, "rejected": rejected, "score_chosen": scores[0], "score_rejected": scores[1]})
    model.train(was_training)
    if rows:
        run_dir.save_samples(name, rows)
    return rows

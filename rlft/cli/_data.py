"""Data plumbing shared by the Trainer-based commands (sft, reward, dpo): splits, prompts and samples."""

from __future__ import annotations

from typing import Sequence

from ._args import CLIError
from ._load import generate_texts, load_rows


def train_eval(args, kind: str):
    """(train, eval or None) datasets from --dataset, --eval_dataset / --eval_fraction and --max_train_samples."""
    train = load_rows(args.dataset, args.dataset_split, kind=kind)
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    evaluation = None
    if args.eval_dataset:
        evaluation = load_rows(args.eval_dataset, args.dataset_split, kind=kind, option="--eval_dataset")
    elif args.eval_fraction:
        if not 0 < args.eval_fraction < 1:
            raise CLIError(f"--eval_fraction must lie in (0, 1), got {args.eval_fraction}.")
        n_eval = max(1, int(round(len(train) * args.eval_fraction)))
        if n_eval >= len(train):
            raise CLIError(f"--eval_fraction {args.eval_fraction} leaves no training data out of {len(train)} rows.")
        # The last rows, not a random draw: the split is the same in a resumed run and needs no seed.
        evaluation = train.select(range(len(train) - n_eval, len(train)))
        train = train.select(range(len(train) - n_eval))
    if len(train) == 0:
        raise CLIError(f"--dataset {args.dataset} has no rows.")
    return train, evaluation


def run_training_args(training_args, run_dir, evaluation):
    """The TrainingArguments the Trainer gets: checkpoints under the run's checkpoints/; evaluation exactly when there is an eval set."""
    from ._run import training_arguments_for_run

    import torch

    changes = {}
    if training_args.dataloader_pin_memory and not torch.accelerator.is_available():
        changes["dataloader_pin_memory"] = False  # pinned memory only helps copies to an accelerator; torch warns without one
    strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if evaluation is None and strategy != "no":
        changes["eval_strategy"] = "no"
    elif evaluation is not None and strategy == "no":
        changes["eval_strategy"] = "steps"  # an eval set was given: evaluate every eval_steps (default: logging_steps)
    return training_arguments_for_run(training_args, run_dir, **changes)


def text_prompts(texts: Sequence[str], tokenizer, n_tokens: int) -> list[str]:
    """The first ``n_tokens`` tokens of each text, as text (prompts for before/after samples)."""
    prompts = []
    for text in texts:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"][:n_tokens]
        prompts.append(tokenizer.decode(ids))
    return prompts


def lm_samples(run_dir, name: str, model, tokenizer, prompts: list[str], args, seed: int, resume: bool = False,
               accelerator=None) -> list[dict]:
    """Generate continuations of ``prompts`` and save them as samples/<name>.jsonl.

    With ``resume`` an existing file is kept (the "before" samples belong to the untrained model).
    Pass the trainer's ``accelerator`` once ``model`` may be sharded (every process then generates).
    """
    if not prompts:
        return []
    if resume and run_dir.read_samples(name):
        return run_dir.read_samples(name)
    texts = generate_texts(model, tokenizer, prompts, args.sample_max_new_tokens, seed, accelerator=accelerator)
    rows = [{"prompt": p, "completion": t} for p, t in zip(prompts, texts)]
    run_dir.save_samples(name, rows)
    return rows


def before_after(before: list[dict], after: list[dict], key: str = "completion") -> list[dict]:
    rows = []
    for i, a in enumerate(after):
        b = before[i] if i < len(before) else {}
        rows.append({"prompt": a["prompt"], "before training": b.get(key, ""), "after training": a[key]})
    return rows

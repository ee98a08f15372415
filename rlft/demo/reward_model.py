"""The learned reward: all-MiniLM-L6-v2 trained by rlft's RewardTrainer on fresh/rotten pairs.

Pairs are a fresh and a rotten snippet about the same film (chosen = fresh). To keep it cheap
on a CPU, the embeddings and the lower encoder layers stay frozen; the top layers, the pooler
and the scalar head train. Accuracy is reported on held-out films, next to VADER's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class RewardModelReport:
    pair_accuracy: float  # held-out pairs where r(fresh) > r(rotten)
    label_accuracy: float  # held-out snippets whose score sign (about the train median) matches fresh/rotten
    vader_pair_accuracy: float
    vader_label_accuracy: float  # sign of VADER compound vs the label (ties count as wrong)
    n_pairs: int
    n_snippets: int
    train_seconds: float
    train_steps: int
    threshold: float


class RewardScorer:
    """texts -> scalar rewards (batched, no grad), centred on the training median score."""

    def __init__(self, model, tokenizer, max_length: int = 64, batch_size: int = 64, offset: float = 0.0):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size, self.offset = max_length, batch_size, offset

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            out.extend((self.model(**enc).logits[:, 0] - self.offset).tolist())
        return out


def freeze_lower_layers(model, n_trainable_layers: int) -> None:
    """Freeze embeddings and all but the top ``n_trainable_layers`` encoder layers."""
    base = getattr(model, model.base_model_prefix, model)
    for p in base.embeddings.parameters():
        p.requires_grad_(False)
    layers = base.encoder.layer
    for layer in layers[: max(0, len(layers) - n_trainable_layers)]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _ProgressCallback():
    """A TrainerCallback drawing rlft's progress bar (steps, ETA, loss) while the reward model trains."""
    from transformers import TrainerCallback

    from ..reporting import TrainingProgress

    class Bar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = TrainingProgress(state.max_steps, desc="reward model", keys=("loss",)).__enter__()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(0, loss=logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return Bar()


def train_reward_model(
    encoder_dir,
    train_pairs: list[tuple[str, str]],
    heldout_pairs: list[tuple[str, str]],
    heldout_labelled: list[tuple[str, bool]],
    vader: Callable[[str], float],
    *,
    output_dir,
    epochs: float = 1.0,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    n_trainable_layers: int = 2,
    max_length: int = 64,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[RewardScorer, RewardModelReport]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..trainer import RewardConfig, RewardTrainer

    if not train_pairs or not heldout_pairs:
        raise ValueError("train_reward_model needs non-empty train and held-out pairs.")
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(getattr(model, model.base_model_prefix, model), "encoder"):
        freeze_lower_layers(model, n_trainable_layers)

    def tokenize(pairs):
        chosen = tokenizer([c for c, _ in pairs], truncation=True, max_length=max_length)
        rejected = tokenizer([r for _, r in pairs], truncation=True, max_length=max_length)
        return Dataset.from_dict(
            {
                "input_ids_chosen": chosen["input_ids"],
                "attention_mask_chosen": chosen["attention_mask"],
                "input_ids_rejected": rejected["input_ids"],
                "attention_mask_rejected": rejected["attention_mask"],
            }
        )

    args = RewardConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=5,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        max_length=max_length,
        gradient_checkpointing=False,  # RewardConfig's default (True, as in TRL) only costs time on a 22M model
        seed=seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=tokenize(train_pairs), processing_class=tokenizer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the demo prints its own one-line summary
    trainer.add_callback(_ProgressCallback())
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    log(f"reward model: {result.global_step} steps in {seconds:.0f} s, train loss {result.training_loss:.3f}")

    scorer = RewardScorer(trainer.model, tokenizer, max_length=max_length)
    # centre the reward on the median score of training snippets (both labels), so 0 = undecided
    sample = [t for pair in train_pairs[:256] for t in pair]
    offset = float(torch.tensor(scorer(sample)).median())
    scorer.offset = offset

    chosen = scorer([c for c, _ in heldout_pairs])
    rejected = scorer([r for _, r in heldout_pairs])
    pair_acc = sum(c > r for c, r in zip(chosen, rejected)) / len(heldout_pairs)
    vader_pair = sum(vader(c) > vader(r) for c, r in heldout_pairs) / len(heldout_pairs)
    texts = [t for t, _ in heldout_labelled]
    labels = [y for _, y in heldout_labelled]
    rm_scores = scorer(texts)
    label_acc = sum((s > 0) == y for s, y in zip(rm_scores, labels)) / len(labels)
    vader_label = sum((v > 0 if y else v < 0) for v, y in zip((vader(t) for t in texts), labels)) / len(labels)
    report = RewardModelReport(
        pair_accuracy=pair_acc,
        label_accuracy=label_acc,
        vader_pair_accuracy=vader_pair,
        vader_label_accuracy=vader_label,
        n_pairs=len(heldout_pairs),
        n_snippets=len(labels),
        train_seconds=seconds,
        train_steps=result.global_step,
        threshold=offset,
    )
    return scorer, report

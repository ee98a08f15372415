"""Collating preference pairs for the reward trainer, and its default metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: The columns a tokenised preference dataset must have (TRL 0.7's format).
REWARD_COLUMNS = ("input_ids_chosen", "attention_mask_chosen", "input_ids_rejected", "attention_mask_rejected")


@dataclass
class RewardDataCollatorWithPadding:
    """Pad chosen and rejected sequences of preference pairs into one batch.

    tokenizer: pads the two sides (its ``pad_token_id`` must be set).
    padding: passed to ``tokenizer.pad`` (True pads to the longest sequence of the batch).
    max_length: passed to ``tokenizer.pad``; padding only, never truncation.
    pad_to_multiple_of: passed to ``tokenizer.pad``.
    return_tensors: only "pt" is supported.

    Returns ``input_ids_chosen``, ``attention_mask_chosen``, ``input_ids_rejected``,
    ``attention_mask_rejected`` (each (B, L)), ``return_loss=True`` and, when every
    example has one, ``margin`` (B,).
    """

    tokenizer: Any
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.return_tensors != "pt":
            raise ValueError(f"RewardDataCollatorWithPadding only returns PyTorch tensors, got return_tensors={self.return_tensors!r}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("RewardDataCollatorWithPadding: the tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos_token).")
        missing = [c for c in REWARD_COLUMNS if c not in features[0]]
        if missing:
            raise ValueError(f"RewardDataCollatorWithPadding: features lack {missing}; found {sorted(features[0])}.")
        batch: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            padded = self.tokenizer.pad(
                [{"input_ids": f[f"input_ids_{side}"], "attention_mask": f[f"attention_mask_{side}"]} for f in features],
                padding=self.padding,
                max_length=self.max_length,
                pad_to_multiple_of=self.pad_to_multiple_of,
                return_tensors="pt",
            )
            batch[f"input_ids_{side}"] = padded["input_ids"]
            batch[f"attention_mask_{side}"] = padded["attention_mask"]
        has_margin = ["margin" in f for f in features]
        if any(has_margin) and not all(has_margin):
            raise ValueError("RewardDataCollatorWithPadding: some examples have a 'margin' and some do not.")
        if all(has_margin):
            batch["margin"] = torch.tensor([_margin_value(f["margin"], i) for i, f in enumerate(features)], dtype=torch.float)
        batch["return_loss"] = True
        return batch


def _margin_value(margin: Any, index: int) -> float:
    """One pair's margin as a float: a number, or a one-element list / array / tensor (TRL 0.7 stacked
    such margins as they came; datasets built with ``[[m] for m in ...]`` are common)."""
    values = np.asarray(margin.detach().cpu() if isinstance(margin, torch.Tensor) else margin, dtype=float).reshape(-1)
    if values.size != 1:
        raise ValueError(
            f"RewardDataCollatorWithPadding: example {index} has a margin with {values.size} values ({str(margin)[:60]}); "
            "give one number per pair (a float or a one-element list)."
        )
    return float(values[0])


def compute_accuracy(eval_pred) -> dict[str, float]:
    """Share of pairs whose predicted class is the label (RewardTrainer's default metric).

    ``eval_pred.predictions``: (B, 2) rewards of (chosen, rejected); ``eval_pred.label_ids``:
    (B,) index of the preferred column (all 0 for RewardTrainer). A tie counts as wrong
    (TRL 0.7's argmax counted it as right, so a constant model scored 100%).
    """
    predictions, labels = eval_pred
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if predictions.ndim != 2 or predictions.shape[1] != 2:
        raise ValueError(f"compute_accuracy expects predictions of shape (B, 2), got {predictions.shape}")
    picked = predictions[np.arange(len(labels)), labels]
    other = predictions[np.arange(len(labels)), 1 - labels]
    return {"accuracy": float(np.mean(picked > other))}

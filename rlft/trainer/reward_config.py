"""RewardConfig: TrainingArguments plus the reward trainer's own fields."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .._compat import translate_training_arguments, warn_once


@dataclass
class RewardConfig(TrainingArguments):
    """Training arguments of `RewardTrainer` (a ``transformers.TrainingArguments``).

    Accepts every field of today's TrainingArguments, plus the TRL 0.7 / transformers 4
    spellings listed in ``rlft._compat`` (mapped with one warning each).
    """

    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest pair side, in tokens. Longer pairs are dropped (and counted) before training; needed by the default collator."},
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={"help": "Recompute activations in the backward pass to save memory, at the cost of speed (TRL 0.7 default: True)."},
    )
    disable_dropout: bool = field(
        default=False,
        metadata={"help": "Set every dropout of the model to 0 before training. Default False: the model trains with its own "
                  "dropout, as in TRL 0.7.10 (newer TRL releases default to True). On CPU, attention dropout keeps "
                  "scaled_dot_product_attention off its fused kernel: True trains a small model up to 2x faster."},
    )

    def __post_init__(self):
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"RewardConfig.max_length must be a positive number of tokens or None, got {self.max_length}")
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing; the TRL
        # spelling is this config's documented field, so resolve it here without a warning.
        if self.activation_checkpointing is None and self.gradient_checkpointing is not None:
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()

    # TRL 0.7's reward_modeling.py turns evaluation on after parsing: ``config.evaluation_strategy = "steps"``.
    # transformers 5 calls the field eval_strategy; without this alias the assignment would be silently lost.
    @property
    def evaluation_strategy(self):
        """The transformers-4 name of ``eval_strategy`` (reading and assigning it map to ``eval_strategy``)."""
        return self.eval_strategy

    @evaluation_strategy.setter
    def evaluation_strategy(self, value) -> None:
        from transformers.trainer_utils import IntervalStrategy

        warn_once("RewardConfig.evaluation_strategy=", "RewardConfig: 'evaluation_strategy' is the transformers 4 name; "
                  "it sets 'eval_strategy' (mapped for you).")
        self.eval_strategy = IntervalStrategy(value)


_dataclass_init = RewardConfig.__init__


@functools.wraps(_dataclass_init)
def _init_accepting_old_spellings(self, *args, **kwargs):
    _dataclass_init(self, *args, **translate_training_arguments(kwargs, "RewardConfig"))


RewardConfig.__init__ = _init_accepting_old_spellings

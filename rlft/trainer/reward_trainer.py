"""RewardTrainer: train a scalar reward model on pairs of (chosen, rejected) sequences."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .._compat import resolve_processing_class
from ..data.dpo import pad_to_length
from ..data.packing import last_non_pad_positions, pack_padded
from ..data.reward import REWARD_COLUMNS, RewardDataCollatorWithPadding, compute_accuracy
from ..functional.reward import pairwise_reward_loss
from ..models._peft import wrap_peft
from ._helpers import PerModelCheck, disable_dropout_in_model, pad_with_mask
from ._step_kernels import StepKernelsMixin, step_kernels
from ._sharding import _zero3_partitioned, fsdp2_modules
from ._model_helpers import unwrap_base_model
from .reward_config import RewardConfig

#: Optional per-pair column: how much r_chosen should exceed r_rejected (Llama 2 reward loss).
MARGIN_COLUMN = "margin"


class RewardTrainer(StepKernelsMixin, Trainer):
    """Train a reward model (recommended: ``AutoModelForSequenceClassification`` with ``num_labels=1``).

    The dataset holds tokenised preference pairs in the columns ``input_ids_chosen``,
    ``attention_mask_chosen``, ``input_ids_rejected`` and ``attention_mask_rejected``, plus an
    optional ``margin`` column. The loss is ``-logsigmoid(r_chosen - r_rejected - margin)``
    (`rlft.functional.reward.pairwise_reward_loss`); evaluation reports pairwise accuracy.

    Parameters (as in TRL 0.7.10, plus ``processing_class``, transformers 5's name for ``tokenizer``):
        model: the reward model (PreTrainedModel or nn.Module) giving one logit per sequence.
        args: a `RewardConfig` (a plain ``TrainingArguments`` is accepted; ``max_length`` then
            comes from this trainer's ``max_length``). Default: ``RewardConfig("trainer_output")``.
        data_collator: default `RewardDataCollatorWithPadding` (needs a tokenizer with a pad token).
        train_dataset, eval_dataset: tokenised pair datasets (eval may be a dict of datasets).
        tokenizer: TRL 0.7's name for ``processing_class`` (mapped with one warning).
        model_init, compute_metrics (default `compute_accuracy`), callbacks, optimizers,
        preprocess_logits_for_metrics: as in ``transformers.Trainer``.
        max_length: deprecated in TRL 0.7 in favour of ``RewardConfig.max_length``; pairs with a
            side longer than this are dropped before training, and the count is reported.
        peft_config: a ``peft.PeftConfig``; the model is wrapped with ``get_peft_model`` (an
            existing adapter is merged first, with a warning: `rlft.models._peft.wrap_peft`).
        processing_class: the tokenizer.
        padding_free: score chosen and rejected in one forward without padding when that gives
            the padded forwards' rewards (checked once per model; default True). False: always
            the two padded forwards.

    Dropout: the model trains with its own dropout, as in TRL 0.7.10, unless
    ``RewardConfig(disable_dropout=True)`` (which newer TRL releases default to).
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: RewardConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        max_length: int | None = None,
        peft_config: Any = None,
        *,
        processing_class: Any = None,
        padding_free: bool = True,
    ):
        # check arguments
        processing_class = resolve_processing_class(tokenizer, processing_class, "RewardTrainer")
        if args is None:
            args = RewardConfig(output_dir="trainer_output")
        max_length = self._resolve_max_length(args, max_length)
        if model is None and model_init is None:
            raise ValueError("RewardTrainer needs a model (or a model_init).")

        # model
        if peft_config is not None:
            model = wrap_peft(model, peft_config, owner="RewardTrainer", gradient_checkpointing=args.gradient_checkpointing)
        if getattr(args, "disable_dropout", False):
            if model is not None:
                disable_dropout_in_model(model)
            if model_init is not None:
                model_init = _without_dropout(model_init)
        if model is not None and getattr(getattr(model, "config", None), "pad_token_id", "absent") is None:
            if processing_class is not None and processing_class.pad_token_id is not None:
                warnings.warn(
                    f"RewardTrainer: model.config.pad_token_id was None; set to the tokenizer's pad id "
                    f"{processing_class.pad_token_id} so batched sequences find their last token.",
                    UserWarning,
                    stacklevel=2,
                )
                model.config.pad_token_id = processing_class.pad_token_id

        # data
        if data_collator is None:
            if processing_class is None:
                raise ValueError("RewardTrainer: the default RewardDataCollatorWithPadding needs a tokenizer (processing_class=...).")
            if processing_class.pad_token_id is None:
                raise ValueError("RewardTrainer: the tokenizer has no pad token; set tokenizer.pad_token (e.g. = tokenizer.eos_token).")
            data_collator = RewardDataCollatorWithPadding(processing_class)
        self.num_dropped_too_long: dict[str, int] = {}
        train_dataset = self._check_and_filter(train_dataset, max_length, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._check_and_filter(v, max_length, f"eval[{k}]") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._check_and_filter(eval_dataset, max_length, "eval")
        self.max_length = max_length
        self.padding_free = padding_free
        self._packing_works = PerModelCheck(self._packing_probe)

        # optimizer and accelerator (transformers.Trainer)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics if compute_metrics is not None else compute_accuracy,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The pair loss is a batch mean, not a token sum: let Trainer divide it by the
        # accumulation steps, and keep the pair columns the model's forward does not name.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._signature_columns = [*REWARD_COLUMNS, MARGIN_COLUMN]

    # ----------------------------------------------------------------- setup

    @staticmethod
    def _resolve_max_length(args: TrainingArguments, max_length: int | None) -> int | None:
        config_length = getattr(args, "max_length", None)
        if max_length is not None:
            if config_length is not None and config_length != max_length:
                raise ValueError(
                    f"RewardTrainer: max_length={max_length} and args.max_length={config_length} disagree; set only RewardConfig.max_length."
                )
            if isinstance(args, RewardConfig):
                warnings.warn("RewardTrainer: pass max_length in RewardConfig (TRL 0.7 deprecated the trainer argument).", FutureWarning, stacklevel=3)
            return max_length
        return config_length

    def _check_and_filter(self, dataset, max_length: int | None, split: str):
        if dataset is None or not hasattr(dataset, "column_names"):
            return dataset  # torch datasets are the user's responsibility
        found = list(dataset.column_names)
        missing = [c for c in REWARD_COLUMNS if c not in found]
        if missing:
            raise ValueError(
                f"RewardTrainer: the {split} dataset lacks the columns {missing} (found {found}). "
                "Tokenise each pair into input_ids_chosen, attention_mask_chosen, input_ids_rejected and attention_mask_rejected."
            )
        _check_pair_rows(dataset, split)
        if max_length is None:
            return dataset
        before = len(dataset)
        dataset = dataset.filter(
            lambda ex: len(ex["input_ids_chosen"]) <= max_length and len(ex["input_ids_rejected"]) <= max_length
        )
        dropped = before - len(dataset)
        self.num_dropped_too_long[split] = dropped
        if dropped:
            warnings.warn(
                f"RewardTrainer: dropped {dropped} of {before} {split} pairs with a side longer than max_length={max_length} tokens.",
                UserWarning,
                stacklevel=3,
            )
        if len(dataset) == 0:
            raise ValueError(f"RewardTrainer: every {split} pair is longer than max_length={max_length}; raise max_length.")
        return dataset

    # ----------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Pairwise loss of one batch; with ``return_outputs`` also the rewards, each (B, 1).

        The rewards come from `_packed_rewards` (chosen and rejected in one forward, without
        padding) when it gives the model's own rewards (checked once per model), otherwise
        from `_padded_rewards` (two padded forwards, as TRL 0.7.10).
        """
        rewards = self._packed_rewards(model, inputs) if self._can_pack(model) else None
        rewards_chosen, rewards_rejected = rewards if rewards is not None else self._padded_rewards(model, inputs)
        loss, _ = pairwise_reward_loss(rewards_chosen, rewards_rejected, inputs.get(MARGIN_COLUMN))
        if return_outputs:
            return loss, {"rewards_chosen": rewards_chosen, "rewards_rejected": rewards_rejected}
        return loss

    @staticmethod
    def _padded_rewards(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1) rewards of the chosen and of the rejected sequences, one padded forward each."""
        rewards_chosen = model(
            input_ids=inputs["input_ids_chosen"], attention_mask=inputs["attention_mask_chosen"], return_dict=True
        )["logits"]
        rewards_rejected = model(
            input_ids=inputs["input_ids_rejected"], attention_mask=inputs["attention_mask_rejected"], return_dict=True
        )["logits"]
        return rewards_chosen, rewards_rejected

    @staticmethod
    def _packed_rewards(model, inputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`_padded_rewards` from one forward of the 2B sequences packed into fewer rows (`rlft.data.packing`).

        The backbone runs on the packed rows; the score head reads, for each sequence, the
        position the model's own pooling reads (its rightmost non-pad token). None when the
        batch is left-padded or packing saves no row.
        """
        inner = _peft_base(model)
        pad = inner.config.pad_token_id
        ids_c, ids_r = inputs["input_ids_chosen"], inputs["input_ids_rejected"]
        width = max(ids_c.shape[1], ids_r.shape[1])
        ids = torch.cat([pad_to_length(ids_c, width, pad), pad_to_length(ids_r, width, pad)])  # (2B, L)
        mask = torch.cat([pad_to_length(inputs["attention_mask_chosen"], width, 0),
                          pad_to_length(inputs["attention_mask_rejected"], width, 0)])  # (2B, L)
        if not bool(mask[:, 0].all()):
            return None  # left padding: the padded model's pooling can read a pad position
        packed = pack_padded(ids, mask, pad)
        if packed is None:
            return None
        hidden = inner.base_model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)[0]  # (K, L, d)
        pooled = hidden.reshape(-1, hidden.shape[-1])[last_non_pad_positions(packed, ids.shape[0], pad)]  # (2B, d)
        rewards = inner.score(pooled)  # (2B, 1)
        return rewards[: ids_c.shape[0]], rewards[ids_c.shape[0] :]

    def _can_pack(self, model) -> bool:
        """Whether `_packed_rewards` may stand in for `_padded_rewards` with this model.

        ``padding_free=False`` always takes the padded forwards; otherwise the answer of
        `_packing_probe`, computed once per model object (the per-step cost is one dictionary
        lookup: unwrapping a model through accelerate looks up installed packages every call).
        """
        return self.padding_free and self._packing_works(model)

    def _packing_probe(self, model) -> bool:
        """Needs an unwrapped (no DDP, no FSDP2, no ZeRO-3) model with a linear ``score`` head over ``base_model``
        and a pad token; then a probe batch must give the padded forwards' rewards."""
        if model is not self.accelerator.unwrap_model(model):
            return False
        if fsdp2_modules(model):  # the probe's direct backbone call would initialise an inner FSDP2 block as a root
            return False
        if _zero3_partitioned(model):  # ZeRO-3: a forward outside the engine would see empty partitions, and each
            return False  # process deciding alone would run forwards whose parameter gathers do not pair up
        inner = unwrap_base_model(model)
        pad = getattr(getattr(inner, "config", None), "pad_token_id", None)
        if pad is None or not isinstance(getattr(inner, "score", None), nn.Linear) or not hasattr(inner, "base_model"):
            return False
        vocab = getattr(inner.config, "vocab_size", 0) or 0
        if vocab < 3:
            return False
        device = next(inner.parameters()).device
        gen = torch.Generator().manual_seed(0)
        rows = []  # lengths 5, 3 (chosen) and 2, 4 (rejected); one ends with the pad id, as EOS-as-pad data does
        for length, last_pad in ((5, False), (3, False), (2, True), (4, False)):
            ids = torch.randint(0, vocab, (length,), generator=gen)
            ids[ids == pad] = (pad + 1) % vocab
            if last_pad:
                ids[-1] = pad
            rows.append(ids)

        def side(seqs):
            ids, mask = pad_with_mask(seqs, pad, "right")  # (2, L) each
            return ids.to(device), mask.to(device)

        (ic, mc), (ir, mr) = side(rows[:2]), side(rows[2:])
        probe = {"input_ids_chosen": ic, "attention_mask_chosen": mc, "input_ids_rejected": ir, "attention_mask_rejected": mr}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                packed = self._packed_rewards(model, probe)
                padded = self._padded_rewards(model, probe)
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
            return False
        finally:
            model.train(was_training)
        if packed is None:
            return False
        return all(torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-3) for a, b in zip(packed, padded))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss, (B, 2) rewards of (chosen, rejected), and labels (B,) = 0 (chosen is preferred); the linear
        layers on oneDNN (`step_kernels`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), step_kernels(self.accelerator, model):
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.cat([outputs["rewards_chosen"], outputs["rewards_rejected"]], dim=-1).detach()  # (B, 2)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss, logits, labels


def _without_dropout(model_init: Callable) -> Callable:
    """``model_init`` whose models come with every dropout at 0 (same signature, which Trainer inspects)."""

    @functools.wraps(model_init)
    def init(*args):
        model = model_init(*args)
        disable_dropout_in_model(model)
        return model

    return init


def _peft_base(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper. For a model that `RewardTrainer._can_pack` accepted
    (no DDP / DeepSpeed / compile wrapper), the same as `unwrap_base_model`: the one step of it the
    per-step path needs (its test counts that the per-step path calls neither unwrap)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _check_pair_rows(dataset, split: str) -> None:
    """Each side: a non-empty list of non-negative token ids with an attention mask of the same length."""
    row = 0
    for batch in dataset.iter(batch_size=1000):
        for side in ("chosen", "rejected"):
            for k, (ids, mask) in enumerate(zip(batch[f"input_ids_{side}"], batch[f"attention_mask_{side}"])):
                if not isinstance(ids, (list, tuple)) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
                    raise ValueError(
                        f"RewardTrainer: {split} pair {row + k}: input_ids_{side} must be a non-empty list of token ids "
                        f"(non-negative integers), got {str(ids)[:80]}."
                    )
                if not isinstance(mask, (list, tuple)) or len(mask) != len(ids) or any(v not in (0, 1) for v in mask):
                    raise ValueError(
                        f"RewardTrainer: {split} pair {row + k}: attention_mask_{side} must be 0/1 values of the length of "
                        f"input_ids_{side} ({len(ids)}), got {str(mask)[:80]}."
                    )
        row += len(batch["input_ids_chosen"])

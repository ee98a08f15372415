"""IterativeSFTTrainer: supervised steps on batches the user builds between optimisation steps."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from .._compat import resolve_processing_class
from ..data.sft import IGNORE_INDEX
from ._helpers import pad
from ._step_kernels import step_kernels

TRUNCATION_MODES = ("keep_end", "keep_start")


def _column_type() -> type:
    """``datasets``' Column (what ``dataset["column"]`` returns in datasets 4+), or a type nothing is."""
    try:
        from datasets.arrow_dataset import Column
    except ImportError:
        return type(None)
    return Column


class IterativeSFTTrainer(Trainer):
    """Fine-tune a model with `step` calls, leaving room for generation or filtering in between.

    Parameters (TRL 0.7.10's, plus ``processing_class``):
        model: an ``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM`` model.
        args: ``TrainingArguments`` (default: ``TrainingArguments("trainer_output")``). A tokenizer
            given here is taken as the tokenizer, so ``IterativeSFTTrainer(model, tokenizer)``
            from TRL's usage guide works as written.
        tokenizer: TRL 0.7's name for ``processing_class``; needs a pad token.
        optimizers: (optimizer, scheduler); default AdamW from ``args``, with a linear schedule
            over ``args.max_steps`` steps when that is set and a constant rate otherwise.
        data_collator: pads a list of {input_ids, attention_mask, labels}; default: our padding
            (labels padded with -100) for causal models, ``DataCollatorForSeq2Seq`` for seq2seq.
        eval_dataset: for ``evaluate()``.
        max_length: truncate inputs (and labels) to this many tokens (default None: no limit).
        truncation_mode: "keep_end" (keep the last tokens, default) or "keep_start".
        preprocess_logits_for_metrics, compute_metrics: as in ``transformers.Trainer``.
        optimize_device_cache: free cached device memory after each step (default False).
        processing_class: the tokenizer.
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        args: TrainingArguments | PreTrainedTokenizerBase | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        optimizers: tuple = (None, None),
        data_collator: Callable | None = None,
        eval_dataset: Any = None,
        max_length: int | None = None,
        truncation_mode: str | None = "keep_end",
        preprocess_logits_for_metrics: Callable | None = None,
        compute_metrics: Callable | None = None,
        optimize_device_cache: bool | None = False,
        *,
        processing_class: PreTrainedTokenizerBase | None = None,
    ):
        # check arguments
        if isinstance(args, PreTrainedTokenizerBase):
            # TRL's usage guide calls IterativeSFTTrainer(model, tokenizer).
            if tokenizer is not None or processing_class is not None:
                raise TypeError("IterativeSFTTrainer: a tokenizer was given both as args and as tokenizer/processing_class.")
            args, tokenizer = None, args
        processing_class = resolve_processing_class(tokenizer, processing_class, "IterativeSFTTrainer")
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        elif not isinstance(args, TrainingArguments):
            raise TypeError(f"IterativeSFTTrainer: args must be TrainingArguments (or a tokenizer), got {type(args).__name__}.")
        if model is None:
            raise ValueError("IterativeSFTTrainer needs a model.")
        if processing_class is None:
            raise ValueError("IterativeSFTTrainer needs a tokenizer (IterativeSFTTrainer(model, tokenizer) or processing_class=...).")
        if processing_class.pad_token_id is None:
            raise ValueError("IterativeSFTTrainer: the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token.")
        if truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"IterativeSFTTrainer: truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}.")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"IterativeSFTTrainer: max_length must be positive, got {max_length}.")

        # model
        self.is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))

        # data
        if data_collator is None:
            if self.is_encoder_decoder:
                data_collator = DataCollatorForSeq2Seq(processing_class, label_pad_token_id=IGNORE_INDEX)
            else:
                data_collator = self._pad_causal
        self.max_length = max_length
        self.truncation_mode = truncation_mode
        self.optimize_device_cache = bool(optimize_device_cache)

        # optimizer and accelerator
        super().__init__(
            model=model, args=args, data_collator=data_collator, eval_dataset=eval_dataset,
            processing_class=processing_class, compute_metrics=compute_metrics, optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.create_optimizer()
        if self.lr_scheduler is None:
            if args.max_steps > 0:
                self.create_scheduler(args.max_steps, optimizer=self.optimizer)
            else:
                # A linear decay over max_steps=-1 steps would set the rate to 0 from the start.
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        # The scheduler stays out of prepare: accelerate's wrapper steps it once per process, which on P processes
        # would run the schedule P times too fast for the same global batch (transformers' Trainer keeps it out too).
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._pending_losses: list[float] = []

    # ----------------------------------------------------------------- inputs

    def _pad_causal(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pad input_ids (pad id), attention_mask (0) and labels (-100) to the longest row."""
        side = getattr(self.processing_class, "padding_side", "right")
        return {
            "input_ids": pad([torch.as_tensor(f["input_ids"]) for f in features], self.processing_class.pad_token_id, side),
            "attention_mask": pad([torch.as_tensor(f["attention_mask"]) for f in features], 0, side),
            "labels": pad([torch.as_tensor(f["labels"]) for f in features], IGNORE_INDEX, side),
        }

    def _truncate(self, ids: torch.Tensor) -> torch.Tensor:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        return ids[-self.max_length :] if self.truncation_mode == "keep_end" else ids[: self.max_length]

    @staticmethod
    def _as_list(name: str, value, n: int | None = None, kind=torch.Tensor) -> list:
        """``value`` as a list of ``kind``, from any sequence TRL 0.7's list stood for.

        Accepted: a list or tuple, a ``datasets`` Column (what ``dataset["input_ids"]`` returns
        today), or, for token ids, a 2-D tensor (one row per example); token rows given as lists
        of ints become tensors.
        """
        if isinstance(value, torch.Tensor) and kind is torch.Tensor:
            if value.dim() != 2:
                raise TypeError(f"IterativeSFTTrainer.step: {name} as one tensor must be 2-D (examples, tokens), got shape {tuple(value.shape)}.")
            value = list(value)
        elif isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, (Sequence, _column_type())):
            raise TypeError(f"IterativeSFTTrainer.step: {name} must be a sequence (list, tuple, datasets Column), got {type(value).__name__}.")
        items = list(value)
        if kind is torch.Tensor:
            items = [torch.as_tensor(v) if isinstance(v, (list, tuple)) and all(isinstance(t, int) for t in v) else v for v in items]
        if not all(isinstance(v, kind) for v in items):
            raise TypeError(f"IterativeSFTTrainer.step: {name} must be a list of {kind.__name__} (or another sequence of them).")
        if n is not None and len(items) != n:
            raise ValueError(f"IterativeSFTTrainer.step: {name} has {len(items)} entries, expected {n}.")
        return items

    def _build_examples(self, input_ids, attention_mask, labels, texts, texts_labels) -> list[dict[str, torch.Tensor]]:
        """Validate the step inputs and turn them into one dict of 1-D tensors per example."""
        if (input_ids is None) == (texts is None):
            raise ValueError("IterativeSFTTrainer.step: pass either input_ids (lists of tensors) or texts (lists of str), not both or neither.")
        if texts is not None:
            if attention_mask is not None or labels is not None:
                raise ValueError("IterativeSFTTrainer.step: with texts, give labels as texts_labels (not attention_mask or labels).")
            texts = self._as_list("texts", texts, kind=str)
            if texts_labels is not None:
                texts_labels = self._as_list("texts_labels", texts_labels, len(texts), kind=str)
            enc = self.processing_class(texts)
            input_ids = [torch.tensor(x) for x in enc["input_ids"]]
            attention_mask = [torch.tensor(x) for x in enc["attention_mask"]]
            if texts_labels is not None:
                labels = [torch.tensor(x) for x in self.processing_class(texts_labels)["input_ids"]]
        else:
            if texts_labels is not None:
                raise ValueError("IterativeSFTTrainer.step: texts_labels goes with texts, not with input_ids.")
            input_ids = self._as_list("input_ids", input_ids)
            n = len(input_ids)
            if attention_mask is not None:
                attention_mask = self._as_list("attention_mask", attention_mask, n)
            if labels is not None:
                labels = self._as_list("labels", labels, n)
        if len(input_ids) == 0:
            raise ValueError("IterativeSFTTrainer.step: got an empty batch.")
        if attention_mask is None:
            attention_mask = [torch.ones_like(x) for x in input_ids]
        if labels is None:
            if self.is_encoder_decoder:
                raise ValueError("IterativeSFTTrainer.step: a seq2seq model needs labels (or texts_labels).")
            labels = [x.masked_fill(m == 0, IGNORE_INDEX) for x, m in zip(input_ids, attention_mask)]
        examples = []
        for i, (x, m, y) in enumerate(zip(input_ids, attention_mask, labels)):
            if x.numel() == 0:
                raise ValueError(f"IterativeSFTTrainer.step: example {i} is empty (no tokens; an empty text?). Drop it.")
            if x.shape != m.shape or (not self.is_encoder_decoder and x.shape != y.shape):
                raise ValueError(f"IterativeSFTTrainer.step: example {i} has input_ids {tuple(x.shape)}, attention_mask "
                                 f"{tuple(m.shape)}, labels {tuple(y.shape)}; causal models need equal lengths.")
            examples.append({"input_ids": self._truncate(x), "attention_mask": self._truncate(m), "labels": self._truncate(y)})
        return examples

    def prepare_model_inputs(self, input_ids, attention_mask=None, labels=None) -> dict[str, torch.Tensor]:
        """Turn one batch of per-example token tensors into padded model inputs on the model's device.

        The public helper of TRL 0.7.10's ``step``. input_ids, attention_mask, labels: sequences
        (as for `step`) of 1-D tensors; ``attention_mask`` defaults to all ones and ``labels`` to
        the input ids (causal models). Each example is truncated to ``max_length`` per
        ``truncation_mode``, then the data collator pads them. Returns ``input_ids``,
        ``attention_mask`` and ``labels`` (B, L), with -100 where no loss is taken.
        """
        examples = self._build_examples(input_ids, attention_mask, labels, None, None)
        batch = self.data_collator(examples)
        return {k: v.to(self.accelerator.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}

    # ----------------------------------------------------------------- step

    def step(self, input_ids=None, attention_mask=None, labels=None, texts=None, texts_labels=None) -> dict[str, Any]:
        """Run optimisation steps on one batch given as tensors or as texts.

        input_ids, attention_mask, labels: sequences (list, tuple, datasets Column, or a 2-D
        tensor) of 1-D LongTensors (labels default to input_ids for causal models; -100 marks
        tokens left out of the loss). texts, texts_labels: sequences of str instead (texts_labels default to the texts for causal models). Seq2seq models need
        labels or texts_labels. The batch is split into ``args.per_device_train_batch_size``
        minibatches; the optimiser steps every ``args.gradient_accumulation_steps`` of them.
        Returns {"loss", "learning_rate", "global_step", "num_minibatches"}. As in TRL 0.7,
        ``.grad`` is still set after the step (TRL's own tests read it): here it holds the
        gradients of the last optimiser step, cleared when the next accumulation cycle starts.
        """
        # 1. validate and tokenise
        examples = self._build_examples(input_ids, attention_mask, labels, texts, texts_labels)
        loader = DataLoader(examples, batch_size=self.args.per_device_train_batch_size, shuffle=True,
                            collate_fn=self.data_collator)
        if self.state.global_step == 0 and not self._pending_losses:
            self.callback_handler.on_train_begin(self.args, self.state, self.control)

        # 2. forward, backward and optimiser step per minibatch (fp32 CPU linear layers on oneDNN: `step_kernels`)
        self.model.train()
        losses, accumulation = [], max(1, self.args.gradient_accumulation_steps)
        with step_kernels(self.accelerator, self.model_wrapped):
            for k, batch in enumerate(loader):
                if k % accumulation == 0:
                    self.optimizer.zero_grad()  # a new accumulation cycle; the last one's gradients outlive step()
                batch = self._prepare_inputs(batch)
                loss = self.compute_loss(self.model_wrapped, batch)
                self.accelerator.backward(loss / accumulation)
                losses.append(loss.detach().float().item())
                if (k + 1) % accumulation == 0 or k + 1 == len(loader):
                    self._optimizer_step()

        # 3. stats, logging, device cache
        self._pending_losses.extend(losses)
        stats = {
            "loss": float(sum(losses) / len(losses)),
            "learning_rate": float(self.lr_scheduler.get_last_lr()[0]),
            "global_step": self.state.global_step,
            "num_minibatches": len(losses),
        }
        self._maybe_log()
        if self.optimize_device_cache:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return stats

    def _optimizer_step(self) -> None:
        if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.state.global_step += 1

    def _maybe_log(self) -> None:
        steps = self.args.logging_steps
        if steps and steps >= 1 and self.state.global_step % int(steps) == 0 and self._pending_losses:
            self.log({"loss": sum(self._pending_losses) / len(self._pending_losses),
                      "learning_rate": float(self.lr_scheduler.get_last_lr()[0])})
            self._pending_losses = []

    def train(self, *args, **kwargs):
        raise RuntimeError("IterativeSFTTrainer is driven by step(...); call trainer.step(texts=...) in your loop instead of train().")

"""SFTTrainer: supervised fine-tuning of causal language models on text, chat and instruction datasets."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset as TorchDataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from .._compat import resolve_processing_class
from ..data.packing import pack_padded, packed_attention_is_exact
from ..data.sft import IGNORE_INDEX, ConstantLengthDataset, DataCollatorForCausalLMKeepEOS
from ..extras.dataset_formatting import get_formatting_func_from_dataset
from ..models._peft import wrap_peft
from ._helpers import PerModelCheck
from ._step_kernels import StepKernelsMixin, step_kernels
from ._model_helpers import unwrap_base_model

#: Cap of max_seq_length when the user gives none: min(tokenizer.model_max_length, 1024), as TRL
#: 0.7.10's code did (its docs said 512, which is what the cap gives for a 512-token tokenizer).
MAX_SEQ_LENGTH_CAP = 1024

#: Keys accepted in ``dataset_kwargs`` and their defaults.
DATASET_KWARGS_DEFAULTS = {
    # let the tokenizer add BOS/EOS as it is configured to; None: yes for plain text, no for text
    # rendered by a chat template (the template writes the special tokens itself)
    "add_special_tokens": None,
    "append_concat_token": True,  # packing: put EOS between packed examples
    "reset_position_ids": True,  # packing: position ids restart per example (no cross-example attention)
    "add_eos_token": False,  # no packing: append EOS to texts that do not end with it
    "skip_prepare_dataset": False,  # the dataset is already tokenised: use it as is
}


class SFTTrainer(StepKernelsMixin, Trainer):
    """Supervised fine-tuning trainer (a ``transformers.Trainer``) for causal language models.

    Takes a text dataset and tokenises it (``packing=False``) or packs it into fixed-length
    chunks (``packing=True``, see `ConstantLengthDataset`). Labels keep the EOS token even
    when the pad token is EOS. Packed chunks carry position ids that restart at each example,
    so models whose attention mask follows position ids (llama, qwen2, gpt2, ... in
    transformers 5) do not attend across examples; ``dataset_kwargs={"reset_position_ids":
    False}`` gives plain concatenation.

    Without ``dataset_text_field`` and ``formatting_func``, a conversational dataset (a
    ``messages`` column of ``{"role", "content"}`` turns) or an instruction dataset (``prompt``
    and ``completion`` columns) is rendered with the tokenizer's chat template (see
    `rlft.extras.dataset_formatting.get_formatting_func_from_dataset`; `rlft.setup_chat_format`
    gives a tokenizer one).

    Parameters (TRL 0.7.10's, plus ``processing_class``):
        model: a PreTrainedModel, an ``nn.Module``, or a name/path loaded with
            ``AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)``.
        args: ``TrainingArguments`` (default: ``TrainingArguments("trainer_output")``).
        data_collator: default: padding collator (no packing) or stacking (packing).
        train_dataset, eval_dataset: ``datasets.Dataset`` of texts, a tokenised dataset, or a
            torch dataset such as `ConstantLengthDataset` (used as is); eval may be a dict.
        tokenizer: TRL 0.7's name for ``processing_class``; default: loaded from the model's path.
        model_init, compute_metrics, callbacks, optimizers, preprocess_logits_for_metrics: as in
            ``transformers.Trainer``.
        peft_config: a ``peft.PeftConfig``; the model is wrapped with ``get_peft_model``.
        dataset_text_field: name of the text column.
        packing: pack examples into chunks of ``max_seq_length`` tokens (default False).
        formatting_func: builds the text; per example when packing, per batch (returning a list
            of str) otherwise.
        max_seq_length: truncation / chunk length in tokens; None: ``min(tokenizer.model_max_length, 1024)``.
        infinite: packing only: repeat the dataset without end (keeps it an iterable; default False).
        num_of_sequences: packing buffer size in chunks (default 1024).
        chars_per_token: packing buffer estimate (default 3.6).
        dataset_num_proc: processes for tokenising (no packing).
        dataset_batch_size: examples per tokenising batch; <= 0 or None: the whole dataset.
        neftune_noise_alpha: NEFTune noise scale (Jain et al. 2023) for training forwards only.
        model_init_kwargs: keyword arguments for loading ``model`` when it is a string.
        dataset_kwargs: options for data preparation; keys in ``DATASET_KWARGS_DEFAULTS``.
        processing_class: the tokenizer.
        padding_free: let padded training batches go through the model without their padding
            when that gives the same loss (checked once per model; default True). False: always
            the plain padded forward.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
        dataset_text_field: str | None = None,
        packing: bool | None = False,
        formatting_func: Callable | None = None,
        max_seq_length: int | None = None,
        infinite: bool | None = None,
        num_of_sequences: int | None = 1024,
        chars_per_token: float | None = 3.6,
        dataset_num_proc: int | None = None,
        dataset_batch_size: int = 1000,
        neftune_noise_alpha: float | None = None,
        model_init_kwargs: dict | None = None,
        dataset_kwargs: dict | None = None,
        *,
        processing_class: Any = None,
        padding_free: bool = True,
    ):
        # check arguments
        processing_class = resolve_processing_class(tokenizer, processing_class, "SFTTrainer")
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        unknown = set(dataset_kwargs or {}) - set(DATASET_KWARGS_DEFAULTS)
        if unknown:
            raise TypeError(f"SFTTrainer: unknown dataset_kwargs {sorted(unknown)}; accepted: {sorted(DATASET_KWARGS_DEFAULTS)}.")
        data_options = {**DATASET_KWARGS_DEFAULTS, **(dataset_kwargs or {})}
        if max_seq_length is not None and max_seq_length <= 0:
            raise ValueError(f"SFTTrainer: max_seq_length must be positive, got {max_seq_length}.")
        if neftune_noise_alpha is not None and neftune_noise_alpha < 0:
            raise ValueError(f"SFTTrainer: neftune_noise_alpha must be >= 0, got {neftune_noise_alpha}.")

        # model
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, **(model_init_kwargs or {}))
        elif model_init_kwargs:
            raise ValueError("SFTTrainer: model_init_kwargs only apply when model is a name or path; the model is already built.")
        if peft_config is not None:
            model = wrap_peft(model, peft_config, owner="SFTTrainer", gradient_checkpointing=args.gradient_checkpointing)
        if model is None and model_init is None:
            raise ValueError("SFTTrainer: pass a model (object, name or path) or a model_init.")

        # tokenizer
        if processing_class is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", None)
            if not name:
                raise ValueError("SFTTrainer: no tokenizer given and the model has no path to load one from; pass processing_class=.")
            processing_class = AutoTokenizer.from_pretrained(name)
        if processing_class.pad_token is None:
            warnings.warn("SFTTrainer: the tokenizer has no pad token; using its EOS token for padding (EOS stays in the labels).", UserWarning, stacklevel=2)
            processing_class.pad_token = processing_class.eos_token
        if max_seq_length is None:
            max_seq_length = min(getattr(processing_class, "model_max_length", MAX_SEQ_LENGTH_CAP), MAX_SEQ_LENGTH_CAP)
            warnings.warn(f"SFTTrainer: max_seq_length not set; using {max_seq_length} tokens.", UserWarning, stacklevel=2)

        # data
        if packing and model is not None and not self._accepts_position_ids(model) and data_options["reset_position_ids"]:
            warnings.warn(f"SFTTrainer: {type(model).__name__}.forward takes no position_ids; packed examples are plainly concatenated.", UserWarning, stacklevel=2)
            data_options["reset_position_ids"] = False
        prepare = dict(
            tokenizer=processing_class, packing=bool(packing), dataset_text_field=dataset_text_field,
            formatting_func=formatting_func, max_seq_length=max_seq_length, infinite=bool(infinite),
            num_of_sequences=num_of_sequences, chars_per_token=chars_per_token, num_proc=dataset_num_proc,
            batch_size=dataset_batch_size, options=data_options,
        )
        train_dataset = self._prepare_dataset(train_dataset, split="train", **prepare)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, split=f"eval[{k}]", **{**prepare, "infinite": False}) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare_dataset(eval_dataset, split="eval", **{**prepare, "infinite": False})
        if data_collator is None:
            data_collator = default_data_collator if packing else DataCollatorForCausalLMKeepEOS(processing_class)
        self.packing = bool(packing)
        self.max_seq_length = max_seq_length
        self.dataset_text_field = dataset_text_field
        self.formatting_func = formatting_func
        self.padding_free = padding_free
        self._packing_is_exact = PerModelCheck(packed_attention_is_exact)
        self._takes_use_cache = PerModelCheck(_takes_use_cache)

        # optimizer and accelerator (transformers.Trainer)
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, model_init=model_init, compute_metrics=compute_metrics, callbacks=callbacks,
            optimizers=optimizers, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # transformers.Trainer attaches NEFTune's embedding hook at the start of train() and
        # removes it at the end; the hook only adds noise in training mode, so evaluation and
        # saved weights never see it.
        if neftune_noise_alpha is not None:
            self.neftune_noise_alpha = neftune_noise_alpha

    # ----------------------------------------------------------------- steps

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """transformers' evaluation step, with the fp32 CPU linear layers on oneDNN (`step_kernels`)."""
        with step_kernels(self.accelerator, model):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # ----------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """transformers' causal-LM loss; padded training batches go through the model without their padding.

        A right-padded batch of the default collator's keys is packed into fewer rows
        (`rlft.data.packing`) when the model keeps packed sequences apart (checked once): the
        loss sums the same (context, next token) pairs and divides by the same count, so it
        equals the padded loss. ``padding_free=False`` turns the re-layout off.
        """
        if not return_outputs and self._can_pack(model, inputs):
            inputs = self._packed_inputs(model, inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _can_pack(self, model, inputs) -> bool:
        if not self.padding_free or getattr(self, "neftune_noise_alpha", None) is not None:
            return False  # NEFTune's noise scale depends on the padded shape
        if set(inputs) != {"input_ids", "attention_mask", "labels"}:
            return False  # not the default collator's batch: leave it as it is
        mask = inputs["attention_mask"]
        if mask.dim() != 2 or bool(mask.all()) or not bool(mask[:, 0].all()):
            return False  # no padding, or left padding (whose shifted positions packing would not keep)
        if not self._accepts_position_ids(model):
            return False
        return self._packing_is_exact(model)

    def _packed_inputs(self, model, inputs: dict) -> dict:
        packed = pack_padded(inputs["input_ids"], inputs["attention_mask"], self.processing_class.pad_token_id or 0)
        if packed is None:
            return inputs
        labels = packed.gather(inputs["labels"], IGNORE_INDEX)  # (K, L)
        # The first token of an example is not predicted from the end of the one before it,
        # as no padded row predicts its first token.
        labels = labels.masked_fill(packed.starts, IGNORE_INDEX)
        out = {"input_ids": packed.input_ids, "position_ids": packed.position_ids, "labels": labels}
        if self._takes_use_cache(model):
            # With a KV cache (args.use_cache=True) transformers builds a plain causal mask and
            # packed examples would attend to each other.
            out["use_cache"] = False
        return out

    # ----------------------------------------------------------------- setup

    @staticmethod
    def _accepts_position_ids(model) -> bool:
        return "position_ids" in inspect.signature(unwrap_base_model(model).forward).parameters

    @staticmethod
    def _prepare_dataset(dataset, *, split, tokenizer, packing, dataset_text_field, formatting_func, max_seq_length,
                         infinite, num_of_sequences, chars_per_token, num_proc, batch_size, options):
        if dataset is None or isinstance(dataset, TorchDataset) and not hasattr(dataset, "column_names"):
            return dataset  # a torch dataset (e.g. ConstantLengthDataset) is used as is
        if options["skip_prepare_dataset"]:
            return dataset
        columns = list(getattr(dataset, "column_names", None) or [])
        if dataset_text_field is None and formatting_func is None:
            if "input_ids" in columns:
                return dataset  # already tokenised
            formatting_func = get_formatting_func_from_dataset(dataset, tokenizer)
            if formatting_func is None:
                raise ValueError(
                    f"SFTTrainer: the {split} dataset (columns {columns}) is not tokenised, conversational (a 'messages' "
                    "column of role/content turns) or instruction-shaped ('prompt' and 'completion' columns); pass "
                    "dataset_text_field (the text column) or formatting_func."
                )
            if options["add_special_tokens"] is None:
                # The chat template writes every special token the format wants; a tokenizer
                # that also prepended its BOS would double it (e.g. Llama with ChatML).
                options = {**options, "add_special_tokens": False}
        if options["add_special_tokens"] is None:
            options = {**options, "add_special_tokens": True}
        if formatting_func is None and columns and dataset_text_field not in columns:
            raise ValueError(f"SFTTrainer: the {split} dataset has no column {dataset_text_field!r}; its columns are {columns}.")
        if packing:
            packed = ConstantLengthDataset(
                tokenizer, dataset, dataset_text_field=dataset_text_field, formatting_func=formatting_func,
                infinite=infinite, seq_length=max_seq_length, num_of_sequences=num_of_sequences,
                chars_per_token=chars_per_token, shuffle=False, append_concat_token=options["append_concat_token"],
                add_special_tokens=options["add_special_tokens"], reset_position_ids=options["reset_position_ids"],
            )
            if infinite:
                return packed
            from datasets import Dataset

            rows = [{k: v.tolist() for k, v in chunk.items()} for chunk in packed]
            if not rows:
                raise ValueError(f"SFTTrainer: the {split} dataset holds fewer than max_seq_length={max_seq_length} tokens; nothing to pack.")
            return Dataset.from_list(rows)
        return SFTTrainer._tokenize(dataset, split, tokenizer, dataset_text_field, formatting_func, max_seq_length,
                                    num_proc, batch_size, options)

    @staticmethod
    def _tokenize(dataset, split, tokenizer, dataset_text_field, formatting_func, max_seq_length, num_proc, batch_size, options):
        eos = tokenizer.eos_token

        def texts_of(batch) -> list[str]:
            if formatting_func is not None:
                texts = formatting_func(batch)
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise TypeError(
                        f"SFTTrainer: with packing=False, formatting_func gets a batch (dict of lists) and must return a list of str; "
                        f"it returned {type(texts).__name__}."
                    )
            else:
                texts = batch[dataset_text_field]
                if not all(isinstance(t, str) for t in texts):
                    raise TypeError(f"SFTTrainer: column {dataset_text_field!r} must hold strings.")
            if options["add_eos_token"] and eos:
                texts = [t if t.endswith(eos) else t + eos for t in texts]
            return texts

        def tokenize(batch):
            enc = tokenizer(texts_of(batch), add_special_tokens=options["add_special_tokens"], truncation=True,
                            max_length=max_seq_length, padding=False, return_overflowing_tokens=False, return_length=False)
            if any(len(ids) == 0 for ids in enc["input_ids"]):
                raise ValueError(f"SFTTrainer: a {split} example tokenises to no tokens (an empty text); drop empty rows.")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

        return dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
            batch_size=batch_size if batch_size and batch_size > 0 else None,
        )


def _takes_use_cache(model) -> bool:
    """Whether the model's forward takes ``use_cache`` (by name or through ``**kwargs``)."""
    params = inspect.signature(unwrap_base_model(model).forward).parameters
    return "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

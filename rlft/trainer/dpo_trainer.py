"""`DPOTrainer`: direct preference optimisation (Rafailov et al. 2023) on a `transformers.Trainer`.

The math lives in `rlft.functional.dpo`; this file tokenises preference pairs,
runs chosen and rejected responses through the policy in one forward, gets the
reference log-probabilities (a frozen copy, a peft model with its adapter
switched off, or numbers precomputed once), and logs TRL 0.7.10's metrics.
"""

from __future__ import annotations

import contextlib
import gc
import random
import warnings
from collections import defaultdict
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from .._compat import resolve_processing_class, warn_once
from ..data.dpo import TRUNCATION_MODES, DPODataCollatorWithPadding, DPORowTokenizer, pad_to_length
from ..utils.sampling_generate import generate as sampling_generate
from ..data.packing import pack_padded, packed_attention_is_exact
from ..functional import dpo as F_dpo
from ..functional.logprobs import selected_log_probs
from ..models._peft import is_peft_model, wrap_peft
from . import _sharding
from ._helpers import PerModelCheck, disable_dropout_in_model, pad_token_id_or_eos
from ._step_kernels import StepKernelsMixin, step_kernels
from ._model_helpers import unwrap_base_model

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
#: Loss types scored on length-averaged log-probs: IPO's estimator (Azar et al. 2023, sec. 5.2)
#: averages over response tokens (TRL 0.7.10 summed them, fixed upstream later).
LENGTH_AVERAGED_LOSS_TYPES = ("ipo",)
#: TRL 0.7.10's fallbacks when no length limits are given (with a warning each).
DEFAULT_MAX_LENGTH = 512
DEFAULT_MAX_PROMPT_LENGTH = 128
DEFAULT_MAX_TARGET_LENGTH = 128
#: Trackers that take the generate_during_eval samples, and the columns of the sample table (TRL's).
SAMPLE_TRACKERS = ("wandb", "tensorboard")
SAMPLE_COLUMNS = ("Prompt", "Policy", "Ref Model")


class _UnsetPadding(int):
    """TRL 0.7.10's documented default ``padding_value=0``, told apart from an explicit 0.

    TRL padded ``input_ids`` with 0 unless told otherwise; 0 is a real token for
    most vocabularies. Left at this default, rlft pads with the tokenizer's pad
    id instead (what later TRL versions do). It compares and prints as 0 so that
    the documented signature is unchanged.
    """

    def __repr__(self) -> str:
        return "0"


_DEFAULT_PADDING_VALUE = _UnsetPadding(0)


class DPOTrainer(StepKernelsMixin, Trainer):
    r"""Train a language model on (prompt, chosen, rejected) triples with a preference loss.

    Args:
        model: the model to train (a `PreTrainedModel`, a hub/local path, or a peft model).
        ref_model: the frozen reference; when None, a frozen copy of ``model`` is made,
            unless ``model`` is a peft model (its adapter is switched off instead) or
            ``precompute_ref_log_probs`` is set.
        beta: the inverse KL strength of DPO (tau for IPO); default 0.1.
        label_smoothing: cDPO's probability that a preference label is flipped, in
            [0, 0.5]; default 0 (only with ``loss_type="sigmoid"``).
        loss_type: ``"sigmoid"`` (DPO), ``"hinge"`` (SLiC), ``"ipo"`` or ``"kto_pair"``.
        args: the `transformers.TrainingArguments`.
        data_collator: default `DPODataCollatorWithPadding`.
        label_pad_token_id: label of positions without loss; default -100.
        padding_value: pad id of ``input_ids``; left at its default, the tokenizer's pad id.
        truncation_mode: ``"keep_end"`` or ``"keep_start"``: which end of a too-long prompt stays.
        train_dataset, eval_dataset: datasets with ``prompt``, ``chosen`` and ``rejected`` text columns.
        tokenizer: the tokenizer (transformers 5 calls it ``processing_class``; both are accepted).
        model_init: a callable building the model, used when ``model`` is None.
        callbacks, optimizers, preprocess_logits_for_metrics, compute_metrics: as in `transformers.Trainer`.
        max_length: maximum prompt + response tokens; default 512.
        max_prompt_length: maximum prompt tokens; default 128.
        max_target_length: maximum response tokens of an encoder-decoder; default 128.
        peft_config: a peft config; ``model`` is then wrapped in a peft model (an existing
            adapter is merged first, with a warning: `rlft.models._peft.wrap_peft`).
        is_encoder_decoder: needed only when ``model`` is None; read from the model otherwise.
        disable_dropout: set dropout to 0 in ``model`` and ``ref_model``; default True.
        generate_during_eval: at each evaluation, sample completions of a random eval batch's
            prompts from the policy and the reference and log them: a wandb table
            ("game_log") when report_to has wandb, a text summary when it has tensorboard;
            with neither, nothing is generated and one warning says so.
        precompute_ref_log_probs: compute the reference log-probabilities of the train and
            eval data once, before training, then release the reference model.
        model_init_kwargs, ref_model_init_kwargs: passed to ``from_pretrained`` when
            ``model`` / ``ref_model`` are given as strings.
        model_adapter_name: the trained adapter of a peft model with several adapters.
        ref_adapter_name: the adapter of ``model`` that serves as reference.
        processing_class: the transformers 5 name of ``tokenizer``.
        padding_free: score decoder-only batches without their padding when the model keeps
            packed sequences apart (checked once per model; default True). False: always the
            padded forward.
    """

    _tag_names = ["rlft", "dpo"]

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        ref_model: PreTrainedModel | nn.Module | str | None = None,
        beta: float = 0.1,
        label_smoothing: float = 0,
        loss_type: Literal["sigmoid", "hinge", "ipo", "kto_pair"] = "sigmoid",
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        label_pad_token_id: int = F_dpo.IGNORE_INDEX,
        padding_value: int = _DEFAULT_PADDING_VALUE,
        truncation_mode: str = "keep_end",
        train_dataset: Any = None,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        max_target_length: int | None = None,
        peft_config: Any = None,
        is_encoder_decoder: bool | None = None,
        disable_dropout: bool = True,
        generate_during_eval: bool = False,
        compute_metrics: Callable | None = None,
        precompute_ref_log_probs: bool = False,
        model_init_kwargs: dict | None = None,
        ref_model_init_kwargs: dict | None = None,
        model_adapter_name: str | None = None,
        ref_adapter_name: str | None = None,
        *,
        processing_class: Any = None,
        padding_free: bool = True,
    ):
        # --- 1. check arguments -------------------------------------------------
        if loss_type not in F_dpo.LOSS_TYPES:
            raise ValueError(f"DPOTrainer: unknown loss_type {loss_type!r}; choose one of {', '.join(F_dpo.LOSS_TYPES)}.")
        if not 0 <= label_smoothing <= 0.5:
            raise ValueError(f"DPOTrainer: label_smoothing must lie in [0, 0.5], got {label_smoothing}.")
        if label_smoothing > 0 and loss_type != "sigmoid":
            raise ValueError(f"DPOTrainer: label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}.")
        if truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"DPOTrainer: truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}.")
        if beta <= 0:
            raise ValueError(f"DPOTrainer: beta must be positive, got {beta}.")
        tokenizer = resolve_processing_class(tokenizer, processing_class, "DPOTrainer")
        if tokenizer is None and data_collator is None:
            raise ValueError("DPOTrainer: a tokenizer (processing_class) is needed to tokenise the preference data.")
        if model_init_kwargs is not None and not isinstance(model, str):
            raise ValueError("DPOTrainer: model_init_kwargs is only used when model is a string (a path or hub id).")
        if ref_model_init_kwargs is not None and not isinstance(ref_model, str):
            raise ValueError("DPOTrainer: ref_model_init_kwargs is only used when ref_model is a string.")
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer", remove_unused_columns=False)
        elif args.remove_unused_columns:
            # The raw text and the pair's keys are not arguments of model.forward;
            # Trainer would drop them all. TRL 0.7.10 did the same, with this warning.
            warnings.warn(
                "DPOTrainer: setting args.remove_unused_columns=False (DPO batches hold keys model.forward does not take).",
                UserWarning,
                stacklevel=2,
            )
            args.remove_unused_columns = False

        # --- 2. models and reference ---------------------------------------------
        model = self._load_model(model, model_init_kwargs, model_init, is_encoder_decoder)
        if isinstance(ref_model, str):
            ref_model = self._load_model(ref_model, ref_model_init_kwargs, None, is_encoder_decoder)
        if ref_model is not None and ref_model is model:
            raise ValueError("DPOTrainer: model and ref_model are the same object; pass a separate copy or ref_model=None.")
        if peft_config is not None:
            model = wrap_peft(model, peft_config, owner="DPOTrainer", gradient_checkpointing=args.gradient_checkpointing)
        self.is_peft_model = is_peft_model(model)
        if (model_adapter_name or ref_adapter_name) and not self.is_peft_model:
            raise ValueError("DPOTrainer: model_adapter_name / ref_adapter_name need a peft model (or peft_config).")
        if ref_adapter_name is not None and ref_adapter_name not in model.peft_config:
            raise ValueError(f"DPOTrainer: ref_adapter_name {ref_adapter_name!r} is not an adapter of the model ({list(model.peft_config)}).")
        self.is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        if is_encoder_decoder is not None and bool(is_encoder_decoder) != self.is_encoder_decoder:
            raise ValueError(f"DPOTrainer: is_encoder_decoder={is_encoder_decoder} but the model's config says {self.is_encoder_decoder}.")
        if ref_model is not None:
            self.ref_model = ref_model
        elif self.is_peft_model or precompute_ref_log_probs:
            # The policy itself (adapter off, or before any update) is the reference.
            self.ref_model = None
        else:
            # A frozen deep copy; works for value-head wrappers and plain modules alike. Under ZeRO-3 the
            # policy was loaded partitioned (zero.Init), so the reference is loaded again, partitioned too.
            self.ref_model = _sharding.create_reference(model)
        if disable_dropout:
            disable_dropout_in_model(model)
            if self.ref_model is not None:
                disable_dropout_in_model(self.ref_model)

        # --- 3. hyperparameters --------------------------------------------------
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.loss_type = loss_type
        self.label_pad_token_id = label_pad_token_id
        self.truncation_mode = truncation_mode
        self.generate_during_eval = generate_during_eval
        self._sample_warnings: set[str] = set()
        self.precompute_ref_log_probs = precompute_ref_log_probs
        self.model_adapter_name = model_adapter_name
        self.ref_adapter_name = ref_adapter_name
        self.tokenizer = tokenizer
        self.max_length, self.max_prompt_length, self.max_target_length = self._resolve_lengths(
            max_length, max_prompt_length, max_target_length
        )
        self.padding_value = self._resolve_padding_value(padding_value, tokenizer)
        self.truncation_counts = {"prompt": 0, "response": 0, "rows": 0}
        self._stored_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._precomputed = False
        self._reference_released = False
        self.padding_free = padding_free
        self._packing_is_exact = PerModelCheck(packed_attention_is_exact)

        # --- 4. data -------------------------------------------------------------
        if data_collator is None:
            data_collator = DPODataCollatorWithPadding(
                pad_token_id=self.padding_value,
                label_pad_token_id=label_pad_token_id,
                is_encoder_decoder=self.is_encoder_decoder,
            )
            self.use_dpo_data_collator = True
        else:
            self.use_dpo_data_collator = False
        if tokenizer is not None:
            train_dataset = self._tokenize_dataset(train_dataset, "train")
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: self._tokenize_dataset(v, f"eval[{k}]") for k, v in eval_dataset.items()}
            else:
                eval_dataset = self._tokenize_dataset(eval_dataset, "eval")

        # --- 5. Trainer, accelerator, reference placement -------------------------
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # DPO's loss is a mean over pairs: no rescaling by a token count.
        self.model_accepts_loss_kwargs = False
        if self.ref_model is not None:
            # shard the reference like the policy: FSDP2, or DeepSpeed's inference engine under ZeRO-3
            if _sharding.fsdp2_modules(self.accelerator.unwrap_model(self.model)) or _sharding.is_zero3(self.accelerator):
                self.ref_model = _sharding.prepare_reference(self.ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _load_model(model: Any, init_kwargs: dict | None, model_init: Callable | None, is_encoder_decoder: bool | None):
        if model is None:
            if model_init is None:
                raise ValueError("DPOTrainer: pass a model (or a model_init callable that builds one).")
            return model_init()
        if isinstance(model, str):
            auto = AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM
            return auto.from_pretrained(model, **(init_kwargs or {}))
        return model

    def _resolve_lengths(self, max_length, max_prompt_length, max_target_length):
        if max_length is None:
            warnings.warn(f"DPOTrainer: max_length not set, using {DEFAULT_MAX_LENGTH}.", UserWarning, stacklevel=3)
            max_length = DEFAULT_MAX_LENGTH
        if max_prompt_length is None:
            max_prompt_length = min(DEFAULT_MAX_PROMPT_LENGTH, max_length // 2)
            warnings.warn(f"DPOTrainer: max_prompt_length not set, using {max_prompt_length}.", UserWarning, stacklevel=3)
        if max_target_length is None and self.is_encoder_decoder:
            warnings.warn(f"DPOTrainer: max_target_length not set, using {DEFAULT_MAX_TARGET_LENGTH}.", UserWarning, stacklevel=3)
            max_target_length = DEFAULT_MAX_TARGET_LENGTH
        if max_prompt_length >= max_length and not self.is_encoder_decoder:
            raise ValueError(
                f"DPOTrainer: max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length}), "
                "or no response token would fit."
            )
        for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length), ("max_target_length", max_target_length)):
            if value is not None and value < 1:
                raise ValueError(f"DPOTrainer: {name} must be positive, got {value}.")
        return max_length, max_prompt_length, max_target_length

    @staticmethod
    def _resolve_padding_value(padding_value: int, tokenizer: Any) -> int:
        if padding_value is not _DEFAULT_PADDING_VALUE:
            return int(padding_value)
        # Fixed upstream after 0.7.10: pad with the model's pad token, not with id 0.
        return pad_token_id_or_eos(tokenizer, default=0)

    def _tokenize_dataset(self, dataset: Any, split: str) -> Any:
        if dataset is None:
            return None
        columns = getattr(dataset, "column_names", None)
        if columns is None:
            raise TypeError(f"DPOTrainer: the {split} dataset must be a datasets.Dataset with prompt/chosen/rejected columns.")
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"DPOTrainer: the {split} dataset lacks column(s) {missing}; it has {columns}. "
                "Rename your columns to 'prompt', 'chosen' and 'rejected' (text)."
            )
        if len(dataset) == 0:
            raise ValueError(f"DPOTrainer: the {split} dataset is empty.")
        before = dict(self.truncation_counts)
        tokenized = dataset.map(self.tokenize_row, load_from_cache_file=False)
        cut_prompt = self.truncation_counts["prompt"] - before["prompt"]
        cut_resp = self.truncation_counts["response"] - before["response"]
        if cut_prompt or cut_resp:
            warnings.warn(
                f"DPOTrainer: in the {split} dataset, {cut_prompt} of {len(dataset)} prompts were truncated "
                f"({self.truncation_mode}, max_prompt_length={self.max_prompt_length}) and {cut_resp} chosen/rejected "
                f"responses were cut to fit max_length={self.max_length}. Raise the limits to keep them whole.",
                UserWarning,
                stacklevel=3,
            )
        return tokenized

    # ------------------------------------------------------------------ tokenisation
    def _row_tokenizer(self) -> DPORowTokenizer:
        """The row tokeniser for the current settings; it counts cuts into ``self.truncation_counts``."""
        return DPORowTokenizer(
            self.tokenizer, self.max_length, self.max_prompt_length, self.max_target_length, self.truncation_mode,
            self.label_pad_token_id, self.is_encoder_decoder, counts=self.truncation_counts,
        )

    def build_tokenized_answer(self, prompt: str, answer: str) -> dict[str, list[int]]:
        """Prompt and answer ids of ``prompt + answer``, split where the joint encoding puts the boundary
        (`rlft.data.dpo.DPORowTokenizer.build_tokenized_answer`)."""
        return self._row_tokenizer().build_tokenized_answer(prompt, answer)

    def tokenize_row(self, feature: dict[str, Any], model: PreTrainedModel | nn.Module | None = None) -> dict[str, Any]:
        """Tokenise one (prompt, chosen, rejected) row, truncated to the length limits (`rlft.data.dpo.DPORowTokenizer`).

        ``model`` (encoder-decoder only) supplies ``prepare_decoder_input_ids_from_labels``.
        """
        return self._row_tokenizer()(feature, model)

    # ------------------------------------------------------------------ reference
    @contextlib.contextmanager
    def null_ref_context(self):
        """Within this context the (peft) policy acts as the reference model.

        Without ``ref_adapter_name`` the adapter is switched off; with it, the
        reference adapter is made active and ``model_adapter_name`` (or
        ``"default"``) restored on exit. A no-op for non-peft models.
        """
        if not self.is_peft_model:
            yield
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.ref_adapter_name is None:
            with unwrapped.disable_adapter():
                yield
            return
        unwrapped.set_adapter(self.ref_adapter_name)
        try:
            yield
        finally:
            unwrapped.set_adapter(self.model_adapter_name or "default")

    def _reference_logps(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(B,) chosen and rejected reference log-probs of a collated batch, without gradient."""
        if self._reference_released:
            raise RuntimeError(
                "DPOTrainer: the reference model was released after precompute_ref_log_probs; pass every "
                "dataset you evaluate on as eval_dataset when constructing the trainer."
            )
        with torch.no_grad():
            if self.ref_model is None:
                with self.null_ref_context():
                    chosen, rejected, _, _ = self._sequence_logps(self.model, batch)
            else:
                chosen, rejected, _, _ = self._sequence_logps(self.ref_model, batch)
        return chosen.detach(), rejected.detach()

    def compute_reference_log_probs(self, padded_batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Reference log-probabilities (B,), (B,) of the chosen and rejected responses of one padded batch."""
        with self.compute_loss_context_manager(), step_kernels(self.accelerator, *self._step_models(self.model)):
            return self._reference_logps(padded_batch)

    def _precompute_reference(self) -> None:
        """Add ``reference_chosen_logps`` / ``reference_rejected_logps`` to the train and eval data, then free the reference.

        Both splits are done at once, before the first update: TRL 0.7.10 did the
        eval split lazily at the first evaluation, by which time a non-peft policy
        (its own reference here) had already moved.
        """
        if self._precomputed:
            return
        self.train_dataset = self._add_reference_columns(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._add_reference_columns(v, f"eval[{k}]") for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._add_reference_columns(self.eval_dataset, "eval")
        self._precomputed = True
        if not self.is_peft_model:
            # The numbers are all we need: release the reference (TRL kept it).
            self.ref_model = None
            self._reference_released = True
            gc.collect()

    def _add_reference_columns(self, dataset: Any, split: str) -> Any:
        if dataset is None or "reference_chosen_logps" in dataset.column_names:
            return dataset
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        chosen_all, rejected_all = [], []
        for batch in loader:
            chosen, rejected = self.compute_reference_log_probs(self._prepare_inputs(batch))
            chosen, rejected = self.accelerator.gather_for_metrics((chosen, rejected))
            chosen_all.append(chosen.float().cpu())
            rejected_all.append(rejected.float().cpu())
        dataset = dataset.add_column("reference_chosen_logps", torch.cat(chosen_all).tolist())
        return dataset.add_column("reference_rejected_logps", torch.cat(rejected_all).tolist())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """transformers' ``train``. Resuming with ``precompute_ref_log_probs`` and no reference model
        precomputes first: transformers loads the checkpoint's weights before it builds the loader,
        and the reference must be the initial policy, not the resumed one."""
        if self.precompute_ref_log_probs and resume_from_checkpoint:
            self._precompute_reference()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ data loaders
    def get_train_dataloader(self) -> DataLoader:
        """The training loader; with ``precompute_ref_log_probs`` the reference log-probs are computed first."""
        if self.precompute_ref_log_probs:
            self._precompute_reference()
        return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The evaluation loader (``eval_dataset`` overrides ``self.eval_dataset``); precomputes reference log-probs if asked."""
        if self.precompute_ref_log_probs:
            self._precompute_reference()
            if eval_dataset is not None and not isinstance(eval_dataset, str):
                eval_dataset = self._add_reference_columns(eval_dataset, "eval")
        return super().get_eval_dataloader(eval_dataset)

    # ------------------------------------------------------------------ forward
    @staticmethod
    def concatenated_inputs(
        batch: dict[str, Any],
        is_encoder_decoder: bool = False,
        label_pad_token_id: int = F_dpo.IGNORE_INDEX,
        padding_value: int = 0,
        device: torch.device | None = None,
    ) -> dict[str, Tensor]:
        """Stack chosen above rejected into ``concatenated_*`` tensors of shape (2B, L).

        Both halves are right-padded to the longer one: labels with
        ``label_pad_token_id``, ids with ``padding_value``, masks with 0. An
        encoder-decoder's prompt becomes ``concatenated_input_ids`` (repeated twice).
        """
        if is_encoder_decoder:
            length = max(batch["chosen_labels"].shape[1], batch["rejected_labels"].shape[1])
        else:
            length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

        def pad_value(key: str) -> int:
            if key.endswith("_labels"):
                return label_pad_token_id
            if key.endswith("_input_ids"):
                return padding_value
            return 0

        out: dict[str, Tensor] = {}
        for key, value in batch.items():
            if key.startswith("chosen") and isinstance(value, Tensor):
                chosen = pad_to_length(value, length, pad_value(key))  # (B, L)
                rejected = pad_to_length(batch["rejected" + key[len("chosen") :]], length, pad_value(key))  # (B, L)
                out["concatenated" + key[len("chosen") :]] = torch.cat((chosen, rejected), dim=0).to(device=device)  # (2B, L)
        if is_encoder_decoder:
            out["concatenated_input_ids"] = batch["prompt_input_ids"].repeat(2, 1).to(device=device)  # (2B, P)
            out["concatenated_attention_mask"] = batch["prompt_attention_mask"].repeat(2, 1).to(device=device)
        return out

    @staticmethod
    def get_batch_logps(
        logits: Tensor,
        labels: Tensor,
        average_log_prob: bool = False,
        label_pad_token_id: int = F_dpo.IGNORE_INDEX,
        is_encoder_decoder: bool = False,
    ) -> Tensor:
        """Per-sequence log-probability (B,) of ``labels`` (B, T) under ``logits`` (B, T, V), summed or averaged."""
        return F_dpo.sequence_log_probs(
            logits, labels, average=average_log_prob, label_pad_token_id=label_pad_token_id, is_encoder_decoder=is_encoder_decoder
        )

    @property
    def _average_log_prob(self) -> bool:
        """Whether this loss scores length-averaged sequence log-probs (see ``LENGTH_AVERAGED_LOSS_TYPES``)."""
        return self.loss_type in LENGTH_AVERAGED_LOSS_TYPES

    def concatenated_forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Score chosen and rejected responses in one forward of ``model``.

        Returns chosen_logps (B,), rejected_logps (B,), chosen_logits (B, T, V),
        rejected_logits (B, T, V). Log-probs are length-averaged for IPO.
        """
        cat = self.concatenated_inputs(
            batch,
            is_encoder_decoder=self.is_encoder_decoder,
            label_pad_token_id=self.label_pad_token_id,
            padding_value=self.padding_value,
            device=self.accelerator.device,
        )
        n_chosen = batch["chosen_labels"].shape[0]
        labels = cat["concatenated_labels"]  # (2B, T)
        if self.is_encoder_decoder:
            decoder_input_ids = cat.get("concatenated_decoder_input_ids")
            if decoder_input_ids is None:
                decoder_input_ids = unwrap_base_model(model).prepare_decoder_input_ids_from_labels(labels=labels)  # (2B, T)
            logits = model(
                input_ids=cat["concatenated_input_ids"],
                attention_mask=cat["concatenated_attention_mask"],
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
            ).logits  # (2B, T, V)
        else:
            logits = model(
                input_ids=cat["concatenated_input_ids"],
                attention_mask=cat["concatenated_attention_mask"],
                use_cache=False,
            ).logits  # (2B, T, V)
        logps = self.get_batch_logps(
            logits,
            labels,
            average_log_prob=self._average_log_prob,
            label_pad_token_id=self.label_pad_token_id,
            is_encoder_decoder=self.is_encoder_decoder,
        )  # (2B,)
        return logps[:n_chosen], logps[n_chosen:], logits[:n_chosen], logits[n_chosen:]

    def _sequence_logps(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Chosen and rejected log-probs (B,), (B,) and their mean response logits (two scalars).

        `_packed_forward` (no padding through the model) when it applies, `concatenated_forward`
        otherwise; the two agree up to float rounding (tests/trainer/test_dpo_padding_free.py).
        """
        if self._can_pack(model):
            packed = self._packed_forward(model, batch)
            if packed is not None:
                return packed
        chosen, rejected, chosen_logits, rejected_logits = self.concatenated_forward(model, batch)
        mean_logit = lambda logits, labels: F_dpo.mean_label_logit(  # noqa: E731
            logits, pad_to_length(labels.to(logits.device), logits.shape[1], self.label_pad_token_id),
            label_pad_token_id=self.label_pad_token_id, is_encoder_decoder=self.is_encoder_decoder,
        )
        return chosen, rejected, mean_logit(chosen_logits, batch["chosen_labels"]), mean_logit(rejected_logits, batch["rejected_labels"])

    def _can_pack(self, model: nn.Module) -> bool:
        """Whether `_packed_forward` may stand in for `concatenated_forward` with this model.

        Decoder-only models with the default collator, no subclass override of the forward,
        and attention that keeps packed sequences apart (checked once per model).
        ``padding_free=False`` always takes the padded forward.
        """
        if not self.padding_free or self.is_encoder_decoder or not self.use_dpo_data_collator:
            return False
        cls = type(self)
        if (cls.concatenated_forward, cls.concatenated_inputs, cls.get_batch_logps) != (
            DPOTrainer.concatenated_forward, DPOTrainer.concatenated_inputs, DPOTrainer.get_batch_logps,
        ):
            return False  # a subclass customised the forward: honour it
        return self._packing_is_exact(model)

    def _packed_forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """`concatenated_forward`'s log-probs with the 2B sequences packed into fewer rows (`rlft.data.packing`).

        Every response token is scored with the same context as in the padded forward, and
        only response positions reach the log-softmax. Returns chosen and rejected log-probs
        (B,) and the mean response logit of each half; None when packing saves no row.
        """
        cat = self.concatenated_inputs(
            batch, is_encoder_decoder=False, label_pad_token_id=self.label_pad_token_id,
            padding_value=self.padding_value, device=self.accelerator.device,
        )
        packed = pack_padded(cat["concatenated_input_ids"], cat["concatenated_attention_mask"], self.padding_value)
        if packed is None:
            return None
        labels = cat["concatenated_labels"]  # (2B, T)
        n, n_chosen = labels.shape[0], batch["chosen_labels"].shape[0]
        out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out[0]  # (K, T, V)
        # Position t of a sequence scores its label t + 1, as the decoder-only shift in sequence_log_probs.
        next_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], self.label_pad_token_id)], dim=1)  # (2B, T)
        targets = packed.gather(next_labels, self.label_pad_token_id)  # (K, T)
        keep = targets != self.label_pad_token_id  # (K, T)
        kept_logits = logits[keep]  # (M, V): response positions only
        token_logps = selected_log_probs(kept_logits, targets[keep])  # (M,)
        owner = packed.seq[keep]  # (M,) which of the 2B sequences each token belongs to
        logps = token_logps.new_zeros(n).index_add(0, owner, token_logps)  # (2B,)
        if self._average_log_prob:  # length-averaged, as concatenated_forward
            logps = logps / torch.zeros_like(logps).index_add(0, owner, torch.ones_like(token_logps)).clamp(min=1)
        row_means = kept_logits.detach().float().mean(-1)  # (M,)
        is_chosen = owner < n_chosen
        return logps[:n_chosen], logps[n_chosen:], row_means[is_chosen].mean(), row_means[~is_chosen].mean()

    # ------------------------------------------------------------------ loss
    def dpo_loss(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor,
        reference_free: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The configured preference loss: (losses, chosen_rewards, rejected_rewards), see `rlft.functional.dpo.dpo_loss`."""
        return F_dpo.dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps.to(policy_chosen_logps.device),
            reference_rejected_logps.to(policy_rejected_logps.device),
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            reference_free=reference_free,
        )

    def get_batch_loss_metrics(
        self, model: nn.Module, batch: dict[str, Any], train_eval: Literal["train", "eval"] = "train"
    ) -> tuple[Tensor, dict[str, float]]:
        """Mean DPO loss of a batch and TRL's metrics (``eval_``-prefixed in evaluation)."""
        # 1. policy log-probs, chosen and rejected in one forward
        policy_chosen, policy_rejected, chosen_logit, rejected_logit = self._sequence_logps(model, batch)
        # 2. reference log-probs: precomputed columns, or a forward without gradient
        if "reference_chosen_logps" in batch and "reference_rejected_logps" in batch:
            ref_chosen, ref_rejected = batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self._reference_logps(batch)
        # 3. loss and implicit rewards
        losses, chosen_rewards, rejected_rewards = self.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        # 4. metrics under TRL 0.7.10's names
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            f"{prefix}rewards/chosen": chosen_rewards.mean().item(),
            f"{prefix}rewards/rejected": rejected_rewards.mean().item(),
            f"{prefix}rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            f"{prefix}rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            f"{prefix}logps/rejected": policy_rejected.detach().mean().item(),
            f"{prefix}logps/chosen": policy_chosen.detach().mean().item(),
            f"{prefix}logits/rejected": rejected_logit.item(),
            f"{prefix}logits/chosen": chosen_logit.item(),
        }
        return losses.mean(), metrics

    def _step_models(self, model: nn.Module) -> tuple[nn.Module | None, ...]:
        """`StepKernelsMixin`: a step runs the policy and the reference (None with peft: the policy itself)."""
        return (model, self.ref_model)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):
        """Trainer hook: the DPO loss of ``inputs`` (``num_items_in_batch`` is unused: the loss is a mean over pairs)."""
        if not self.use_dpo_data_collator:
            warn_once(
                "DPOTrainer.custom_collator",
                "DPOTrainer: compute_loss expects batches shaped like DPODataCollatorWithPadding's; check your data_collator.",
                UserWarning,
            )
        with self.compute_loss_context_manager():
            loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="train")
        self.store_metrics(metrics, train_eval="train")
        if return_outputs:
            return loss, metrics
        return loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ):
        """Evaluation step: (loss, logits summary, dummy labels) with the metrics stored for `log`; the linear
        layers of the policy and the reference on oneDNN (`step_kernels`)."""
        if ignore_keys is None:
            ignore_keys = list(getattr(getattr(model, "config", None), "keys_to_ignore_at_inference", []) or [])
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager(), step_kernels(self.accelerator, *self._step_models(model)):
            loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="eval")
        self.store_metrics(metrics, train_eval="eval")
        if prediction_loss_only:
            return loss.detach(), None, None
        # As TRL: "logits" are the two mean-logit metrics, labels a dummy zero per entry.
        summary = [metrics[k] for k in ("eval_logits/chosen", "eval_logits/rejected") if k not in ignore_keys]
        logits = torch.tensor(summary, device=self.accelerator.device)
        labels = torch.zeros(logits.shape[0], device=self.accelerator.device)
        return loss.detach(), logits, labels

    # ------------------------------------------------------------------ logging
    def store_metrics(self, metrics: dict[str, float], train_eval: Literal["train", "eval"] = "train") -> None:
        """Keep ``metrics`` until the next `log` call averages them."""
        for key, value in metrics.items():
            self._stored_metrics[train_eval][key].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averages of the stored DPO metrics to ``logs`` and hand them to the Trainer's loggers."""
        train_eval = "train" if "loss" in logs else "eval"
        for key, values in self._stored_metrics[train_eval].items():
            logs[key] = sum(values) / len(values)
        self._stored_metrics.pop(train_eval, None)
        return super().log(logs, start_time)

    # ------------------------------------------------------------------ generation
    def get_batch_samples(self, model: Any, batch: Any, device: torch.device | None = None):
        """Sample completions of the batch's prompts from the policy and from the reference.

        Returns (policy_texts, reference_texts). transformers 5's Trainer uses the
        same method name for ``(epoch_iterator, num_batches, device)``; such calls
        (an int second argument) are passed on to it.
        """
        if isinstance(batch, int) or device is not None:
            return super().get_batch_samples(model, batch, device)
        pad_id = self.padding_value
        gen_kwargs = dict(
            input_ids=batch["prompt_input_ids"],
            attention_mask=batch["prompt_attention_mask"],
            max_length=self.max_length,
            do_sample=True,
            pad_token_id=pad_id,
        )
        unwrapped = self.accelerator.unwrap_model(model)
        # sharded (FSDP2 / ZeRO-3): each model's parameters gathered once for its generate call
        with torch.no_grad(), self.compute_loss_context_manager():
            with _sharding.gathered_parameters(unwrapped, self.accelerator):
                policy_out = sampling_generate(unwrapped, **gen_kwargs)
            if self.ref_model is None:
                if self._reference_released:
                    reference_out = None
                else:
                    with self.null_ref_context(), _sharding.gathered_parameters(unwrapped, self.accelerator):
                        reference_out = sampling_generate(unwrapped, **gen_kwargs)
            else:
                reference = self.accelerator.unwrap_model(self.ref_model)
                with _sharding.gathered_parameters(reference, self.accelerator):
                    reference_out = sampling_generate(reference, **gen_kwargs)
        decode = lambda ids: self.tokenizer.batch_decode(pad_to_length(ids, self.max_length, pad_id), skip_special_tokens=True)  # noqa: E731
        return decode(policy_out), (decode(reference_out) if reference_out is not None else [])

    def _sample_trackers(self) -> list[str]:
        """The trackers in ``args.report_to`` that take text: wandb (a table) and tensorboard (a text summary)."""
        report_to = self.args.report_to or []
        report_to = [report_to] if isinstance(report_to, str) else list(report_to)
        return [name for name in SAMPLE_TRACKERS if name in report_to]

    def _warn_samples_once(self, reason: str) -> None:
        # One warning per trainer, not per evaluation: an eval every N steps would repeat it.
        if reason not in self._sample_warnings:
            self._sample_warnings.add(reason)
            warnings.warn(f"DPOTrainer: generate_during_eval=True but {reason}", UserWarning, stacklevel=4)

    def _log_samples(self, dataloader: DataLoader) -> None:
        """Generate from the policy and the reference for a random eval batch and send a table to the trackers."""
        trackers = self._sample_trackers()
        if not trackers:
            self._warn_samples_once(
                "no tracker that takes text is in use (report_to has neither wandb nor tensorboard); samples are not generated."
            )
            return
        dataset = dataloader.dataset
        n = min(self.args.eval_batch_size, len(dataset))
        rows = [dataset[i] for i in random.sample(range(len(dataset)), k=n)]
        batch = self._prepare_inputs(self.data_collator(rows))
        policy_texts, reference_texts = self.get_batch_samples(self.model, batch)
        reference_texts = reference_texts or [""] * len(policy_texts)
        # decoder-only generations start with the prompt: keep only the continuation
        table = [
            [prompt, pol[len(prompt) :], ref[len(prompt) :]]
            for prompt, pol, ref in zip(batch["prompt"], policy_texts, reference_texts)
        ]
        self.last_eval_samples = table
        if "wandb" in trackers:
            self._log_samples_wandb(table)
        if "tensorboard" in trackers:
            self._log_samples_tensorboard(table)

    def _log_samples_wandb(self, table: list[list[str]]) -> None:
        import wandb

        if wandb.run is None:
            self._warn_samples_once("the wandb run has not started yet (it starts with train()); samples are not logged to wandb.")
            return
        wandb.log({"game_log": wandb.Table(columns=list(SAMPLE_COLUMNS), rows=table)})

    def _log_samples_tensorboard(self, table: list[list[str]]) -> None:
        writers = []
        for callback in self.callback_handler.callbacks:
            if not hasattr(callback, "tb_writer"):
                continue
            if callback.tb_writer is None and hasattr(callback, "_init_summary_writer"):
                callback._init_summary_writer(self.args)  # what its on_log does before the first log
            if callback.tb_writer is not None:
                writers.append(callback.tb_writer)
        if not writers:
            self._warn_samples_once("report_to has tensorboard but no TensorBoard writer was found; samples are not logged.")
            return
        # Markdown, which TensorBoard's text plugin renders: one section per sample.
        text = "\n\n".join(
            f"**{SAMPLE_COLUMNS[0]}** {p}\n\n**{SAMPLE_COLUMNS[1]}** {a}\n\n**{SAMPLE_COLUMNS[2]}** {b}" for p, a, b in table
        )
        for writer in writers:
            writer.add_text("eval/game_log", text, self.state.global_step)

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        """The Trainer's evaluation loop, preceded by sample logging when ``generate_during_eval``."""
        if self.generate_during_eval:
            self._log_samples(dataloader)
        return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)


"""PPOTrainer: the user-driven RL loop of TRL 0.7 (`generate`, then `step(queries, responses, scores)`).

The user owns generation and scoring; `step` does the rest, through the methods TRL 0.7 users
override in subclasses (Ziegler et al. 2019 for PPO; docs/critic_free.md for the other estimators):

    1. validate the inputs, prepare the scores (scaling, normalisation, clipping)
    2. `batched_forward_pass`: policy log-probs and values (or `generate`'s record of them), reference log-probs (no autograd)
    3. `compute_rewards`: the per-token KL estimate and rewards (-beta * KL, the score on the last token)
    4. `compute_advantages`: GAE with the value head, or a critic-free estimator (GRPO, Dr. GRPO, RLOO, REINFORCE++)
    5. PPO epochs over shuffled minibatches: `batched_forward_pass` with gradients, `train_minibatch` -> `loss`
    6. `record_step_stats`, the KL controller and the learning-rate schedule

Everything is computed in *response space*: tensors of shape (B, T) where T is the longest
response in the batch (minus its decoder-start token for encoder-decoders). Position t holds
the log-probability of response token t and the value of the state before it. The formulas
live in `rlft.functional`; input checks in `_ppo_inputs`, statistics in `_ppo_stats`, the
containers in `_ppo_types`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..core import free_device_cache, set_seed
from ..functional import masked_mean
from ..functional.critic_free import (
    aggregate_loss,
    clipped_policy_loss,
    discounted_returns,
    kl_k3,
    sequence_advantages,
    sequence_to_token,
)
from ..functional.logprobs import selected_log_probs
from ..functional.ppo import (
    gae,
    kl_full,
    kl_penalty,
    per_token_rewards,
    policy_loss,
    value_loss,
)
from ..models import SUPPORTED_ARCHITECTURES, PreTrainedModelWrapper
from ..models.modeling_base import is_peft_model
from ..utils.faults import NonFiniteGuard
from ..utils.resumable import ResumableDataLoader, ResumableSampler
from ..utils.running import RunningMoments
from ..utils.tied_embedding import (
    densify_grad,
    lookup_grad_in_place,
    sparse_embedding_grad,
    tied_trainable_input_embedding,
)
from . import _distributed, _ppo_stats, _sharding
from ._helpers import (
    disable_dropout_in_model,
    eos_token_ids,
    pad_token_id_or_eos,
    pad_with_mask,
)
from ._model_helpers import unwrap_base_model, unwrap_parallel
from ._ppo_checkpoint import PPOCheckpointMixin
from ._ppo_forward import BehaviourRecorder, forward_actions, pad_batch
from ._ppo_guards import PPOGuardsMixin, gradients_finite
from ._ppo_helpers import (
    accepted_kwargs,
    build_dataloader,
    cat_padded,
    check_policy,
    collate,
    default_optimizer,
    generate_responses,
    out_of_memory_hint,
    tracker_init_kwargs,
)
from ._ppo_inputs import InputLimits, check_queries, validate_step_inputs
from ._ppo_logging import PPOLoggingMixin
from ._ppo_types import (
    BehaviourCache,
    EpochsResult,
    MinibatchSignals,
    PaddedBatch,
    Rollout,
    StepInputs,
)
from ._step_kernels import step_kernels
from .base import BaseTrainer
from .kl_control import AdaptiveKLController, FixedKLController
from .ppo_config import GROUP_ESTIMATORS, PPOConfig

logger = logging.getLogger(__name__)

#: Added to the running score std before dividing by it.
SCORE_SCALING_EPS = torch.finfo(torch.float32).eps


_FP16_NEEDS_CUDA = (
    "PPOConfig.mixed_precision='fp16' needs a CUDA device (float16 autocast with a gradient scaler); on CPU use "
    "mixed_precision='bf16' (bfloat16 autocast, no scaler needed) or 'no' (fp32)."
)
#: Autocast dtype of each ``mixed_precision`` (None: no autocast).
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _resolve_mixed_precision(requested: str | None, accelerator) -> str:
    """The trainer's precision: the config's request, else accelerate's own setting (``accelerate launch
    --mixed_precision``). A request that contradicts a non-fp32 setting of accelerate is refused: accelerate
    wraps the policy's forward in its own autocast, which the trainer's could not override."""
    launched = accelerator.mixed_precision
    if requested is not None and launched != "no" and launched != requested:
        raise ValueError(
            f"PPOConfig.mixed_precision={requested!r} but accelerate is set to mixed_precision={launched!r} "
            "(accelerate launch --mixed_precision, ACCELERATE_MIXED_PRECISION, or an earlier fp16 Accelerator in this "
            "process): set only one of them."
        )
    resolved = requested if requested is not None else launched
    if resolved not in AUTOCAST_DTYPES:
        raise ValueError(f"mixed_precision={resolved!r} is not supported by PPOTrainer; use one of {tuple(AUTOCAST_DTYPES)}.")
    if resolved == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(_FP16_NEEDS_CUDA)
    return resolved


def _lm(model):
    """The language model inside a value-head wrapper, or the model itself (plain or peft). It stops at the
    peft wrapper, unlike `unwrap_base_model`: the reference of a peft policy is its ``disable_adapter()``."""
    return getattr(model, "pretrained_model", model)


class PPOTrainer(PPOCheckpointMixin, PPOGuardsMixin, PPOLoggingMixin, BaseTrainer):
    """Proximal Policy Optimization (and critic-free policy gradients) for language models.

    Args:
        config: the `PPOConfig`.
        model: the policy. With ``advantage_estimator="gae"`` (the default), a value-head model
            (`AutoModelForCausalLMWithValueHead` or `AutoModelForSeq2SeqLMWithValueHead`), optionally
            a peft model inside. With a critic-free estimator also a plain transformers or peft model.
        ref_model: the frozen reference for the KL penalty. When None: for a peft
            model the reference is the same model with its adapter disabled (no copy);
            otherwise a frozen copy is made with `create_reference_model`.
        tokenizer: the tokenizer (padding and decoding).
        dataset: optional `datasets.Dataset`, torch dataset or list; becomes ``self.dataloader``.
        optimizer: optional optimizer (default: Adam on the trainable parameters).
        data_collator: collator for the dataloader (default: dicts to a dict of lists, anything
            else as torch's default collation).
        num_shared_layers: with no ``ref_model``, share this many initial blocks between
            policy and reference (frozen in both). None: a full frozen copy.
        lr_scheduler: optional learning-rate scheduler, stepped once per `step`.
    """

    def __init__(
        self,
        config: PPOConfig = None,
        model: PreTrainedModelWrapper = None,
        ref_model: Optional[PreTrainedModelWrapper] = None,
        tokenizer=None,
        dataset=None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        data_collator: Optional[Callable] = None,
        num_shared_layers: Optional[int] = None,
        lr_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    ):
        # -- check arguments
        if config is None:
            config = PPOConfig()
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}.")
        super().__init__(config)
        set_seed(config.seed)
        check_policy(model, config)
        if tokenizer is None or not hasattr(tokenizer, "pad"):
            raise ValueError("PPOTrainer needs a tokenizer (a transformers PreTrainedTokenizerBase).")
        if ref_model is not None and not isinstance(ref_model, (PreTrainedModelWrapper, torch.nn.Module)):
            raise ValueError(f"ref_model must be a model, got {type(ref_model).__name__}.")

        # -- accelerator (before the models, so their device is known)
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        requested = config.requested_mixed_precision()
        if requested == "fp16" and not torch.cuda.is_available():
            raise ValueError(_FP16_NEEDS_CUDA)
        self.accelerator = Accelerator(
            log_with=config.log_with,
            project_config=ProjectConfiguration(**config.project_kwargs),
            **config.accelerator_settings(),
        )
        self.mixed_precision = _resolve_mixed_precision(requested, self.accelerator)
        if config.world_size != self.accelerator.num_processes:
            config._set_world_size(self.accelerator.num_processes)
        self.has_value_head = isinstance(model, SUPPORTED_ARCHITECTURES)
        config.is_encoder_decoder = bool(getattr(model, "is_encoder_decoder", getattr(model.config, "is_encoder_decoder", False)))
        config.is_peft_model = bool(getattr(model, "is_peft_model", False) or is_peft_model(model))
        self.is_encoder_decoder = config.is_encoder_decoder
        self.is_peft_model = config.is_peft_model
        self.is_distributed = _distributed.is_distributed(self.accelerator)
        self._kl_in_reward, self._kl_loss_coef, self._loss_aggregation = config.resolved_estimator_settings()

        # -- models: policy and reference. Dropout is switched off: PPO's ratio must be
        # exactly 1 before the first update, which stochastic forwards break.
        self.model = model
        self.tokenizer = tokenizer
        if ref_model is not None:
            if num_shared_layers is not None:
                warnings.warn("num_shared_layers is ignored because a ref_model was given.", UserWarning, stacklevel=2)
            self.ref_model = ref_model
        elif self.is_peft_model:
            self.ref_model = None  # the policy with its adapter disabled
        else:
            self.ref_model = _sharding.create_reference(model, num_shared_layers)  # ZeRO-3 aware
        for m in (self.model, self.ref_model):
            if m is not None:
                disable_dropout_in_model(m)
        if self.ref_model is not None:  # sharded like the policy under FSDP2 / ZeRO-3 (_sharding.py)
            self.ref_model = _sharding.prepare_reference(self.ref_model, self.accelerator)
        self._model_kwargs = accepted_kwargs(model)
        self._limits = InputLimits.of(model, self.is_encoder_decoder)

        # -- data
        if dataset is None:
            warnings.warn(
                "No dataset is provided: PPOTrainer.dataloader is None. Make sure config.batch_size matches the "
                "number of samples you pass to step().", UserWarning, stacklevel=2,
            )
        self.data_collator = data_collator if data_collator is not None else collate
        self.dataset = dataset
        self.dataloader = self.prepare_dataloader(dataset, self.data_collator) if dataset is not None else None
        sampler = getattr(self.dataloader, "sampler", None)

        # -- optimizer, scheduler, accelerator. A critic-free estimator leaves a value head out of the optimizer.
        trainable = [p for n, p in model.named_parameters() if p.requires_grad and (config.uses_critic or not n.startswith("v_head."))]
        self.optimizer = optimizer or default_optimizer(trainable, lr=config.learning_rate)
        self.lr_scheduler = lr_scheduler
        if self.lr_scheduler is not None and not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise ValueError("lr_scheduler must be a torch.optim.lr_scheduler.LRScheduler.")
        _sharding.fill_deepspeed_config(self.accelerator, config.mini_batch_size, config.gradient_accumulation_steps, config.max_grad_norm)
        prepared = self.accelerator.prepare(self.model, self.optimizer, self.dataloader, self.lr_scheduler)
        self.model, self.optimizer, self.dataloader, self.lr_scheduler = prepared
        if self.dataloader is not None:  # counts handed-out batches, so load_checkpoint can resume mid-epoch
            self.dataloader = ResumableDataLoader(
                self.dataloader, sampler if isinstance(sampler, ResumableSampler) else None,
                config.batch_size * self.accelerator.num_processes,
            )
        # A trainable embedding tied to the LM head gets its lookup gradient added to .grad in place after
        # each backward (`_tied_lookup_grad`, rlft/utils/tied_embedding.py): same gradient, no (V, d) temporary.
        self._tied_embedding = (
            None
            if _distributed.shards_parameters(self.accelerator)
            else tied_trainable_input_embedding(unwrap_parallel(self.model))
        )
        self.accelerator.register_save_state_pre_hook(self._save_policy_hook)
        self.accelerator.register_load_state_pre_hook(self._load_policy_hook)
        self.kl_ctl = (
            AdaptiveKLController(config.init_kl_coef, config.target, config.horizon)
            if config.adap_kl_ctrl
            else FixedKLController(config.init_kl_coef)
        )
        self.running = RunningMoments(self.accelerator)
        self.current_device = self.accelerator.device
        self.current_step = 0
        self._sync_now = True  # train_minibatch steps the optimizer unless inside an accumulation window
        self._window_updates = 0
        self._signals = MinibatchSignals()  # what loss / train_minibatch report about the current minibatch
        self._loss_max_tokens: Optional[int] = config.loss_max_tokens
        self.nonfinite = NonFiniteGuard(config.skip_nonfinite_steps, config.max_consecutive_nonfinite_steps)
        # Behaviour log-probs recorded by generate (rollout_logprobs="generation"); room for a few batches
        self._behaviour = BehaviourCache(capacity=4 * config.batch_size)
        if self.accelerator.is_main_process and config.log_with is not None:
            self.accelerator.init_trackers(
                config.tracker_project_name,
                config={"trl_ppo_trainer_config": config.to_dict()},
                init_kwargs=tracker_init_kwargs(config),
            )

    # ================================================================== data
    def prepare_dataloader(self, dataset, data_collator=None) -> torch.utils.data.DataLoader:
        """A shuffling DataLoader of ``config.batch_size`` over ``dataset`` (unused columns removed).

        The order of epoch ``e`` depends only on ``config.seed`` and ``e`` (`ResumableSampler`),
        so a resumed run sees the same batches as an uninterrupted one.
        """
        forward_params = set(inspect.signature(self.model.forward).parameters)
        return build_dataloader(dataset, data_collator or collate, self.config, forward_params)

    # ================================================================== generation
    @torch.no_grad()
    def generate(
        self,
        query_tensor: Union[Tensor, list[Tensor]],
        length_sampler: Callable = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        generate_ref_response: bool = False,
        **generation_kwargs,
    ):
        """Sample responses to one query (a 1-D tensor) or a list of queries.

        Lists are generated ``batch_size`` at a time with left padding; the padding is
        removed from the outputs, each response ends at its first EOS (kept) and has
        no trailing padding. ``length_sampler()`` draws ``max_new_tokens`` per batch.
        With ``return_prompt=False`` only the new tokens come back (causal models;
        encoder-decoder outputs never contain the prompt). With
        ``generate_ref_response=True`` responses of the reference model come back too.
        ``num_return_sequences=k`` samples k responses per query in the same batched calls
        (``batch_size`` x k rows each) and returns them grouped: query i's responses at
        positions i*k .. i*k + k - 1, the layout `step` expects with ``num_generations=k``.
        Returns a list of 1-D tensors for a list input (or for one query with k > 1), a (1, L)
        tensor for one query. An empty list gives an empty list. A query longer than the model's
        context (or one that ``max_new_tokens`` would push past it, for causal models) is a ValueError.
        With ``rollout_logprobs="generation"`` the policy's log-prob (under its raw logits) and value of
        each returned token are recorded too, for `step` to use instead of a forward (docs/ppo_performance.md).
        """
        if isinstance(query_tensor, Tensor) and query_tensor.dim() != 1:
            raise ValueError(
                f"query_tensor must be one 1-D tensor (seq_len,) or a list of them; got shape {tuple(query_tensor.shape)}. "
                "Pass list(batch) for a batch."
            )
        queries = [query_tensor] if isinstance(query_tensor, Tensor) else list(query_tensor)
        check_queries(queries, self._limits)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        generation_kwargs = dict(generation_kwargs)
        generation_kwargs.setdefault("pad_token_id", self._pad_id)
        k = generation_kwargs.pop("num_return_sequences", 1)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"num_return_sequences must be a positive integer, got {k!r}.")
        queries = [q for q in queries for _ in range(k)]  # each query k times, consecutively

        policy = unwrap_parallel(self.model)
        advice = [f"generate(batch_size=...) (now {batch_size}" + (f", x {k} samples per query)" if k > 1 else ")"),
                  f"max_new_tokens (now {generation_kwargs.get('max_new_tokens', 'the generation config default')})",
                  "the query length"]
        with out_of_memory_hint("PPOTrainer.generate", advice):
            ends = eos_token_ids(generation_kwargs, policy, self.tokenizer)
            common = dict(batch_size=batch_size * k, pad_id=self._pad_id, eos_ids=ends, limits=self._limits,
                          device=self.current_device, length_sampler=length_sampler, return_prompt=return_prompt)
            # sharded (FSDP2 / ZeRO-3): parameters gathered once per call, not once per token (_sharding.py)
            with _sharding.gathered_parameters(policy, self.accelerator), self._autocast():
                response = generate_responses(policy, queries, **common, behaviour=self._behaviour_recording(policy), **generation_kwargs)
            ref_response = None
            if generate_ref_response:
                with self._reference_context() as ref, _sharding.gathered_parameters(ref, self.accelerator), self._autocast():
                    ref_response = generate_responses(ref, queries, **common, **generation_kwargs)
        if isinstance(query_tensor, Tensor) and k == 1:
            response = response[0].unsqueeze(0)
            ref_response = ref_response[0].unsqueeze(0) if ref_response is not None else None
        return (response, ref_response) if generate_ref_response else response

    def _records_behaviour(self) -> bool:
        """Whether `generate` records behaviour log-probs for `step`: ``rollout_logprobs="generation"``, unless
        `step` would not use them (one update reads its own forward; ``kl_penalty="full"`` needs the full
        distributions) or the policy is one the recorder does not follow (encoder-decoder, sharded, prompt learning)."""
        if self.config.resolved_rollout_logprobs() != "generation" or self.config.kl_penalty == "full" or self._single_update():
            return False
        policy = unwrap_parallel(self.model)
        prompt_learning = getattr(getattr(_lm(policy), "active_peft_config", None), "is_prompt_learning", False)
        return not (self.is_encoder_decoder or prompt_learning or _distributed.shards_parameters(self.accelerator))

    def _behaviour_recording(self, policy) -> Optional[tuple]:
        """What `generate_responses` records the behaviour log-probs with, or None (see `_records_behaviour`)."""
        if not self._records_behaviour():
            return None
        value_head = getattr(policy, "v_head", None) if self.has_value_head else None
        return BehaviourRecorder(unwrap_base_model(policy), value_head), self._behaviour, self._policy_version()

    def _policy_version(self) -> int:
        """A fingerprint of the policy's weights: the sum of their in-place version counters, which grows
        with every optimizer step or weight load (`BehaviourCache`)."""
        return sum(p._version for p in unwrap_parallel(self.model).parameters())

    @contextlib.contextmanager
    def _reference_context(self):
        """Yields the reference model: the frozen copy, or the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        policy = unwrap_parallel(self.model)
        with _lm(policy).disable_adapter():
            yield policy

    def optional_peft_ctx(self):
        """Context in which the policy acts as the reference (adapter disabled) for peft models."""
        if self.is_peft_model:
            return _lm(unwrap_parallel(self.model)).disable_adapter()
        return contextlib.nullcontext()

    def _autocast(self):
        """Autocast to the ``mixed_precision`` dtype on the trainer's device; no context at all for "no" (fp32)."""
        dtype = AUTOCAST_DTYPES[self.mixed_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=dtype)

    @property
    def _pad_id(self) -> int:
        return pad_token_id_or_eos(self.tokenizer, default=0)

    @contextlib.contextmanager
    def _device_cache(self):
        """Free cached accelerator memory after the block when ``config.optimize_device_cache`` is on (per trainer)."""
        try:
            yield
        finally:
            if self.config.optimize_device_cache:
                free_device_cache()

    def _step_kernels(self) -> contextlib.ExitStack:
        """The policy's and the reference's kernels for the block (`rlft.trainer._step_kernels.step_kernels`, shared
        with the other trainers): GPT-2's GELU fused, large fp32 CPU linear layers on oneDNN (1.3-1.4x a PPO step on
        the benchmark CPU); not when sharded or for compiled models, no oneDNN for encoder-decoders;
        ``RLFT_ONEDNN_LINEARS=torch`` keeps torch's linears."""
        return step_kernels(self.accelerator, unwrap_parallel(self.model), self.ref_model)

    # ================================================================== step
    def step(
        self,
        queries: list[Tensor],
        responses: list[Tensor],
        scores: list[Tensor],
        response_masks: Optional[list[Tensor]] = None,
    ) -> dict:
        """Run one optimisation step on a batch of queries, responses and their scores.

        Args:
            queries: ``batch_size`` 1-D token tensors (with ``num_generations=k``: consecutive
                blocks of k equal queries).
            responses: ``batch_size`` 1-D token tensors (encoder-decoders: starting with
                the decoder-start token, as `generate` returns them).
            scores: ``batch_size`` scalars (0-d tensors or numbers), one per response.
            response_masks: optional 1-D 0/1 tensors, one per response, excluding tokens
                (e.g. tool outputs) from the loss.

        Returns:
            The step's statistics, with TRL's key names.
        """
        t_start = time.time()
        timing: dict[str, float] = {}
        with self._device_cache(), self._step_kernels():
            # 1. validate (bad input raises before anything changes; NaN/inf scores skip the step)
            inputs = self._validate(queries, responses, scores, response_masks)
            nonfinite = self._nonfinite_scores(inputs.scores)
            if nonfinite:
                return self._skip_step(nonfinite, inputs, t_start)

            with out_of_memory_hint("PPOTrainer.step", self._memory_advice(inputs), self._drop_gradients):
                # 2. rollout forward: policy log-probs and values (or generate's record of them), reference log-probs (no autograd)
                t = time.perf_counter()
                logprobs, ref_logprobs, values, mask, kl_inputs, update_forward = self._rollout_forward(inputs)
                timing["time/ppo/forward_pass"] = time.perf_counter() - t
                running_before = self.running.state_dict()
                scores_t = self._prepare_scores(inputs.scores)

                # 3. per-token rewards, with the KL estimated from the log-probs
                t = time.perf_counter()
                rewards, non_score_rewards, kls = self.compute_rewards(scores_t, *kl_inputs, mask)
                timing["time/ppo/compute_rewards"] = time.perf_counter() - t
                nonfinite = self._nonfinite_rollout(logprobs, ref_logprobs, values, kls)
                if nonfinite:
                    self.running.load_state_dict(running_before)
                    return self._skip_step(nonfinite, inputs, t_start)

                # 4. advantages and returns
                t = time.perf_counter()
                values, advantages, returns = self.compute_advantages(values, rewards, mask)
                timing["time/ppo/compute_advantages"] = time.perf_counter() - t
                rollout = Rollout(inputs, logprobs, ref_logprobs, values, mask, kls, scores_t, rewards,
                                  non_score_rewards, advantages, returns)

                # 5. PPO epochs over shuffled minibatches (a NaN/inf loss or gradient drops that update and ends them)
                t = time.perf_counter()
                epochs = self._ppo_epochs(rollout, update_forward)
                timing["time/ppo/optimize_step"] = time.perf_counter() - t
                timing.update({f"time/ppo/optimize_step/{part}": s for part, s in epochs.seconds.items()})

            # 6. statistics (from all processes), non-finite counters, KL controller, scheduler
            t = time.perf_counter()
            stats = self._step_stats(rollout, epochs.stats)
            stats["ppo/skipped_minibatches"] = float(epochs.skipped)
            if epochs.nonfinite:  # the epochs stopped early: the step counts as skipped, its controllers stay put
                self.nonfinite.bad_step(epochs.nonfinite, self.current_step)
                self.running.load_state_dict(running_before)
            else:
                self.nonfinite.good_step()
            stats.update(self.nonfinite.stats(skipped=bool(epochs.nonfinite)))
            timing["time/ppo/calc_stats"] = time.perf_counter() - t
            stats["ppo/learning_rate"] = self.optimizer.param_groups[0]["lr"]
            if not epochs.nonfinite:
                self.kl_ctl.update(stats["objective/kl"], self.config.batch_size * self.accelerator.num_processes)
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step()
            timing["time/ppo/total"] = time.time() - t_start
            stats.update(timing)
            self.current_step += 1
            return stats

    # ---------------------------------------------------------------- 1. inputs
    def _validate(self, queries, responses, scores, response_masks) -> StepInputs:
        return validate_step_inputs(
            queries, responses, scores, response_masks, batch_size=self.config.batch_size, limits=self._limits,
            device=self.current_device, num_generations=self.config.num_generations,
        )

    def _step_safety_checker(self, batch_size: int, queries: list, responses: list, scores: list, masks: Optional[list] = None):
        """TRL 0.7's input check of `step`: returns (queries, responses, scores, masks) validated and on the device."""
        inputs = validate_step_inputs(
            queries, responses, scores, masks, batch_size=batch_size, limits=self._limits, device=self.current_device,
        )
        return inputs.queries, inputs.responses, list(inputs.scores), inputs.response_masks

    def _prepare_scores(self, scores: Tensor) -> Tensor:
        """Score scaling / normalisation by running moments, then clipping. (B,) -> (B,)."""
        if self.config.use_score_scaling:
            self.running.update(scores)
            factor = self.running.std + SCORE_SCALING_EPS
            scores = (scores - self.running.mean) / factor if self.config.use_score_norm else scores / factor
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        return scores

    def prepare_model_inputs(self, queries: list[Tensor], responses: list[Tensor]) -> dict:
        """The padded model inputs of query/response pairs (TRL 0.7's public helper), on the trainer's device.

        Causal models: ``input_ids``, ``attention_mask`` and ``position_ids`` (n, Q + R), each query
        left-padded and each response right-padded, so the responses start at one column.
        Encoder-decoders: ``input_ids`` / ``attention_mask`` of the queries and ``decoder_input_ids`` /
        ``decoder_attention_mask`` of the responses.
        """
        device = self.current_device
        batch = self._pad_batch([q.to(device) for q in queries], [r.to(device) for r in responses])
        names = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "position_ids")
        return {n: getattr(batch, n) for n in names if getattr(batch, n) is not None}

    # ---------------------------------------------------------------- 2. rollout forward
    def _pad_batch(self, queries, responses, response_masks=None) -> PaddedBatch:
        """Pad ragged queries and responses into model inputs (see `PaddedBatch`)."""
        return pad_batch(queries, responses, response_masks, pad_id=self._pad_id, is_encoder_decoder=self.is_encoder_decoder)

    def _forward(self, model, batch: PaddedBatch, return_values: bool = True):
        """One forward pass; returns (logits (n, T, V), values (n, T) or None) at the action positions.

        Under ``mixed_precision`` the forward runs under autocast and the logits come back in bf16 / fp16
        (half the memory autograd keeps); the log-probs and entropies taken from them are computed in fp32
        (`rlft.functional.logprobs`), the values are fp32 (the value head's output).
        """
        accepted = self._model_kwargs if model is not self.ref_model else accepted_kwargs(model)
        with self._autocast():
            return forward_actions(model, batch, accepted=accepted, is_encoder_decoder=self.is_encoder_decoder, return_values=return_values)

    def _chunks(self, queries, responses, response_masks):
        """Padded batches of ``mini_batch_size`` consecutive samples (each padded to its own longest)."""
        chunk = self.config.mini_batch_size
        for start in range(0, len(queries), chunk):
            sl = slice(start, start + chunk)
            yield self._pad_batch(queries[sl], responses[sl], response_masks[sl] if response_masks else None)

    def batched_forward_pass(
        self, model, queries: Tensor, responses: Tensor, model_inputs: dict = None, return_logits: bool = False,
        response_masks: Optional[Tensor] = None,
    ):
        """Forward ``model`` over the batch in chunks of ``mini_batch_size``.

        Gradients flow when the caller allows them (`step` calls it under ``torch.no_grad`` for the
        rollout and with gradients for each PPO minibatch, as TRL 0.7 did). queries, responses:
        lists (or batched tensors) of token ids. ``model_inputs`` is accepted for TRL compatibility
        and ignored: the inputs are rebuilt from the token lists with correct padding and position
        ids. Returns (logprobs (B, T), logits (B, T, V) or None, values (B, T): zeros for a model
        without a value head, masks (B, T)).
        """
        queries, responses = list(queries), list(responses)
        response_masks = list(response_masks) if response_masks is not None else None
        out = {k: [] for k in ("logprobs", "logits", "values", "mask")}
        for batch in self._chunks(queries, responses, response_masks):
            logits, values = self._forward(model, batch)
            out["logprobs"].append(selected_log_probs(logits, batch.actions))
            out["logits"].append(logits if return_logits else None)
            out["values"].append(values if values is not None else torch.zeros_like(batch.mask, dtype=torch.float32))
            out["mask"].append(batch.mask)
        logits = cat_padded(out["logits"]) if return_logits else None
        return cat_padded(out["logprobs"]), logits, cat_padded(out["values"]), cat_padded(out["mask"])

    def _single_update(self) -> bool:
        """True when a step makes exactly one update from one forward of the whole batch (ppo_epochs=1, one
        minibatch, no accumulation): the rollout then takes its log-probs and values from that forward."""
        cfg = self.config
        return cfg.reuse_update_forward and cfg.ppo_epochs == 1 and cfg.mini_batch_size >= cfg.batch_size

    def _rollout_forward(self, inputs: StepInputs):
        """Policy and reference log-probs, values and the mask, each (B, T), zero where masked; what
        `compute_rewards` estimates the KL from (the log-probs, or for ``kl_penalty="full"`` the full
        log-distributions (B, T, V)); and, with a single update (`_single_update`), the update's own
        forward with gradients (logprobs, logits, values), else None.

        With a single update the policy's forward runs once, with gradients, and the rollout reads
        it detached: the first (and only) ratio is then exactly 1 and no no-grad forward is spent.
        Otherwise, with ``rollout_logprobs="generation"``, the policy's numbers are those `generate`
        recorded for exactly these samples (`_recorded_behaviour`); only when there are none does the
        policy run here. The reference is skipped too when that is on and no KL enters the reward or the
        loss (then ref_logprobs = logprobs: the KL stats read 0)."""
        full = self.config.kl_penalty == "full"
        args = (inputs.queries, inputs.responses)
        update_forward = None
        single_update = self._single_update()
        recorded = None if full or single_update else self._recorded_behaviour(inputs)
        self._behaviour.clear()  # this step's update makes any record stale
        if single_update:
            self.model.train()
            with self._tied_lookup_grad():
                update_forward = self.batched_forward_pass(self.model, *args, return_logits=True, response_masks=inputs.response_masks)
            logprobs, logits, values, mask = (t.detach() for t in update_forward)
            update_forward = update_forward[:3]
        elif recorded is not None:
            logprobs, values, mask = recorded
        with torch.no_grad():
            policy = unwrap_parallel(self.model)
            was_training = policy.training
            policy.eval()
            try:
                if update_forward is None and recorded is None:
                    logprobs, logits, values, mask = self.batched_forward_pass(policy, *args, return_logits=full, response_masks=inputs.response_masks)
                if self._reference_needed():
                    with self._reference_context() as ref:
                        ref_logprobs, ref_logits, _, _ = self.batched_forward_pass(ref, *args, return_logits=full, response_masks=inputs.response_masks)
                else:
                    ref_logprobs = logprobs.detach().clone()
            finally:
                policy.train(was_training)
            mask = mask.float()
            logprobs, ref_logprobs, values = logprobs * mask, ref_logprobs * mask, values * mask
            if full:  # TRL 0.7 hands compute_rewards the full log-distributions for the exact KL
                kl_inputs = (torch.log_softmax(logits.float(), dim=-1), torch.log_softmax(ref_logits.float(), dim=-1))
            else:
                kl_inputs = (logprobs, ref_logprobs)
        return logprobs, ref_logprobs, values, mask, kl_inputs, update_forward

    def _reference_needed(self) -> bool:
        """False only with ``rollout_logprobs="generation"`` and no KL anywhere (not in the reward, not in the loss)."""
        uses_kl = self._kl_in_reward or self._kl_loss_coef > 0 or self.config.kl_penalty == "full"
        return uses_kl or self.config.resolved_rollout_logprobs() != "generation"

    def _recorded_behaviour(self, inputs: StepInputs) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """(logprobs, values, mask), each (B, T), from what `generate` recorded for exactly these queries and
        responses under the current weights, or None (then they are recomputed)."""
        taken = self._behaviour.take(inputs.queries, inputs.responses, self._policy_version())
        if taken is None:
            if self.config.resolved_rollout_logprobs() == "generation":
                logger.debug("rollout_logprobs='generation': no record of this batch from generate(); recomputing the policy's log-probs.")
            return None
        logprobs, values = taken
        mask = pad_with_mask(inputs.responses, 0, "right")[1]  # (B, T), as the forward's
        if inputs.response_masks is not None:
            mask = mask * pad_with_mask(inputs.response_masks, 0, "right")[0].to(mask.dtype)
        return logprobs, values if values is not None else torch.zeros_like(mask, dtype=torch.float32), mask

    # ---------------------------------------------------------------- 3. rewards
    def _kl_penalty(self, logprob: Tensor, ref_logprob: Tensor) -> Tensor:
        """Per-token KL estimate with ``config.kl_penalty`` (TRL 0.7's private helper). (B, T) -> (B, T);
        for "full", the full log-distributions (B, T, V) -> (B, T)."""
        if self.config.kl_penalty == "full":
            return kl_full(logprob, ref_logprob)  # log_softmax of log-probs is the identity
        return kl_penalty(logprob, ref_logprob, self.config.kl_penalty)

    def compute_rewards(self, scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, masks: Tensor):
        """Per-token rewards from the scores and the KL penalty.

        scores: (B,); logprobs, ref_logprobs, masks: (B, T) — or, for ``kl_penalty="full"``,
        full log-distributions (B, T, V). Returns (rewards, non_score_rewards, kls), each (B, T).
        The KL enters the reward only when the estimator keeps it there (``kl_in_reward``).
        """
        kls = self._kl_penalty(logprobs, ref_logprobs) * masks
        kl_coef = self.kl_ctl.value if self._kl_in_reward else 0.0
        rewards, non_score = per_token_rewards(scores, kls, kl_coef, masks)
        return rewards, non_score, kls

    # ---------------------------------------------------------------- 4. advantages
    def compute_advantages(self, values: Tensor, rewards: Tensor, mask: Tensor):
        """Advantages and returns with ``config.advantage_estimator``. (B, T) each -> (values, advantages, returns).

        gae: GAE over the value head's values, whitened over the global batch. grpo / dr_grpo /
        rloo: the sequence reward (the sum of the token rewards: the score, minus the KL penalty
        when it is in the reward) compared within each group of ``num_generations``, broadcast
        to the tokens; returns are the sequence rewards. reinforce_pp: token returns-to-go,
        normalised over the global batch (all processes).
        """
        cfg = self.config
        values = values * mask
        rewards = rewards * mask
        # Whitening uses the statistics of the global batch (all processes), as one process would.
        if cfg.whiten_rewards:
            rewards = _distributed.masked_whiten_over_processes(rewards, mask, self.accelerator, shift_mean=False)
        if cfg.advantage_estimator == "gae":
            advantages, returns = gae(values, rewards, mask, gamma=cfg.gamma, lam=cfg.lam)
            advantages = _distributed.masked_whiten_over_processes(advantages, mask, self.accelerator)
        elif cfg.advantage_estimator in GROUP_ESTIMATORS:
            sequence_rewards = rewards.sum(dim=1)  # (B,)
            advantages = sequence_to_token(sequence_advantages(cfg.advantage_estimator, sequence_rewards, cfg.num_generations), mask)
            returns = sequence_to_token(sequence_rewards, mask)
        else:  # reinforce_pp
            returns = discounted_returns(rewards, mask, cfg.gamma)
            advantages = _distributed.masked_whiten_over_processes(returns, mask, self.accelerator) * mask
        return values, advantages.detach(), returns

    # ---------------------------------------------------------------- 5. PPO epochs
    def _ppo_epochs(self, rollout: Rollout, update_forward: Optional[tuple] = None) -> EpochsResult:
        """``ppo_epochs`` passes over the rollout in shuffled minibatches, with gradient accumulation.

        ``update_forward``: the single update's forward from the rollout (`_single_update`); it is the
        one minibatch, in the batch's order (the losses do not depend on the order of the samples).

        The clocks are host-side (perf_counter, no device sync): on CUDA a phase's kernels may
        still run when its clock stops, so part of their time lands in the next phase.
        """
        cfg = self.config
        bs = len(rollout.inputs.queries)
        all_stats: list[dict] = []
        n_skipped = 0
        seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self._loss_max_tokens = cfg.loss_max_tokens or rollout.mask.shape[1]
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = np.random.permutation(bs)
            for bstart in range(0, bs, cfg.backward_batch_size):
                window = order[bstart : bstart + cfg.backward_batch_size]
                self.optimizer.zero_grad()  # here, not after the step: the last gradients stay inspectable (TRL 0.7)
                self._window_updates = 0
                for mstart in range(0, len(window), cfg.mini_batch_size):
                    self._sync_now = mstart + cfg.mini_batch_size >= len(window)
                    idx = window[mstart : mstart + cfg.mini_batch_size].tolist()
                    if update_forward is not None:
                        idx = list(range(bs))
                    signals = self._minibatch_update(rollout, idx, all_stats, update_forward)
                    for part in seconds:
                        seconds[part] += signals.seconds[part]
                    n_skipped += int(signals.skipped)
                    if signals.nonfinite:  # the update was dropped; later minibatches would start from the same state
                        self._sync_now = True
                        return EpochsResult(all_stats, n_skipped, signals.nonfinite, seconds)
                    if cfg.early_stopping and self._early_stop(all_stats[-1]["policy/policykl"]):
                        self._sync_now = True
                        return EpochsResult(all_stats, n_skipped, None, seconds)
        self._sync_now = True
        return EpochsResult(all_stats, n_skipped, None, seconds)

    def _minibatch_update(self, rollout: Rollout, idx: list[int], all_stats: list[dict], forward: Optional[tuple] = None) -> MinibatchSignals:
        """Forward one minibatch with gradients (unless ``forward`` holds it already) and hand it to
        `train_minibatch` (its stats go to ``all_stats``)."""
        mb = rollout.minibatch(idx)
        signals = self._signals = MinibatchSignals()
        sync_ctx = contextlib.nullcontext() if self._sync_now or not self.is_distributed else self.accelerator.no_sync(self.model)
        with sync_ctx:
            t = time.perf_counter()
            if forward is not None:
                logprobs, logits, vpreds = forward
            else:
                with self._tied_lookup_grad():
                    logprobs, logits, vpreds, _ = self.batched_forward_pass(
                        self.model, mb.queries, mb.responses, return_logits=True, response_masks=mb.response_masks
                    )
            signals.seconds["forward"] += time.perf_counter() - t
            extra = {"ref_logprobs": mb.ref_logprobs} if self._kl_loss_coef > 0 else {}
            stats = self.train_minibatch(mb.old_logprobs, mb.values, logprobs, logits, vpreds, mb.mask, mb.advantages, mb.returns, **extra)
        if not signals.nonfinite:
            all_stats.append(stats)
        return signals

    def train_minibatch(
        self, old_logprobs: Tensor, values: Tensor, logprobs: Tensor, logits: Tensor, vpreds: Tensor,
        mask: Tensor, advantages: Tensor, returns: Tensor, ref_logprobs: Optional[Tensor] = None,
    ) -> dict:
        """Backward one minibatch; step the optimizer at the end of an accumulation window.

        All tensors (n, T) except logits (n, T, V); ``ref_logprobs`` only with a KL loss term.
        Returns the minibatch's stats. A NaN/inf loss is not backpropagated and NaN/inf
        gradients are not applied: the accumulation window's gradients are dropped, and the
        trainer's `MinibatchSignals` say which it was (with the clocks of each part).
        """
        if not all(m.training for m in self.model.modules()):  # train() walks and sets every module: 1.4 ms with LoRA
            self.model.train()
        signals = self._signals
        t = time.perf_counter()
        extra = {"ref_logprobs": ref_logprobs} if ref_logprobs is not None else {}
        loss_p, loss_v, train_stats = self.loss(old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns, **extra)
        loss = (loss_p + loss_v) / self.config.gradient_accumulation_steps
        signals.seconds["forward"] += time.perf_counter() - t
        # Decided on all processes together: a process skipping backward alone would hang the gradient all-reduce.
        if _distributed.any_over_processes(not bool(torch.isfinite(loss.detach())), self.accelerator):
            signals.nonfinite = "the PPO loss"
            self._drop_gradients()
            return train_stats
        t = time.perf_counter()
        self.accelerator.backward(loss)
        signals.seconds["backward"] += time.perf_counter() - t
        self._window_updates += 0 if signals.skipped else 1
        if self._sync_now:
            t = time.perf_counter()
            signals.nonfinite = self._optimizer_step()
            signals.seconds["optimizer"] += time.perf_counter() - t
        return train_stats

    def _tied_lookup_grad(self):
        """Context of the training forwards for a trainable embedding tied to the LM head (rlft/utils/tied_embedding.py):
        its lookup gradient is added to ``.grad`` in place after each backward, or, with several processes (whose
        gradients are reduced during backward), recorded as sparse rows."""
        if self.is_distributed:
            return sparse_embedding_grad(self._tied_embedding)
        return lookup_grad_in_place(self._tied_embedding)

    def _optimizer_step(self) -> Optional[str]:
        """Clip and apply the window's gradients unless one is NaN/inf (then drop them, return "the gradients").

        With max_grad_norm set, the clipping's norm (before clipping; NaN/inf when a gradient is) is the
        check; without, `gradients_finite` (one fused pass, no norm: nothing reads it). The applied
        gradients stay on the parameters until the next window starts, as in TRL 0.7.
        """
        nonfinite = None
        if self._window_updates > 0:
            densify_grad(self._tied_embedding)
            params = [p for p in self.model.parameters() if p.requires_grad]
            # fp16: the gradients are scaled by accelerate's GradScaler, which itself skips an update whose
            # gradients overflowed (and lowers its scale): that is not a non-finite step. clip_grad_norm_
            # unscales before clipping; the scaler's step unscales when nothing did.
            scaled = self.accelerator.scaler is not None
            if self.config.max_grad_norm is not None:
                finite = bool(torch.isfinite(torch.as_tensor(self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm))))
            else:
                finite = scaled or gradients_finite(params)
            if not scaled and _distributed.any_over_processes(not finite, self.accelerator):
                nonfinite = "the gradients"
                self.optimizer.zero_grad()
            else:
                self.optimizer.step()
        self._window_updates = 0
        return nonfinite

    def loss(
        self, old_logprobs: Tensor, values: Tensor, logits: Tensor, vpreds: Tensor, logprobs: Tensor,
        mask: Tensor, advantages: Tensor, returns: Tensor, ref_logprobs: Optional[Tensor] = None,
    ):
        """The policy loss (plus the KL term, when ``kl_loss_coef`` > 0) and the weighted value loss of one minibatch.

        All tensors (n, T) except logits (n, T, V). Returns (policy_loss, vf_coef * value_loss, stats);
        without a critic the value loss is zero. A minibatch whose mean ratio exceeds
        ``ratio_threshold`` contributes zero loss (and is counted as skipped).
        """
        cfg = self.config
        if cfg.uses_critic and cfg.cliprange_high is None and self._loss_aggregation == "token_mean":
            pg_loss, pg_clipfrac, ratio = policy_loss(logprobs, old_logprobs, advantages, mask, cfg.cliprange)  # TRL 0.7's
        else:
            pg_loss, pg_clipfrac, ratio = clipped_policy_loss(
                logprobs, old_logprobs, advantages, mask, clip_low=cfg.cliprange,
                clip_high=cfg.cliprange if cfg.cliprange_high is None else cfg.cliprange_high,
                aggregation=self._loss_aggregation, max_tokens=self._loss_max_tokens,
            )
        vf_loss = vf_clipfrac = None
        if cfg.uses_critic:
            vf_loss, vf_clipfrac = value_loss(vpreds, values, returns, mask, cfg.cliprange_value)
        kl_loss = None
        if self._kl_loss_coef > 0 and ref_logprobs is not None:  # GRPO: k3 KL to the reference in the loss
            kl_loss = aggregate_loss(kl_k3(logprobs, ref_logprobs), mask, self._loss_aggregation, max_tokens=self._loss_max_tokens)
        policy_total = pg_loss if kl_loss is None else pg_loss + self._kl_loss_coef * kl_loss
        value_term = cfg.vf_coef * vf_loss if vf_loss is not None else torch.zeros((), device=pg_loss.device)
        total = policy_total + value_term
        avg_ratio = masked_mean(ratio, mask).item()
        skipped = _distributed.any_over_processes(avg_ratio > cfg.ratio_threshold, self.accelerator)
        if skipped:
            warnings.warn(
                f"The mean policy ratio of a minibatch is {avg_ratio:.2f} > ratio_threshold={cfg.ratio_threshold}: "
                "skipping it. This usually means the responses were not sampled from this model, or the "
                "learning rate is too high.",
                UserWarning,
                stacklevel=2,
            )
            policy_total, value_term, total = policy_total * 0.0, value_term * 0.0, total * 0.0
            pg_loss = pg_loss * 0.0
            vf_loss = vf_loss * 0.0 if vf_loss is not None else None
        self._signals.skipped = skipped
        stats = _ppo_stats.minibatch_stats(
            pg_loss=pg_loss, vf_loss=vf_loss, total=total, logits=logits, logprobs=logprobs, old_logprobs=old_logprobs,
            mask=mask, advantages=advantages, ratio=ratio, clipfrac=pg_clipfrac, returns=returns, values=values,
            vpreds=vpreds, vf_clipfrac=vf_clipfrac, kl_loss=kl_loss,
        )
        return policy_total, value_term, stats

    # ---------------------------------------------------------------- 6. stats
    def _step_stats(self, rollout: Rollout, all_stats: list[dict]) -> dict:
        """TRL's step stats. Per-sample values are gathered from every process first, so means and
        standard deviations are those of the global batch."""
        train_stats = _ppo_stats.stack_train_stats(all_stats)
        data = dict(
            scores=rollout.scores, logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs,
            non_score_reward=rollout.non_score_rewards, masks=rollout.mask, kls=rollout.kls,
            query_lens=_ppo_stats.lengths(rollout.inputs.queries), response_lens=_ppo_stats.lengths(rollout.inputs.responses),
        )
        if self.is_distributed:
            gather = lambda t: _distributed.gather_rows(t, self.accelerator)  # noqa: E731
            data = {key: gather(value) for key, value in data.items()}
            train_stats = {key: gather(v.flatten())[None] if key in _ppo_stats.VECTOR_STATS else gather(v) for key, v in train_stats.items()}
        stats = self.record_step_stats(
            kl_coef=self.kl_ctl.value, train_stats=train_stats, queries=rollout.inputs.queries,
            responses=rollout.inputs.responses, **data,
        )
        return _ppo_stats.to_numpy(stats, _ppo_stats.scalar_stats(self.config.uses_critic))

    def record_step_stats(self, kl_coef: float, **data) -> dict:
        """Summarise a step: KL, entropy, scores, lengths and the averaged PPO stats (TRL's key names).

        ``data``: scores (B,), logprobs, ref_logprobs, non_score_reward, masks, kls (B, T),
        queries and responses (lists; or their lengths as ``query_lens`` / ``response_lens``),
        train_stats (stacked minibatch stats).
        """
        query_lens = data.get("query_lens")  # given (gathered from all processes) by step
        response_lens = data.get("response_lens")
        return _ppo_stats.summarise_step(
            kl_coef, scores=data["scores"], logprobs=data["logprobs"], ref_logprobs=data["ref_logprobs"],
            non_score_reward=data["non_score_reward"], masks=data["masks"], kls=data["kls"],
            query_lens=_ppo_stats.lengths(data["queries"]) if query_lens is None else query_lens,
            response_lens=_ppo_stats.lengths(data["responses"]) if response_lens is None else response_lens,
            train_stats=data["train_stats"], num_generations=self.config.num_generations,
        )

    def gather_stats(self, stats: dict) -> dict:
        """Average the tensor stats over all processes."""
        return _distributed.mean_over_processes(stats, self.accelerator)

    def save_pretrained(self, save_directory: str) -> None:
        """Save the model (with value head), the tokenizer and a model card to ``save_directory``."""
        self._save_pretrained(save_directory)

    def _save_pretrained(self, save_directory: str) -> None:
        # every process: a sharded policy (FSDP2, ZeRO-3) is gathered first, a collective (_sharding.py);
        # unsharded, only the main process writes and no process waits for another
        _sharding.save_pretrained(unwrap_parallel(self.model), self.accelerator, save_directory)
        if self.accelerator.is_main_process:
            self.tokenizer.save_pretrained(save_directory)
            self.create_model_card(save_directory)


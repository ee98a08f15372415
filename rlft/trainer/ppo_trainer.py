"""PPOTrainer: the user-driven PPO loop of TRL 0.7 (`generate`, then `step(queries, responses, scores)`).

The user owns generation and scoring; `step` does the rest (Ziegler et al. 2019):

    1. validate the inputs and prepare the scores (scaling, normalisation, clipping)
    2. rollout forward: policy log-probs and values, reference log-probs (no autograd)
    3. per-token rewards: -beta * KL on every token, the score on the last one
    4. advantages and returns with GAE
    5. PPO epochs over shuffled minibatches, with gradient accumulation
    6. statistics, KL-coefficient update, learning-rate schedule

Everything is computed in *response space*: tensors of shape (B, T) where T is
the longest response in the batch (the longest response minus its decoder-start
token for encoder-decoders). Position t holds the log-probability of response
token t and the value of the state before it. The formulas live in
`rlft.functional.ppo`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..core import PPODecorators, WANDB_PADDING, convert_to_scalar, flatten_dict, set_seed, stack_dicts, stats_to_np
from ..functional import masked_mean, masked_var
from ..functional.logprobs import entropy_from_logits, selected_log_probs
from ..functional.ppo import approx_kl, gae, kl_full, kl_penalty, per_token_rewards, policy_loss, value_loss
from ..utils.running import RunningMoments
from ..models import SUPPORTED_ARCHITECTURES, PreTrainedModelWrapper, create_reference_model
from ..utils.faults import NonFiniteGuard, grad_norm, is_out_of_memory, nonfinite_names, out_of_memory_error
from ..utils.resumable import ResumableDataLoader, ResumableSampler
from ..utils.sampling_generate import generate as sampling_generate
from ..utils.tied_embedding import densify_grad, sparse_embedding_grad, tied_trainable_input_embedding
from . import _distributed
from ._ppo_checkpoint import PPOCheckpointMixin
from ._helpers import disable_dropout_in_model, pad
from .base import BaseTrainer
from .kl_control import AdaptiveKLController, FixedKLController
from .ppo_config import PPOConfig

#: Added to the running score std before dividing by it.
SCORE_SCALING_EPS = torch.finfo(torch.float32).eps
#: Train stats that stay vectors (one entry per token) in the step's stats.
_VECTOR_STATS = ("policy/advantages", "policy/ratio")
#: Mean sequence KL below which the negative-KL warning fires (as TRL 0.7).
NEGATIVE_KL_WARNING = -1.0
#: Scalar stats of a normal step; a skipped (non-finite) step reports them as NaN so logging code keeps working.
_SCALAR_STATS = (
    "objective/kl", "objective/entropy", "ppo/mean_non_score_reward", "ppo/mean_scores", "ppo/std_scores",
    "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/entropy", "ppo/policy/approxkl",
    "ppo/policy/policykl", "ppo/policy/clipfrac", "ppo/policy/advantages_mean", "ppo/returns/mean",
    "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac", "ppo/val/mean", "ppo/val/var",
    "ppo/val/var_explained",
)


@dataclass
class PaddedBatch:
    """Model inputs for n samples, built from ragged query/response lists.

    Causal models: ``input_ids``, ``attention_mask``, ``position_ids`` are (n, Q + R),
    queries left-padded to Q, responses right-padded to R; ``actions`` = responses (n, T=R).
    Encoder-decoders: ``input_ids``/``attention_mask`` hold the queries (n, Q),
    ``decoder_input_ids``/``decoder_attention_mask`` the responses (n, R), whose
    first token is the decoder start; ``actions`` = responses[:, 1:] (n, T=R-1).
    ``mask`` (n, T) is 1 on real response tokens the user did not mask out.
    """

    input_ids: Tensor
    attention_mask: Tensor
    actions: Tensor
    mask: Tensor
    position_ids: Optional[Tensor] = None
    decoder_input_ids: Optional[Tensor] = None
    decoder_attention_mask: Optional[Tensor] = None

    @property
    def T(self) -> int:
        return self.actions.shape[1]


@dataclass
class Rollout:
    """What `step` computes before the PPO epochs; every tensor is (B, T) unless noted.

    logprobs / ref_logprobs: log-probabilities of the response tokens under the
    policy and the reference; values: the critic's values; mask: kept tokens;
    kls: per-token KL estimate; rewards / non_score_rewards: per-token rewards with
    and without the score; advantages (whitened) and returns; scores: (B,).
    """

    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    mask: Tensor
    kls: Tensor
    scores: Tensor
    rewards: Tensor = None
    non_score_rewards: Tensor = None
    advantages: Tensor = None
    returns: Tensor = None


def _list_collator(examples: list[dict]) -> dict:
    """Collate dicts into a dict of lists (keeps variable-length tensors apart)."""
    return {key: [example[key] for example in examples] for key in examples[0]}


class PPOTrainer(PPOCheckpointMixin, BaseTrainer):
    """Proximal Policy Optimization for language models with a value head.

    Args:
        config: the `PPOConfig`.
        model: the policy, a value-head model (`AutoModelForCausalLMWithValueHead` or
            `AutoModelForSeq2SeqLMWithValueHead`), optionally a peft model inside.
        ref_model: the frozen reference for the KL penalty. When None: for a peft
            model the reference is the same model with its adapter disabled (no copy);
            otherwise a frozen copy is made with `create_reference_model`.
        tokenizer: the tokenizer (padding and decoding).
        dataset: optional `datasets.Dataset` or torch dataset; becomes ``self.dataloader``.
        optimizer: optional optimizer (default: Adam on the trainable parameters).
        data_collator: collator for the dataloader (default: dict of lists).
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
        if not isinstance(model, SUPPORTED_ARCHITECTURES):
            raise ValueError(
                f"model must be a value-head model ({', '.join(c.__name__ for c in SUPPORTED_ARCHITECTURES)}), "
                f"got {type(model).__name__}. Wrap it: AutoModelForCausalLMWithValueHead.from_pretrained(model)."
            )
        if tokenizer is None or not hasattr(tokenizer, "pad"):
            raise ValueError("PPOTrainer needs a tokenizer (a transformers PreTrainedTokenizerBase).")
        if ref_model is not None and not isinstance(ref_model, (PreTrainedModelWrapper, torch.nn.Module)):
            raise ValueError(f"ref_model must be a model, got {type(ref_model).__name__}.")

        # -- accelerator (before the models, so their device is known)
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.accelerator = Accelerator(
            log_with=config.log_with,
            project_config=ProjectConfiguration(**config.project_kwargs),
            **config.accelerator_kwargs,
        )
        if config.world_size != self.accelerator.num_processes:
            config._set_world_size(self.accelerator.num_processes)
        config.is_encoder_decoder = bool(getattr(model, "is_encoder_decoder", False))
        config.is_peft_model = bool(getattr(model, "is_peft_model", False))
        self.is_encoder_decoder = config.is_encoder_decoder
        self.is_peft_model = config.is_peft_model
        self.is_distributed = _distributed.is_distributed(self.accelerator)

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
            self.ref_model = create_reference_model(model, num_shared_layers=num_shared_layers)
        for m in (self.model, self.ref_model):
            if m is not None:
                disable_dropout_in_model(m)
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device).eval()
        self._model_kwargs = _accepted_kwargs(model)
        self._vocab_size, self._context_length = _vocab_and_context(model)

        # -- data
        self.data_collator = data_collator if data_collator is not None else _list_collator
        self.dataset = dataset
        self.dataloader = self.prepare_dataloader(dataset, self.data_collator) if dataset is not None else None
        sampler = getattr(self.dataloader, "sampler", None)

        # -- optimizer, scheduler, accelerator
        self.optimizer = optimizer or _default_optimizer(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
        )
        self.lr_scheduler = lr_scheduler
        if self.lr_scheduler is not None and not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
            raise ValueError("lr_scheduler must be a torch.optim.lr_scheduler.LRScheduler.")
        prepared = self.accelerator.prepare(self.model, self.optimizer, self.dataloader, self.lr_scheduler)
        self.model, self.optimizer, self.dataloader, self.lr_scheduler = prepared
        if self.dataloader is not None:  # counts handed-out batches, so load_checkpoint can resume mid-epoch
            self.dataloader = ResumableDataLoader(
                self.dataloader, sampler if isinstance(sampler, ResumableSampler) else None,
                config.batch_size * self.accelerator.num_processes,
            )
        # A trainable embedding tied to the LM head gets its lookup gradient as sparse rows in the
        # training forwards (rlft/utils/tied_embedding.py): same gradient, no zero-filled (V, d) temporary.
        self._tied_embedding = (
            None
            if _distributed.shards_parameters(self.accelerator)
            else tied_trainable_input_embedding(self.accelerator.unwrap_model(self.model))
        )
        self.accelerator.register_save_state_pre_hook(self._save_policy_hook)
        self.accelerator.register_load_state_pre_hook(self._load_policy_hook)
        self.kl_ctl = (
            AdaptiveKLController(config.init_kl_coef, config.target, config.horizon)
            if config.adap_kl_ctrl
            else FixedKLController(config.init_kl_coef)
        )
        self.running = RunningMoments(self.accelerator)
        PPODecorators.optimize_device_cache = bool(config.optimize_device_cache)
        self.current_device = self.accelerator.device
        self.current_step = 0
        self._sync_now = True  # train_minibatch steps the optimizer unless inside an accumulation window
        self._window_updates = 0
        self.nonfinite = NonFiniteGuard(config.skip_nonfinite_steps, config.max_consecutive_nonfinite_steps)
        if self.accelerator.is_main_process and config.log_with is not None:
            self.accelerator.init_trackers(
                config.tracker_project_name,
                config={"trl_ppo_trainer_config": config.to_dict()},
                init_kwargs=_tracker_init_kwargs(config),
            )

    # ================================================================== data
    def prepare_dataloader(self, dataset, data_collator=None) -> torch.utils.data.DataLoader:
        """A shuffling DataLoader of ``config.batch_size`` over ``dataset`` (unused columns removed).

        The order of epoch ``e`` depends only on ``config.seed`` and ``e`` (`ResumableSampler`),
        so a resumed run sees the same batches as an uninterrupted one.
        """
        if data_collator is None:
            data_collator = _list_collator
        try:
            import datasets

            if isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset)
        except ImportError:
            pass
        if hasattr(dataset, "__len__") and len(dataset) < self.config.batch_size:
            raise ValueError(
                f"The dataset has {len(dataset)} examples, fewer than PPOConfig.batch_size={self.config.batch_size}: "
                "the dataloader (which drops incomplete batches) would yield nothing. Lower batch_size or add data."
            )
        # Its own generator: starting an iterator must not draw from the global RNG (generation samples from it).
        generator = torch.Generator().manual_seed(self.config.seed)
        common = dict(batch_size=self.config.batch_size, collate_fn=data_collator, drop_last=True, generator=generator)
        if not hasattr(dataset, "__len__"):  # iterable datasets keep their own order; resuming skips batches
            return torch.utils.data.DataLoader(dataset, **common)
        return torch.utils.data.DataLoader(dataset, sampler=ResumableSampler(len(dataset), seed=self.config.seed), **common)

    def _remove_unused_columns(self, dataset):
        if not self.config.remove_unused_columns:
            return dataset
        keep = set(inspect.signature(self.model.forward).parameters) | {"label", "query", "response"}
        drop = [c for c in dataset.column_names if c not in keep]
        columns = [c for c in dataset.column_names if c in keep]
        fmt = dataset.format
        dataset = dataset.remove_columns(drop)
        if fmt.get("type") is not None:
            dataset = dataset.with_format(type=fmt["type"], columns=[c for c in columns if c in dataset.column_names])
        return dataset

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
        Returns a list of 1-D tensors for a list input, a (1, L) tensor for one query.
        An empty list gives an empty list. A query longer than the model's context (or
        one that ``max_new_tokens`` would push past it, for causal models) is a ValueError.
        """
        if isinstance(query_tensor, Tensor) and query_tensor.dim() != 1:
            raise ValueError(
                f"query_tensor must be one 1-D tensor (seq_len,) or a list of them; got shape {tuple(query_tensor.shape)}. "
                "Pass list(batch) for a batch."
            )
        queries = [query_tensor] if isinstance(query_tensor, Tensor) else list(query_tensor)
        self._validate_queries(queries)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        generation_kwargs = dict(generation_kwargs)
        generation_kwargs.setdefault("pad_token_id", self._pad_id)

        policy = self.accelerator.unwrap_model(self.model)
        advice = [f"generate(batch_size=...) (now {batch_size})",
                  f"max_new_tokens (now {generation_kwargs.get('max_new_tokens', 'the generation config default')})",
                  "the query length"]
        with _out_of_memory_hint("PPOTrainer.generate", advice):
            response = self._generate_batched(policy, queries, length_sampler, batch_size, return_prompt, **generation_kwargs)
            ref_response = None
            if generate_ref_response:
                with self._reference_context() as ref:
                    ref_response = self._generate_batched(ref, queries, length_sampler, batch_size, return_prompt, **generation_kwargs)
        if isinstance(query_tensor, Tensor):
            response = response[0].unsqueeze(0)
            ref_response = ref_response[0].unsqueeze(0) if ref_response is not None else None
        return (response, ref_response) if generate_ref_response else response

    def _generate_batched(self, model, queries, length_sampler, batch_size, return_prompt, **generation_kwargs):
        eos_ids = self._eos_ids(generation_kwargs)
        was_training = model.training
        model.eval()
        outputs: list[Tensor] = []
        try:
            for start in range(0, len(queries), batch_size):
                if length_sampler is not None:
                    generation_kwargs["max_new_tokens"] = int(length_sampler())
                batch = [q.to(device=self.current_device, dtype=torch.long) for q in queries[start : start + batch_size]]
                self._check_context(batch, generation_kwargs.get("max_new_tokens"))
                padding_side = "right" if self.is_encoder_decoder else "left"
                input_ids, attention_mask = _pad(batch, self._pad_id, padding_side)
                generated = sampling_generate(model, input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)
                width = input_ids.shape[1]
                for query, row in zip(batch, generated):
                    if self.is_encoder_decoder:
                        new = row  # starts with the decoder-start token; the prompt is not in it
                        cut = _after_first(new[1:], eos_ids) + 1
                        outputs.append(new[:cut])
                        continue
                    new = row[width:]
                    new = new[: _after_first(new, eos_ids)]
                    outputs.append(torch.cat([query, new]) if return_prompt else new)
        finally:
            model.train(was_training)
        return outputs

    def _eos_ids(self, generation_kwargs) -> set[int]:
        eos = generation_kwargs.get("eos_token_id")
        if eos is None:
            gen_cfg = getattr(self.accelerator.unwrap_model(self.model).pretrained_model, "generation_config", None)
            eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    @contextlib.contextmanager
    def _reference_context(self):
        """Yields the reference model: the frozen copy, or the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        policy = self.accelerator.unwrap_model(self.model)
        with policy.pretrained_model.disable_adapter():
            yield policy

    def optional_peft_ctx(self):
        """Context in which the policy acts as the reference (adapter disabled) for peft models."""
        if self.is_peft_model:
            return self.accelerator.unwrap_model(self.model).pretrained_model.disable_adapter()
        return contextlib.nullcontext()

    @property
    def _pad_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    # ================================================================== step
    @PPODecorators.empty_device_cache()
    def step(
        self,
        queries: list[Tensor],
        responses: list[Tensor],
        scores: list[Tensor],
        response_masks: Optional[list[Tensor]] = None,
    ) -> dict:
        """Run one PPO optimisation step on a batch of queries, responses and their scores.

        Args:
            queries: ``batch_size`` 1-D token tensors.
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

        # 1. validate (bad input raises before anything changes; NaN/inf scores skip the step)
        queries, responses, scores, response_masks = self._validate_step_inputs(queries, responses, scores, response_masks)
        nonfinite = self._nonfinite_scores(scores)
        if nonfinite:
            return self._skip_step(nonfinite, queries, responses, t_start)

        with _out_of_memory_hint("PPOTrainer.step", self._memory_advice(queries, responses), self._drop_gradients):
            # 2. rollout forward: policy log-probs and values, reference log-probs; then the scores
            t = time.perf_counter()
            rollout = self._rollout(queries, responses, response_masks, scores)
            timing["time/ppo/forward_pass"] = time.perf_counter() - t
            nonfinite = self._nonfinite_rollout(rollout)
            if nonfinite:
                return self._skip_step(nonfinite, queries, responses, t_start)
            running_before = self.running.state_dict()
            rollout.scores = self._prepare_scores(rollout.scores)

            # 3. per-token rewards
            t = time.perf_counter()
            rollout.rewards, rollout.non_score_rewards = per_token_rewards(
                rollout.scores, rollout.kls, self.kl_ctl.value, rollout.mask
            )
            timing["time/ppo/compute_rewards"] = time.perf_counter() - t

            # 4. advantages and returns
            t = time.perf_counter()
            rollout.values, rollout.advantages, rollout.returns = self.compute_advantages(
                rollout.values, rollout.rewards, rollout.mask
            )
            timing["time/ppo/compute_advantages"] = time.perf_counter() - t

            # 5. PPO epochs over shuffled minibatches (a NaN/inf loss or gradient drops that update and ends them)
            t = time.perf_counter()
            all_stats, n_skipped, nonfinite, epoch_times = self._ppo_epochs(queries, responses, response_masks, rollout)
            timing["time/ppo/optimize_step"] = time.perf_counter() - t
            timing.update({f"time/ppo/optimize_step/{part}": seconds for part, seconds in epoch_times.items()})

        # 6. statistics (from all processes), non-finite counters, KL controller, scheduler
        t = time.perf_counter()
        stats = self._step_stats(rollout, all_stats, queries, responses)
        stats["ppo/skipped_minibatches"] = float(n_skipped)
        if nonfinite:  # the epochs stopped early: the step counts as skipped, its controllers stay put
            self.nonfinite.bad_step(nonfinite, self.current_step)
            self.running.load_state_dict(running_before)
        else:
            self.nonfinite.good_step()
        stats.update(self.nonfinite.stats(skipped=bool(nonfinite)))
        timing["time/ppo/calc_stats"] = time.perf_counter() - t
        stats["ppo/learning_rate"] = self.optimizer.param_groups[0]["lr"]

        if not nonfinite:
            self.kl_ctl.update(stats["objective/kl"], self.config.batch_size * self.accelerator.num_processes)
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
        timing["time/ppo/total"] = time.time() - t_start
        stats.update(timing)
        self.current_step += 1
        return stats

    def _skip_step(self, what: str, queries: list[Tensor], responses: list[Tensor], t_start: float) -> dict:
        """End a step that changed no weight: count it (`NonFiniteError` once too many), report NaN stats.

        The scalar TRL stats are NaN (vectors are left out), so logging code keeps working;
        the KL controller and the scheduler do not advance.
        """
        self.nonfinite.bad_step(what, self.current_step)
        self._drop_gradients()
        stats: dict = {key: math.nan for key in _SCALAR_STATS}
        for name, seqs in (("queries", queries), ("responses", responses)):
            stats.update(_length_stats(name, _distributed.gather_rows(_lengths(seqs), self.accelerator)))
        stats["objective/kl_coef"] = self.kl_ctl.value
        stats["ppo/skipped_minibatches"] = 0.0
        stats["ppo/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        stats.update(self.nonfinite.stats(skipped=True))
        stats["time/ppo/total"] = time.time() - t_start
        self.current_step += 1
        return stats

    def _drop_gradients(self) -> None:
        self.optimizer.zero_grad()
        self._sync_now, self._window_updates = True, 0

    def _memory_advice(self, queries: list[Tensor], responses: list[Tensor]) -> list[str]:
        cfg = self.config
        longest = max(q.numel() + r.numel() for q, r in zip(queries, responses))
        return [
            f"PPOConfig.mini_batch_size (now {cfg.mini_batch_size}: samples per forward and backward chunk), "
            f"raising gradient_accumulation_steps (now {cfg.gradient_accumulation_steps}) to keep their product",
            f"the sample length (longest query + response now {longest} tokens: lower max_new_tokens or truncate queries)",
            f"PPOConfig.batch_size (now {cfg.batch_size})",
            "or enable gradient checkpointing (model.pretrained_model.gradient_checkpointing_enable())",
        ]

    def _step_stats(self, rollout: Rollout, all_stats: list[dict], queries: list[Tensor], responses: list[Tensor]) -> dict:
        """TRL's step stats. Per-sample values are gathered from every process first, so means and
        standard deviations are those of the global batch."""
        train_stats = stack_dicts(all_stats) if all_stats else {}
        if train_stats:
            train_stats["policy/advantages"] = torch.nan_to_num(train_stats["policy/advantages"].flatten(), WANDB_PADDING)[None]
            train_stats["policy/ratio"] = train_stats["policy/ratio"].flatten()[None]
        data = dict(
            scores=rollout.scores, logprobs=rollout.logprobs, ref_logprobs=rollout.ref_logprobs,
            non_score_reward=rollout.non_score_rewards, masks=rollout.mask, kls=rollout.kls,
            query_lens=_lengths(queries), response_lens=_lengths(responses),
        )
        if self.is_distributed:
            gather = lambda t: _distributed.gather_rows(t, self.accelerator)  # noqa: E731
            data = {key: gather(value) for key, value in data.items()}
            train_stats = {key: gather(v.flatten())[None] if key in _VECTOR_STATS else gather(v) for key, v in train_stats.items()}
        stats = self.record_step_stats(kl_coef=self.kl_ctl.value, train_stats=train_stats, queries=queries, responses=responses, **data)
        for key in _SCALAR_STATS:  # a step whose first minibatch was non-finite has no train stats
            stats.setdefault(key, math.nan)
        return {k: (float(v) if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in stats_to_np(stats).items()}

    # ---------------------------------------------------------------- 1. inputs
    def _validate_queries(self, queries) -> None:
        for i, q in enumerate(queries):
            if not isinstance(q, Tensor):
                raise TypeError(f"query {i} must be a torch.Tensor of token ids, got {type(q).__name__}.")
            _check_token_tensor(q, f"query {i}", min_len=1)
        self._check_token_range(queries, "queries")

    def _check_token_range(self, tensors: list[Tensor], what: str) -> None:
        """Token ids must index the embedding: an out-of-range id would crash the forward (on CUDA, the process)."""
        if not tensors or self._vocab_size is None:
            return
        lo, hi = torch.aminmax(torch.cat([t.detach().reshape(-1).cpu() for t in tensors]))
        if int(lo) < 0 or int(hi) >= self._vocab_size:
            raise ValueError(
                f"{what} hold token ids in [{int(lo)}, {int(hi)}] but the model's vocabulary has {self._vocab_size} "
                "entries (ids 0 .. vocab_size - 1). Tokenise with the model's tokenizer."
            )

    def _check_context(self, queries: list[Tensor], max_new_tokens: Optional[int] = None, responses=None) -> None:
        """Queries (plus responses or max_new_tokens, for causal models) must fit the model's context."""
        limit = self._context_length
        if limit is None:
            return
        for i, q in enumerate(queries):
            if self.is_encoder_decoder:
                extra = responses[i].numel() if responses is not None else 0
                total, parts = max(q.numel(), extra), "the query (or response)"
            else:
                extra = responses[i].numel() if responses is not None else int(max_new_tokens or 0)
                total, parts = q.numel() + extra, "query + " + ("response" if responses is not None else "max_new_tokens")
            if total > limit:
                raise ValueError(
                    f"sample {i}: {parts} is {total} tokens, longer than the model's context of {limit} positions. "
                    "Truncate the queries (e.g. tokenizer(..., truncation=True, max_length=...)) or lower max_new_tokens."
                )

    def _validate_step_inputs(self, queries, responses, scores, response_masks):
        """Check every input before anything is computed; returns them on the trainer's device, scores as (B,)."""
        bs = self.config.batch_size
        named = {"queries": queries, "responses": responses, "scores": scores}
        if response_masks is not None:
            named["response_masks"] = response_masks
        for name, value in named.items():
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"step(): {name} must be a list, got {type(value).__name__}.")
            if len(value) != bs:
                raise ValueError(
                    f"step(): got {len(value)} {name} but PPOConfig.batch_size is {bs}; "
                    "pass exactly batch_size queries, responses and scores."
                )
        self._validate_queries(queries)
        min_len = 2 if self.is_encoder_decoder else 1
        for i, r in enumerate(responses):
            if not isinstance(r, Tensor) or r.dim() != 1:
                raise ValueError(f"response {i} must be a 1-D tensor of token ids, got {getattr(r, 'shape', type(r).__name__)}.")
            if r.numel() < min_len:
                raise ValueError(
                    f"response {i} is empty: PPO needs at least one generated token per response"
                    + (" after the decoder-start token" if self.is_encoder_decoder else "")
                    + ". Filter empty generations out (or set min_new_tokens) before calling step()."
                )
            _check_token_tensor(r, f"response {i}", min_len=min_len)
        self._check_token_range(list(responses), "responses")
        self._check_context(list(queries), responses=list(responses))
        device = self.current_device
        scores_t = torch.stack([_score_value(s, i).to(device) for i, s in enumerate(scores)])  # (B,)
        if response_masks is not None:
            for i, (m, r) in enumerate(zip(response_masks, responses)):
                if not isinstance(m, Tensor) or m.shape != r.shape:
                    raise ValueError(f"response_masks[{i}] must be a tensor of the response's shape {tuple(r.shape)}, got {getattr(m, 'shape', type(m).__name__)}.")
                if m.is_meta or m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                    raise ValueError(f"response_masks[{i}] must hold only 0 and 1 (1 = the token counts in the loss).")
            response_masks = [m.to(device) for m in response_masks]
        queries = [q.to(device=device, dtype=torch.long) for q in queries]  # any integer dtype, any device
        responses = [r.to(device=device, dtype=torch.long) for r in responses]
        return queries, responses, scores_t, response_masks

    def _nonfinite_scores(self, scores: Tensor) -> Optional[str]:
        """Where the scores are NaN/inf (on any process), or None."""
        bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
        if not _distributed.any_over_processes(bool(bad), self.accelerator):
            return None
        return f"the scores (positions {bad} on process {self.accelerator.process_index})" if bad else "the scores of another process"

    def _prepare_scores(self, scores: Tensor) -> Tensor:
        """Score scaling / normalisation by running moments, then clipping. (B,) -> (B,)."""
        if self.config.use_score_scaling:
            self.running.update(scores)
            factor = self.running.std + SCORE_SCALING_EPS
            scores = (scores - self.running.mean) / factor if self.config.use_score_norm else scores / factor
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        return scores

    # ---------------------------------------------------------------- 2. rollout
    def _pad_batch(self, queries, responses, response_masks=None) -> PaddedBatch:
        """Pad ragged queries and responses into model inputs (see `PaddedBatch`)."""
        pad = self._pad_id
        if self.is_encoder_decoder:
            enc, enc_mask = _pad(queries, pad, "right")
            dec, dec_mask = _pad(responses, pad, "right")
            mask = dec_mask[:, 1:].clone()
            if response_masks is not None:
                mask *= _pad(response_masks, 0, "right")[0][:, 1:].to(mask.dtype)
            return PaddedBatch(enc, enc_mask, dec[:, 1:], mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        q_ids, q_mask = _pad(queries, pad, "left")
        r_ids, r_mask = _pad(responses, pad, "right")
        input_ids = torch.cat([q_ids, r_ids], dim=1)  # (n, Q + R)
        attention_mask = torch.cat([q_mask, r_mask], dim=1)
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding must not shift positions
        mask = r_mask.clone()
        if response_masks is not None:
            mask *= _pad(response_masks, 0, "right")[0].to(mask.dtype)
        return PaddedBatch(input_ids, attention_mask, r_ids, mask, position_ids=position_ids)

    def _forward(self, model, batch: PaddedBatch, return_values: bool = True):
        """One forward pass; returns (logits (n, T, V), values (n, T) or None) at the action positions."""
        T = batch.T
        if self.is_encoder_decoder:
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                decoder_input_ids=batch.decoder_input_ids,
                decoder_attention_mask=batch.decoder_attention_mask,
            )
            logits = (out[0] if isinstance(out, tuple) else out.logits)[:, :-1]  # position j predicts token j+1
            values = out[2][:, :-1] if return_values and isinstance(out, tuple) else None
            return logits, values
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        accepted = self._model_kwargs if model is not self.ref_model else _accepted_kwargs(model)
        if "position_ids" in accepted:
            kwargs["position_ids"] = batch.position_ids
        keep = _logits_to_keep(model, accepted, batch.input_ids.shape[1], T, batch.input_ids.device)
        if keep is not None:
            kwargs["logits_to_keep"] = keep  # only the response positions reach the LM head
        out = model(**kwargs)
        logits = out[0] if isinstance(out, tuple) else out.logits
        if not isinstance(keep, Tensor):
            logits = logits[:, -(T + 1) : -1]  # (n, T, V)
        values = out[2][:, -(T + 1) : -1] if return_values and isinstance(out, tuple) else None
        return logits, values

    def _chunks(self, queries, responses, response_masks):
        """Padded batches of ``mini_batch_size`` consecutive samples (each padded to its own longest)."""
        chunk = self.config.mini_batch_size
        for start in range(0, len(queries), chunk):
            sl = slice(start, start + chunk)
            yield self._pad_batch(queries[sl], responses[sl], response_masks[sl] if response_masks else None)

    @torch.no_grad()
    def _rollout(self, queries, responses, response_masks, scores) -> Rollout:
        """Log-probs, values, reference log-probs and per-token KL, in chunks of ``mini_batch_size``."""
        parts: dict[str, list[Tensor]] = {k: [] for k in ("logprobs", "ref_logprobs", "values", "mask", "kls")}
        policy = self.accelerator.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        try:
            for batch in self._chunks(queries, responses, response_masks):
                logits, values = self._forward(policy, batch)
                with self._reference_context() as ref:
                    ref_logits, _ = self._forward(ref, batch, return_values=False)
                logprobs = selected_log_probs(logits, batch.actions)  # (n, T)
                ref_logprobs = selected_log_probs(ref_logits, batch.actions)
                if self.config.kl_penalty == "full":
                    kls = kl_full(logits, ref_logits)
                else:
                    kls = kl_penalty(logprobs, ref_logprobs, self.config.kl_penalty)
                for key, value in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs), ("values", values),
                                   ("mask", batch.mask), ("kls", kls)):
                    parts[key].append(value)
        finally:
            policy.train(was_training)
        full = {k: _cat_padded(v) for k, v in parts.items()}
        mask = full.pop("mask").float()
        return Rollout(mask=mask, scores=scores, **{k: v * mask for k, v in full.items()})

    def _nonfinite_rollout(self, rollout: Rollout) -> Optional[str]:
        """Which rollout tensors hold NaN/inf (on any process), or None."""
        bad = nonfinite_names({"log-probs": rollout.logprobs, "reference log-probs": rollout.ref_logprobs,
                               "values": rollout.values, "per-token KL": rollout.kls})
        if not _distributed.any_over_processes(bool(bad), self.accelerator):
            return None
        return f"the rollout ({', '.join(bad)} on process {self.accelerator.process_index})" if bad else "the rollout of another process"

    def batched_forward_pass(
        self, model, queries: Tensor, responses: Tensor, model_inputs: dict = None, return_logits: bool = False,
        response_masks: Optional[Tensor] = None,
    ):
        """Forward ``model`` over the batch in chunks of ``mini_batch_size``, without gradients.

        queries, responses: lists (or batched tensors) of token ids. ``model_inputs`` is
        accepted for TRL compatibility and ignored: the inputs are rebuilt from the
        token lists with correct padding and position ids. Returns
        (logprobs (B, T), logits (B, T, V) or None, values (B, T), masks (B, T)).
        """
        queries, responses = list(queries), list(responses)
        response_masks = list(response_masks) if response_masks is not None else None
        out = {k: [] for k in ("logprobs", "logits", "values", "mask")}
        with torch.no_grad():
            for batch in self._chunks(queries, responses, response_masks):
                logits, values = self._forward(model, batch)
                out["logprobs"].append(selected_log_probs(logits, batch.actions))
                out["logits"].append(logits if return_logits else None)
                out["values"].append(values if values is not None else torch.zeros_like(batch.mask, dtype=torch.float32))
                out["mask"].append(batch.mask)
        logits = _cat_padded(out["logits"]) if return_logits else None
        return _cat_padded(out["logprobs"]), logits, _cat_padded(out["values"]), _cat_padded(out["mask"])

    # ---------------------------------------------------------------- 3. rewards
    def compute_rewards(self, scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, masks: Tensor):
        """Per-token rewards from the scores and the KL penalty.

        scores: (B,); logprobs, ref_logprobs, masks: (B, T) — or, for ``kl_penalty="full"``,
        full log-distributions (B, T, V). Returns (rewards, non_score_rewards, kls), each (B, T).
        """
        if self.config.kl_penalty == "full" and logprobs.dim() == 3:
            kls = (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1)  # KL(p || q) per token
        else:
            kls = kl_penalty(logprobs, ref_logprobs, self.config.kl_penalty if self.config.kl_penalty != "full" else "kl")
        rewards, non_score = per_token_rewards(scores, kls, self.kl_ctl.value, masks)
        return rewards, non_score, kls

    # ---------------------------------------------------------------- 4. advantages
    def compute_advantages(self, values: Tensor, rewards: Tensor, mask: Tensor):
        """GAE advantages (whitened over the batch) and returns. (B, T) each -> (values, advantages, returns)."""
        values = values * mask
        rewards = rewards * mask
        # Whitening uses the statistics of the global batch (all processes), as one process would.
        if self.config.whiten_rewards:
            rewards = _distributed.masked_whiten_over_processes(rewards, mask, self.accelerator, shift_mean=False)
        advantages, returns = gae(values, rewards, mask, gamma=self.config.gamma, lam=self.config.lam)
        advantages = _distributed.masked_whiten_over_processes(advantages, mask, self.accelerator).detach()
        return values, advantages, returns

    # ---------------------------------------------------------------- 5. PPO epochs
    def _ppo_epochs(
        self, queries, responses, response_masks, rollout: Rollout
    ) -> tuple[list[dict], int, Optional[str], dict[str, float]]:
        """Returns the minibatch stats, the number of minibatches skipped by ratio_threshold,
        where NaN/inf values stopped the epochs (None when they ran to the end), and the seconds
        spent in the forward passes and losses ("forward"), the backward passes ("backward") and
        the clipping plus optimizer steps ("optimizer").

        The clocks are host-side (perf_counter, no device sync): on CUDA a phase's kernels may
        still run when its clock stops, so part of their time lands in the next phase.
        """
        cfg = self.config
        bs = len(queries)
        all_stats: list[dict] = []
        n_skipped = 0
        nonfinite = None
        seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = np.random.permutation(bs)
            stop = False
            for bstart in range(0, bs, cfg.backward_batch_size):
                window = order[bstart : bstart + cfg.backward_batch_size]
                self._window_updates = 0
                for k, mstart in enumerate(range(0, len(window), cfg.mini_batch_size)):
                    idx = window[mstart : mstart + cfg.mini_batch_size].tolist()
                    self._sync_now = mstart + cfg.mini_batch_size >= len(window)
                    batch = self._pad_batch([queries[i] for i in idx], [responses[i] for i in idx],
                                            [response_masks[i] for i in idx] if response_masks else None)
                    T = batch.T
                    sync_ctx = contextlib.nullcontext() if self._sync_now or not self.is_distributed else self.accelerator.no_sync(self.model)
                    with sync_ctx:
                        t = time.perf_counter()
                        with sparse_embedding_grad(self._tied_embedding):
                            logits, vpreds = self._forward(self.model, batch)
                        logprobs = selected_log_probs(logits, batch.actions)
                        seconds["forward"] += time.perf_counter() - t
                        old = {k2: getattr(rollout, k2)[idx, :T] for k2 in ("logprobs", "values", "mask", "advantages", "returns")}
                        train_stats = self.train_minibatch(
                            old["logprobs"], old["values"], logprobs, logits, vpreds, old["mask"], old["advantages"], old["returns"]
                        )
                    for part in seconds:
                        seconds[part] += train_stats.pop(f"_seconds/{part}", 0.0)
                    n_skipped += int(train_stats.pop("_skipped"))
                    nonfinite = train_stats.pop("_nonfinite")
                    if nonfinite:  # the update was dropped; later minibatches would start from the same state
                        stop = True
                        break
                    all_stats.append(train_stats)
                    if cfg.early_stopping and self._early_stop(train_stats["policy/policykl"]):
                        stop = True
                        break
                if stop:
                    break
            if stop:
                break
        self._sync_now = True
        return all_stats, n_skipped, nonfinite, seconds

    def _early_stop(self, policykl: Tensor) -> bool:
        """True once the policy KL of a minibatch exceeds 1.5 x target_kl (on any process)."""
        stop = _distributed.any_over_processes(float(policykl) > 1.5 * self.config.target_kl, self.accelerator)
        if stop:
            self.optimizer.zero_grad()
        return stop

    def train_minibatch(
        self, old_logprobs: Tensor, values: Tensor, logprobs: Tensor, logits: Tensor, vpreds: Tensor,
        mask: Tensor, advantages: Tensor, returns: Tensor,
    ) -> dict:
        """Backward one PPO minibatch; step the optimizer at the end of an accumulation window.

        All tensors (n, T) except logits (n, T, V). Returns the minibatch's stats. A NaN/inf
        loss is not backpropagated and NaN/inf gradients are not applied: the accumulation
        window's gradients are dropped and ``_nonfinite`` in the stats says which it was.
        ``_seconds/forward``, ``_seconds/backward`` and ``_seconds/optimizer`` time the loss,
        the backward pass and the clipping plus optimizer step (host-side clocks).
        """
        self.model.train()
        seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        t = time.perf_counter()
        loss_p, loss_v, train_stats = self.loss(old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns)
        skipped = bool(train_stats.pop("_skipped"))
        loss = (loss_p + loss_v) / self.config.gradient_accumulation_steps
        seconds["forward"] = time.perf_counter() - t
        nonfinite = None
        # Decided on all processes together: a process skipping backward alone would hang the gradient all-reduce.
        if _distributed.any_over_processes(not bool(torch.isfinite(loss.detach())), self.accelerator):
            nonfinite = "the PPO loss"
            self._drop_gradients()
        else:
            t = time.perf_counter()
            self.accelerator.backward(loss)
            seconds["backward"] = time.perf_counter() - t
            self._window_updates += 0 if skipped else 1
            if self._sync_now:
                t = time.perf_counter()
                nonfinite = self._optimizer_step()
                seconds["optimizer"] = time.perf_counter() - t
        train_stats["_skipped"] = skipped
        train_stats["_nonfinite"] = nonfinite
        train_stats.update({f"_seconds/{part}": value for part, value in seconds.items()})
        return train_stats

    def _optimizer_step(self) -> Optional[str]:
        """Clip and apply the window's gradients unless one is NaN/inf (then return "the gradients").

        The gradient norm is computed once: by the clipping when max_grad_norm is set (it returns
        the norm before clipping, NaN/inf when a gradient is), else by `grad_norm`.
        """
        nonfinite = None
        if self._window_updates > 0:
            densify_grad(self._tied_embedding)
            params = [p for p in self.model.parameters() if p.requires_grad]
            if self.config.max_grad_norm is not None:
                norm = self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
            else:
                norm = grad_norm(params)
            if _distributed.any_over_processes(not bool(torch.isfinite(torch.as_tensor(norm))), self.accelerator):
                nonfinite = "the gradients"
            else:
                self.optimizer.step()
        self.optimizer.zero_grad()
        self._window_updates = 0
        return nonfinite

    def loss(
        self, old_logprobs: Tensor, values: Tensor, logits: Tensor, vpreds: Tensor, logprobs: Tensor,
        mask: Tensor, advantages: Tensor, returns: Tensor,
    ):
        """Clipped policy loss and weighted clipped value loss of one minibatch.

        All tensors (n, T) except logits (n, T, V). Returns (policy_loss,
        vf_coef * value_loss, stats). A minibatch whose mean ratio exceeds
        ``ratio_threshold`` contributes zero loss (and is counted as skipped).
        """
        cfg = self.config
        pg_loss, pg_clipfrac, ratio = policy_loss(logprobs, old_logprobs, advantages, mask, cfg.cliprange)
        vf_loss, vf_clipfrac = value_loss(vpreds, values, returns, mask, cfg.cliprange_value)
        total = pg_loss + cfg.vf_coef * vf_loss
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
            pg_loss, vf_loss, total = pg_loss * 0.0, vf_loss * 0.0, total * 0.0
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(logits.detach()), mask)
            kl_approx, kl_policy = approx_kl(logprobs.detach(), old_logprobs, mask)
            stats = dict(
                loss=dict(policy=pg_loss.detach(), value=vf_loss.detach(), total=total.detach()),
                policy=dict(
                    entropy=entropy, approxkl=kl_approx, policykl=kl_policy, clipfrac=pg_clipfrac.detach(),
                    advantages=advantages.detach(), advantages_mean=masked_mean(advantages, mask).detach(),
                    ratio=ratio.detach(),
                ),
                returns=dict(mean=masked_mean(returns, mask), var=_safe_var(returns, mask)),
                val=dict(
                    vpred=masked_mean(vpreds.detach(), mask), error=masked_mean((vpreds.detach() - returns) ** 2, mask),
                    clipfrac=vf_clipfrac.detach(), mean=masked_mean(values, mask), var=_safe_var(values, mask),
                ),
            )
        flat = flatten_dict(stats)
        flat["_skipped"] = skipped
        return pg_loss, cfg.vf_coef * vf_loss, flat

    # ---------------------------------------------------------------- 6. stats
    def record_step_stats(self, kl_coef: float, **data) -> dict:
        """Summarise a step: KL, entropy, scores, lengths and the averaged PPO stats (TRL's key names).

        ``data``: scores (B,), logprobs, ref_logprobs, non_score_reward, masks, kls (B, T),
        queries and responses (lists; or their lengths as ``query_lens`` / ``response_lens``),
        train_stats (stacked minibatch stats).
        """
        mask = data.pop("masks")
        kls = data.pop("kls")
        kl_list = (kls * mask).sum(dim=-1)  # (B,) sequence KL with the configured estimator
        mean_kl = kl_list.mean()
        mean_entropy = (-data["logprobs"] * mask).sum(dim=-1).mean()
        mean_non_score_reward = masked_mean(data["non_score_reward"], mask)
        scores = data["scores"]
        if mean_kl.item() < NEGATIVE_KL_WARNING:
            warnings.warn(
                f"The KL to the reference is negative ({mean_kl.item():.2f}): the responses are more likely under "
                "the reference than under the policy that produced them. This usually comes from generation "
                "settings that change the sampling distribution (min_length / min_new_tokens, top_k, top_p, "
                "temperature, suppressed EOS, a pad token equal to a real token) or from responses that were not "
                "sampled from this policy. Sample with do_sample=True, top_k=0, top_p=1.0 and no length forcing.",
                UserWarning,
                stacklevel=2,
            )
        stats = {
            "objective/kl": mean_kl,
            "objective/kl_dist": kl_list,
            "objective/logprobs": data["logprobs"],
            "objective/ref_logprobs": data["ref_logprobs"],
            "objective/kl_coef": kl_coef,
            "objective/entropy": mean_entropy,
            "ppo/mean_non_score_reward": mean_non_score_reward,
            "ppo/mean_scores": scores.mean(),
            "ppo/std_scores": scores.std() if scores.numel() > 1 else torch.zeros(()),
        }
        query_lens = data.get("query_lens")  # given (gathered from all processes) by step
        response_lens = data.get("response_lens")
        query_lens = _lengths(data["queries"]) if query_lens is None else query_lens
        response_lens = _lengths(data["responses"]) if response_lens is None else response_lens
        for name, lens in (("queries", query_lens), ("responses", response_lens)):
            stats.update(_length_stats(name, lens))
        for key, value in data["train_stats"].items():
            mean = value.float().mean(dim=0)
            stats[f"ppo/{key}"] = mean.reshape(()) if mean.numel() == 1 and key not in _VECTOR_STATS else mean
        if "ppo/val/error" in stats:
            stats["ppo/val/var_explained"] = 1 - stats["ppo/val/error"] / stats["ppo/returns/var"].clamp(min=1e-12)
        return stats

    def gather_stats(self, stats: dict) -> dict:
        """Average the tensor stats over all processes."""
        return _distributed.mean_over_processes(stats, self.accelerator)

    def log_stats(self, stats: dict, batch: dict, rewards: list, columns_to_log: list = ["query", "response"]):  # noqa: B006 (TRL's signature)
        """Send ``stats`` and a table of samples with their rewards to the configured tracker.

        ``rewards`` and the ``columns_to_log`` of ``batch`` are this process's; the reward stats and
        the table cover the samples of every process. Returns the logged dict.
        """
        if not isinstance(rewards, Tensor):
            rewards = torch.tensor([float(r) for r in rewards])
        rewards = self.accelerator.gather(rewards.float().to(self.current_device).flatten())
        missing = [c for c in columns_to_log if c not in batch]
        if missing:
            raise ValueError(f"log_stats: batch has no column(s) {missing}; it has {sorted(batch)}.")
        logs = {k: (v.float() if isinstance(v, Tensor) and v.dtype == torch.bfloat16 else v) for k, v in stats.items()}
        logs["env/reward_mean"] = rewards.mean().item()
        logs["env/reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
        logs["env/reward_dist"] = rewards.cpu().numpy()
        if self.config.log_with is None:
            return logs
        # Every process's samples, in the order of the gathered rewards (as TRL); a collective call.
        from accelerate.utils import gather_object

        columns = [gather_object(list(batch[c])) for c in columns_to_log]
        if not self.accelerator.is_main_process:
            return logs
        rows = [list(r) + [float(x)] for r, x in zip(zip(*columns), rewards.cpu().tolist())]
        if self.config.log_with == "wandb":
            import wandb

            logs["game_log"] = wandb.Table(columns=[*columns_to_log, "reward"], rows=rows)
            self.accelerator.log(logs)
        else:  # tensorboard takes scalars only; the samples go in as a text table
            scalars = {k: v for k, v in convert_to_scalar(logs).items() if isinstance(v, (int, float))}
            self.accelerator.log(scalars, step=self.current_step)
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            header = " | ".join([*columns_to_log, "reward"])
            table = "\n".join([header, " | ".join("---" for _ in range(len(columns_to_log) + 1))]
                              + [" | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) for row in rows])
            tracker.add_text("game_log", table, global_step=self.current_step)
        return logs

    # ================================================================== saving
    def create_model_card(self, path: str, model_name: Optional[str] = "TRL Model") -> None:
        """Write a model card (README.md) describing the PPO training into ``path``."""
        cfg = self.config
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        base = getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "") or "unknown"
        rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in cfg.to_dict().items())
        card = f"""---
library_name: rlft
tags:
- rlft
- ppo
- reinforcement-learning
- rlhf
---

# {model_name}

A language model fine-tuned with PPO (reinforcement learning from a reward signal) using
[rlft](https://pypi.org/project/rlft/), a drop-in for the TRL 0.7 API.

- Base model: `{base}`
- Task: {cfg.task_name or "not recorded"}; query dataset: {cfg.query_dataset or "not recorded"}; reward model: {cfg.reward_model or "not recorded"}
- PPO steps done: {self.current_step}; final KL coefficient: {self.kl_ctl.value:.4g}
- Value head: saved in `value_head.safetensors` (needed only to continue PPO training)

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path.name}")
tokenizer = AutoTokenizer.from_pretrained("{path.name}")
```

To continue training with the value head:

```python
from rlft import AutoModelForCausalLMWithValueHead

model = AutoModelForCausalLMWithValueHead.from_pretrained("{path.name}")
```

## Training configuration

| field | value |
|---|---|
{rows}
"""
        (path / "README.md").write_text(card, encoding="utf-8")

    def save_pretrained(self, save_directory: str) -> None:
        """Save the model (with value head), the tokenizer and a model card to ``save_directory``."""
        self._save_pretrained(save_directory)

    def _save_pretrained(self, save_directory: str) -> None:
        if not self.accelerator.is_main_process:
            return
        self.accelerator.unwrap_model(self.model).save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)
        self.create_model_card(save_directory)

# ====================================================================== helpers
def _pad(seqs: list[Tensor], value: int, side: str) -> tuple[Tensor, Tensor]:
    """Stack 1-D tensors into (n, max_len) with ``value`` padding on ``side``; also return the 0/1 mask."""
    ids = pad(seqs, padding_value=value, padding_side=side)
    mask = pad([torch.ones_like(s, dtype=torch.long) for s in seqs], padding_value=0, padding_side=side)
    return ids, mask


def _pad_right(t: Tensor, width: int) -> Tensor:
    """Zero-pad dim 1 of ``t`` to ``width``."""
    missing = width - t.shape[1]
    if missing == 0:
        return t
    pad_shape = list(t.shape)
    pad_shape[1] = missing
    return torch.cat([t, torch.zeros(pad_shape, dtype=t.dtype, device=t.device)], dim=1)


def _cat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate chunks along dim 0, zero-padding dim 1 to the widest chunk."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([_pad_right(p, width) for p in parts])


def _after_first(tokens: Tensor, eos_ids: set[int]) -> int:
    """Length of ``tokens`` up to and including the first EOS (all of it when there is none)."""
    if not eos_ids or tokens.numel() == 0:
        return tokens.shape[0]
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    hits = torch.nonzero(is_eos)
    return int(hits[0, 0]) + 1 if hits.numel() else tokens.shape[0]


def _check_token_tensor(t: Tensor, what: str, min_len: int) -> None:
    """A 1-D tensor of integer token ids with data (any device: it is moved to the trainer's)."""
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor of token ids, got shape {tuple(t.shape)}.")
    if t.is_meta:
        raise ValueError(f"{what} is on the 'meta' device and holds no data; pass real token ids.")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} holds floats ({t.dtype}); token ids must be integers.")
    if t.dtype == torch.bool:
        raise TypeError(f"{what} holds booleans; token ids must be integers (torch.long).")
    if t.numel() < min_len:
        raise ValueError(f"{what} is empty; every query needs at least one token.")


def _score_value(s, i: int) -> Tensor:
    """One score (a number or a one-element tensor) as a 0-d float32 tensor; anything else is an error."""
    if isinstance(s, Tensor):
        if s.is_meta:
            raise ValueError(f"score {i} is on the 'meta' device and holds no data.")
        if s.numel() != 1:
            raise ValueError(f"score {i} must be a scalar, got a tensor of shape {tuple(s.shape)}; reduce it to one number per response.")
        if s.dtype == torch.bool or s.is_complex():
            raise TypeError(f"score {i} must be a real number, got a {s.dtype} tensor.")
        return s.detach().reshape(()).float()
    if isinstance(s, (bool, np.bool_, complex, np.complexfloating)) or not isinstance(s, (int, float, np.number)):
        raise TypeError(f"score {i} must be a number or a 0-d tensor, got {type(s).__name__}.")
    return torch.tensor(float(s))


def _vocab_and_context(model) -> tuple[Optional[int], Optional[int]]:
    """Embedding rows and maximum positions of the wrapped model (None where it has no fixed limit)."""
    inner = getattr(model, "pretrained_model", model)
    try:
        vocab = int(inner.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        vocab = None
    cfg = getattr(inner, "config", None)
    context = None
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            context = value
            break
    return vocab, context


@contextlib.contextmanager
def _out_of_memory_hint(where: str, advice: list[str], cleanup: Optional[Callable[[], None]] = None):
    """Re-raise an out-of-memory error with the batch settings to lower (after ``cleanup``); others pass unchanged."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        if cleanup is not None:
            cleanup()  # no half-accumulated gradient may leak into the next step
        raise out_of_memory_error(err, where, advice) from err


def _lengths(seqs: list[Tensor]) -> Tensor:
    return torch.tensor([float(len(x)) for x in seqs])


def _length_stats(name: str, lens: Tensor) -> dict:
    """tokens/{name}_len_mean, _len_std and _dist of a (n,) tensor of lengths."""
    lens = lens.detach().float().cpu()
    return {
        f"tokens/{name}_len_mean": lens.mean().item(),
        f"tokens/{name}_len_std": lens.std().item() if lens.numel() > 1 else 0.0,
        f"tokens/{name}_dist": lens.numpy(),
    }


def _logits_to_keep(model, accepted: set[str], width: int, T: int, device) -> Union[Tensor, int, None]:
    """What to pass as ``logits_to_keep`` so that only the T action positions reach the LM head.

    The indices of the positions (width - T - 1 .. width - 2) where the model takes a tensor:
    the gathered hidden states are contiguous, so the head is one matmul even when its weight
    is frozen (the reference, a shared trunk, a LoRA base). A count (T + 1) keeps a strided
    view, which torch multiplies by a frozen weight as a batched matmul over one expanded copy
    of the weight per sequence: several times slower. None when the model has no such argument.
    """
    if "logits_to_keep" not in accepted:
        return None
    inner = getattr(model, "pretrained_model", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    try:
        annotation = str(inspect.signature(inner.forward).parameters["logits_to_keep"].annotation)
    except (KeyError, TypeError, ValueError):
        annotation = ""
    if "Tensor" not in annotation:
        return T + 1
    return torch.arange(width - T - 1, width - 1, device=device)  # (T,) positions whose logits score the actions


#: Device types whose parameters the default optimizer updates with torch's fused Adam kernel.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def _default_optimizer(params: list, lr: float) -> torch.optim.Optimizer:
    """Adam, TRL's default, as torch's fused kernel where every parameter allows it.

    ``torch.optim.Adam(params, lr=lr, fused=True)`` applies the update of TRL's per-parameter
    ``torch.optim.Adam(params, lr=lr)`` in one pass over all parameters (about 5x faster on CPU,
    where the per-parameter loop took about 10% of a 5M-parameter model's PPO step). Same formula,
    not the same floats: the kernel rounds differently (about 1e-7 relative per step), so a seeded
    run does not follow TRL's trajectory bit for bit. Pass ``optimizer=torch.optim.Adam(...)`` to
    PPOTrainer for the reference loop.

    Fused needs floating-point plain tensors on a device in `_FUSED_ADAM_DEVICES`; otherwise
    (complex parameters, other devices, tensor subclasses) torch picks: foreach on CUDA, the
    per-parameter loop elsewhere. (Adam checks ``fused`` only at its first step, so this is decided here.)
    """
    params = list(params)
    fused = all(
        type(p) in (Tensor, torch.nn.Parameter) and p.device.type in _FUSED_ADAM_DEVICES and torch.is_floating_point(p)
        for p in params
    )
    if fused and params:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def _safe_var(values: Tensor, mask: Tensor) -> Tensor:
    return masked_var(values, mask) if mask.sum() > 0 else torch.zeros((), device=values.device)


def _accepted_kwargs(model) -> set[str]:
    """Forward arguments of the transformers model inside a wrapper (and peft) that we may pass."""
    inner = getattr(model, "pretrained_model", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _tracker_init_kwargs(config: PPOConfig) -> dict:
    kwargs = dict(config.tracker_kwargs)
    if config.log_with == "wandb":
        import os

        wandb_kwargs = dict(kwargs.get("wandb", {}))
        # Without credentials or network, log offline instead of failing the run.
        if not os.environ.get("WANDB_API_KEY") or os.environ.get("HF_HUB_OFFLINE") == "1":
            wandb_kwargs.setdefault("mode", os.environ.get("WANDB_MODE", "offline"))
        kwargs["wandb"] = wandb_kwargs
    return kwargs

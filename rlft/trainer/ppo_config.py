"""PPOConfig: every hyperparameter of `PPOTrainer`, with TRL 0.7.10's names and defaults."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

try:  # TRL 0.7.10's dict fields parse as JSON on a tyro command line (--ppo_config.tracker_kwargs='{...}')
    import tyro
    from typing_extensions import Annotated

    JSONDict = Annotated[Optional[dict], tyro.conf.arg(metavar="JSON", constructor=json.loads)]
except ImportError:  # tyro is optional: without it the fields are plain dicts (a JSON string is parsed too)
    JSONDict = Optional[dict]

from .._compat import warn_once
from ..import_utils import is_tensorboard_available, is_wandb_available
from ..functional.critic_free import LOSS_AGGREGATIONS
from ..functional.ppo import KL_ESTIMATORS

TRACKERS = ("wandb", "tensorboard")
#: Advantage estimators of `PPOTrainer.step`. "gae" needs a critic (value head); the others are critic-free.
ADVANTAGE_ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp")
#: Estimators that compare the samples of a group (``num_generations`` responses to one query).
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
#: Each estimator's paper defaults for the fields left as None (see docs/critic_free.md):
#: (KL penalty in the per-token reward, kl_loss_coef, loss_aggregation).
ESTIMATOR_DEFAULTS = {
    "gae": (True, 0.0, "token_mean"),  # TRL 0.7 / Ziegler et al. 2019
    "grpo": (False, 0.04, "seq_mean_token_mean"),  # Shao et al. 2024, eq. 3 (beta = 0.04, k3 KL in the loss)
    "dr_grpo": (False, 0.0, "seq_mean_token_sum_norm"),  # Liu et al. 2025: no std, no length normalisation, no KL
    "rloo": (True, 0.0, "token_mean"),  # Ahmadian et al. 2024: KL penalty inside the reward
    "reinforce_pp": (True, 0.0, "token_mean"),  # Hu 2025: token-level KL in the reward, global normalisation
}


#: Precisions of ``mixed_precision`` (accelerate's names; its "fp8" needs extra kernels and is not offered).
MIXED_PRECISIONS = ("no", "bf16", "fp16")
#: Largest |ratio - 1| of a bf16 step before any update (learning rate 0): the rollout (or generation) and
#: the update forwards batch and pad the samples differently, so bf16's 8-bit mantissa rounds them apart.
#: Measured 4e-3 (rollout_logprobs="recompute") and 6e-3 ("generation") on the 5M-parameter benchmark model;
#: fp32 stays within 2e-6 (docs/mixed_precision.md).
BF16_RATIO_ATOL = 1e-2

#: Sources of the rollout's policy log-probs (``rollout_logprobs``).
ROLLOUT_LOGPROBS = ("recompute", "generation")
#: Largest difference (nats, fp32) between a log-prob or value recorded during generation and the
#: recompute path's: the KV-cached decode and one full forward sum in different orders.
ROLLOUT_LOGPROBS_ATOL = 1e-4


def _default_exp_name() -> str:
    name = os.path.basename(sys.argv[0] or "rlft")
    return name[: -len(".py")] if name.endswith(".py") else name


@dataclass
class PPOConfig:
    """Configuration of `PPOTrainer`.

    Batch sizes: each `step()` takes ``batch_size`` samples per process; PPO then
    runs ``ppo_epochs`` passes over them in minibatches of ``mini_batch_size``,
    accumulating ``gradient_accumulation_steps`` minibatches per optimizer step.
    ``batch_size`` must be a multiple of ``mini_batch_size * gradient_accumulation_steps``.
    """

    # ---- run and logging
    exp_name: str = field(default_factory=_default_exp_name)
    """Name of the experiment (defaults to the script's file name)."""
    seed: int = 0
    """Seed for random, numpy and torch."""
    log_with: Optional[Literal["wandb", "tensorboard"]] = None
    """Tracker to log to: "wandb", "tensorboard" or None. The package must be installed."""
    task_name: Optional[str] = None
    """Name of the task, recorded in the model card and tracker config."""
    model_name: Optional[str] = None
    """Name of the model, recorded in the model card and tracker config."""
    query_dataset: Optional[str] = None
    """Name of the query dataset, recorded in the model card."""
    reward_model: Optional[str] = None
    """Name of the reward model, recorded in the model card."""
    remove_unused_columns: bool = True
    """Drop dataset columns the model's forward does not take (datasets.Dataset only)."""
    tracker_kwargs: JSONDict = field(default_factory=dict)
    """Keyword arguments for the tracker's init (e.g. wandb's run name)."""
    accelerator_kwargs: JSONDict = field(default_factory=dict)
    """Keyword arguments for `accelerate.Accelerator`."""
    project_kwargs: JSONDict = field(default_factory=dict)
    """Keyword arguments for accelerate's `ProjectConfiguration` (e.g. logging_dir)."""
    tracker_project_name: str = "trl"
    """Project name in the tracker (TRL's default kept, for existing dashboards)."""
    push_to_hub_if_best_kwargs: JSONDict = field(default_factory=dict)
    """Keyword arguments for pushing the best model (recorded; pushing needs network)."""

    # ---- optimisation
    steps: int = 20000
    """Number of PPO steps planned (used by schedulers and the command line)."""
    learning_rate: float = 1e-5
    """Adam learning rate."""

    # ---- KL control
    adap_kl_ctrl: bool = True
    """Adapt the KL coefficient towards ``target`` (True) or keep it fixed (False)."""
    init_kl_coef: Optional[float] = 0.2
    """Initial (or fixed) KL penalty coefficient beta."""
    kl_penalty: Literal["kl", "abs", "mse", "full"] = "kl"
    """Per-token KL estimator: "kl" (logp - logq), "abs", "mse" (0.5 (logp - logq)^2) or "full" (exact, from logits)."""
    target: Optional[float] = 6
    """Target KL (nats per sequence) of adaptive control."""
    horizon: Optional[float] = 10000
    """Horizon (samples) of adaptive control."""

    # ---- advantages and losses
    gamma: float = 1
    """Discount factor of GAE."""
    lam: float = 0.95
    """Lambda of GAE."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float = 0.2
    """Clip range of the value prediction around the rollout's value."""
    vf_coef: float = 0.1
    """Weight of the value loss."""

    # ---- batch sizes
    batch_size: int = 256
    """Samples per `step()` per process."""
    forward_batch_size: Optional[int] = None
    """Deprecated alias of ``mini_batch_size`` (TRL 0.7 accepted it with a warning)."""
    mini_batch_size: int = 1
    """Samples per PPO minibatch (and per chunk of the rollout forward pass)."""
    gradient_accumulation_steps: int = 1
    """Minibatches accumulated per optimizer step."""
    world_size: Optional[int] = None
    """Number of processes (filled in from the launcher; do not set)."""
    ppo_epochs: int = 4
    """Passes over each batch."""
    max_grad_norm: Optional[float] = None
    """Clip the gradient norm to this value (None: no clipping)."""
    optimize_cuda_cache: Optional[bool] = None
    """Deprecated alias of ``optimize_device_cache``."""
    optimize_device_cache: Optional[bool] = False
    """Free cached accelerator memory after the forward pass and the step."""
    early_stopping: bool = False
    """Stop the PPO epochs of a step once the policy KL exceeds 1.5 x ``target_kl``."""
    target_kl: float = 1
    """KL threshold of ``early_stopping``."""
    compare_steps: int = 1
    """Steps between comparisons when pushing the best model."""
    ratio_threshold: float = 10.0
    """Skip a minibatch whose mean policy ratio exceeds this (a sign of a broken batch)."""
    use_score_scaling: bool = False
    """Divide scores by their running standard deviation."""
    use_score_norm: bool = False
    """With ``use_score_scaling``, also subtract the running mean."""
    score_clip: Optional[float] = None
    """Clip (scaled) scores to [-score_clip, score_clip]."""
    whiten_rewards: bool = False
    """Whiten per-token rewards (keeping their mean) before computing advantages."""

    # ---- filled in from the model and the launcher (TRL computed these at run time)
    is_encoder_decoder: Optional[bool] = None
    """Whether the model is an encoder-decoder (filled in by the trainer)."""
    is_peft_model: Optional[bool] = None
    """Whether the model is a peft model (filled in by the trainer)."""
    backward_batch_size: Optional[int] = None
    """mini_batch_size x gradient_accumulation_steps (derived)."""
    global_backward_batch_size: Optional[int] = None
    """backward_batch_size x world_size (derived)."""
    global_batch_size: Optional[int] = None
    """batch_size x world_size (derived)."""

    # ---- reliability (rlft additions; TRL 0.7 had no equivalent)
    skip_nonfinite_steps: bool = True
    """Skip a step whose scores, rollout (log-probs, values, KL), losses or gradients hold NaN/inf:
    no weight update, counted in ``ppo/nonfinite/*`` stats, warned about. False: raise `NonFiniteError`
    at the first one."""
    max_consecutive_nonfinite_steps: int = 5
    """Stop with `NonFiniteError` (naming the last good checkpoint) after this many non-finite steps in a row."""
    save_total_limit: Optional[int] = None
    """`PPOTrainer.save_checkpoint` keeps only this many newest checkpoints in its folder (None: all)."""

    # ---- critic-free estimators (rlft additions; see docs/critic_free.md)
    advantage_estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = "gae"
    """How advantages are estimated: "gae" (TRL 0.7's PPO with a value head and GAE) or a critic-free
    estimator: "grpo" (group-normalised scores, Shao et al. 2024), "dr_grpo" (group mean baseline, no std
    and no length normalisation, Liu et al. 2025), "rloo" (leave-one-out baseline, Ahmadian et al. 2024),
    "reinforce_pp" (token returns normalised over the global batch, Hu 2025). Critic-free estimators take
    a plain causal LM (no value head): no value forward and no value loss."""
    num_generations: int = 1
    """Samples per query: `step` gets ``batch_size`` samples in consecutive blocks of this many that share
    a query (the groups of grpo / dr_grpo / rloo, which need at least 2)."""
    kl_in_reward: Optional[bool] = None
    """Subtract ``kl_coef`` x the per-token KL estimate (``kl_penalty``) from the reward, with the adaptive or
    fixed controller. None: the estimator's default (yes for gae, rloo, reinforce_pp; no for grpo, dr_grpo)."""
    kl_loss_coef: Optional[float] = None
    """Weight of a KL term in the loss: the k3 estimator of KL(policy || reference) per token (as GRPO).
    None: the estimator's default (0.04 for grpo, 0 otherwise)."""
    loss_aggregation: Optional[Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]] = None
    """How per-token losses become one number: "token_mean" (mean over every kept token of the minibatch:
    TRL 0.7, DAPO), "seq_mean_token_mean" (mean of each sequence's token mean: GRPO),
    "seq_mean_token_sum_norm" (token sum divided by sequences x ``loss_max_tokens``: Dr. GRPO).
    None: the estimator's default."""
    loss_max_tokens: Optional[int] = None
    """The constant token count of "seq_mean_token_sum_norm" (Dr. GRPO uses the generation budget,
    max_new_tokens). None: the longest response of the step."""
    reuse_update_forward: bool = True
    """When a step makes one update from one forward of the whole batch (ppo_epochs=1 and mini_batch_size >=
    batch_size), the rollout's log-probs and values come from that forward (run with gradients) instead of a
    separate no-grad forward: one policy forward less per step, and the ratio is exactly 1. False: recompute."""
    cliprange_high: Optional[float] = None
    """Upper clip range of the policy ratio (DAPO's clip-higher: ratio clipped to [1 - cliprange,
    1 + cliprange_high]). None: symmetric, ``cliprange``."""

    rollout_logprobs: Optional[Literal["recompute", "generation"]] = None
    """Where the rollout's policy log-probs and values come from. "recompute": a no-grad forward of the policy
    over the batch in `step` (TRL 0.7). "generation": recorded by `PPOTrainer.generate` while it samples, from
    the raw logits each token was drawn from (before temperature / top-k / top-p, as the recompute reads them)
    and the value head on the last hidden state; `step` uses them when its queries and responses are exactly
    ones `generate` returned since the last update (anything else is recomputed), and then forwards only the
    reference (nothing, with no KL in the reward or the loss). Both agree within `ROLLOUT_LOGPROBS_ATOL`.
    None: "recompute" for gae, "generation" for the critic-free estimators. See docs/ppo_performance.md."""

    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    """Precision of the model forwards, with accelerate's names: "no" (fp32, TRL 0.7's behaviour), "bf16"
    (bfloat16 autocast: CPUs with bf16 matrix instructions, recent GPUs) or "fp16" (float16 autocast with
    accelerate's gradient scaler: CUDA only). Generation and every policy and reference forward run under
    autocast; the log-probs, values, KL, advantages and losses are computed in fp32 from their outputs, and the
    weights and optimizer state stay fp32. ``accelerator_kwargs={"mixed_precision": ...}`` (TRL's way) means the
    same. None: accelerate's own setting (``accelerate launch --mixed_precision``), else "no". See
    docs/mixed_precision.md for the measured speed and learning."""

    def __post_init__(self) -> None:
        # Old spellings first, so the checks below see the real values.
        if self.forward_batch_size is not None:
            warn_once("PPOConfig.forward_batch_size", "PPOConfig: 'forward_batch_size' is deprecated, use 'mini_batch_size' (mapped for you).")
            self.mini_batch_size = self.forward_batch_size
        if self.optimize_cuda_cache is not None:
            warn_once("PPOConfig.optimize_cuda_cache", "PPOConfig: 'optimize_cuda_cache' is deprecated, use 'optimize_device_cache' (mapped for you).")
            self.optimize_device_cache = self.optimize_cuda_cache

        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PPOConfig.{name} must be a positive integer, got {value!r}.")
        if self.kl_penalty not in KL_ESTIMATORS:
            raise ValueError(f"PPOConfig.kl_penalty must be one of {KL_ESTIMATORS}, got {self.kl_penalty!r}.")
        if self.log_with is not None:
            if self.log_with not in TRACKERS:
                raise ValueError(f"PPOConfig.log_with must be one of {TRACKERS} or None, got {self.log_with!r}.")
            available = is_wandb_available() if self.log_with == "wandb" else is_tensorboard_available()
            if not available:
                raise ImportError(
                    f"PPOConfig.log_with={self.log_with!r} but {self.log_with} is not installed: "
                    f'pip install "rlft[{self.log_with}]", or set log_with=None.'
                )
        if self.adap_kl_ctrl and (self.target is None or self.target <= 0 or self.horizon is None or self.horizon <= 0):
            raise ValueError("PPOConfig: adap_kl_ctrl=True needs a positive target and horizon (or set adap_kl_ctrl=False).")
        if self.init_kl_coef is None or self.init_kl_coef < 0:
            raise ValueError(f"PPOConfig.init_kl_coef must be >= 0, got {self.init_kl_coef!r}.")
        for name in ("cliprange", "cliprange_value", "ratio_threshold", "target_kl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig.{name} must be positive, got {getattr(self, name)!r}.")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"PPOConfig.gamma and lam must lie in [0, 1], got gamma={self.gamma}, lam={self.lam}.")
        if self.score_clip is not None and self.score_clip <= 0:
            raise ValueError(f"PPOConfig.score_clip must be positive or None, got {self.score_clip!r}.")
        if self.use_score_norm and not self.use_score_scaling:
            raise ValueError("PPOConfig.use_score_norm only applies with use_score_scaling=True; set both or neither.")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"PPOConfig.max_grad_norm must be positive or None, got {self.max_grad_norm!r}.")

        n = self.max_consecutive_nonfinite_steps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"PPOConfig.max_consecutive_nonfinite_steps must be a positive integer, got {n!r}.")
        if self.save_total_limit is not None and (not isinstance(self.save_total_limit, int) or self.save_total_limit < 1):
            raise ValueError(f"PPOConfig.save_total_limit must be a positive integer or None, got {self.save_total_limit!r}.")

        for name in ("tracker_kwargs", "accelerator_kwargs", "project_kwargs", "push_to_hub_if_best_kwargs"):
            setattr(self, name, _as_dict(getattr(self, name), name))
        self._check_estimator()
        self._check_mixed_precision()

        self.backward_batch_size = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % self.backward_batch_size != 0:
            raise ValueError(
                f"PPOConfig: batch_size ({self.batch_size}) must be a multiple of mini_batch_size x "
                f"gradient_accumulation_steps ({self.mini_batch_size} x {self.gradient_accumulation_steps} = "
                f"{self.backward_batch_size}). Change batch_size or mini_batch_size."
            )
        self._set_world_size(int(os.environ.get("WORLD_SIZE", "1")))

    def _check_estimator(self) -> None:
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"PPOConfig.advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}.")
        k = self.num_generations
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"PPOConfig.num_generations must be a positive integer, got {k!r}.")
        if self.advantage_estimator in GROUP_ESTIMATORS and k < 2:
            raise ValueError(
                f"PPOConfig.advantage_estimator={self.advantage_estimator!r} compares the responses to one query, so it "
                f"needs num_generations >= 2 (got {k}). Set num_generations (e.g. 4) and pass each query's responses "
                "consecutively, or use advantage_estimator='reinforce_pp', which needs no groups."
            )
        if self.batch_size % k != 0:
            raise ValueError(
                f"PPOConfig.batch_size ({self.batch_size}) must be a multiple of num_generations ({k}): step() takes "
                f"batch_size / num_generations queries with {k} responses each. Change batch_size or num_generations."
            )
        if self.kl_loss_coef is not None and self.kl_loss_coef < 0:
            raise ValueError(f"PPOConfig.kl_loss_coef must be >= 0 or None, got {self.kl_loss_coef!r}.")
        if self.loss_aggregation is not None and self.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"PPOConfig.loss_aggregation must be one of {LOSS_AGGREGATIONS} or None, got {self.loss_aggregation!r}.")
        if self.loss_max_tokens is not None and (not isinstance(self.loss_max_tokens, int) or self.loss_max_tokens < 1):
            raise ValueError(f"PPOConfig.loss_max_tokens must be a positive integer or None, got {self.loss_max_tokens!r}.")
        if self.rollout_logprobs is not None and self.rollout_logprobs not in ROLLOUT_LOGPROBS:
            raise ValueError(f"PPOConfig.rollout_logprobs must be one of {ROLLOUT_LOGPROBS} or None, got {self.rollout_logprobs!r}.")
        if self.cliprange_high is not None and self.cliprange_high <= 0:
            raise ValueError(f"PPOConfig.cliprange_high must be positive or None, got {self.cliprange_high!r}.")

    def _check_mixed_precision(self) -> None:
        given = {"mixed_precision": self.mixed_precision}
        if "mixed_precision" in self.accelerator_kwargs:
            given['accelerator_kwargs["mixed_precision"]'] = self.accelerator_kwargs["mixed_precision"]
        for name, value in given.items():
            if value is not None and value not in MIXED_PRECISIONS:
                raise ValueError(
                    f"PPOConfig.{name} must be one of {MIXED_PRECISIONS} or None, got {value!r}: \"bf16\" for bfloat16 "
                    "autocast (CPU or GPU), \"fp16\" for float16 autocast with a gradient scaler (CUDA only), \"no\" for fp32."
                )
        if None not in given.values() and len(set(given.values())) == 2:
            raise ValueError(
                f"PPOConfig.mixed_precision={self.mixed_precision!r} and accelerator_kwargs[\"mixed_precision\"]="
                f"{self.accelerator_kwargs['mixed_precision']!r} disagree: set only one of them."
            )

    def requested_mixed_precision(self) -> str | None:
        """``mixed_precision``, else ``accelerator_kwargs["mixed_precision"]``, else None (accelerate's own setting)."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        return self.accelerator_kwargs.get("mixed_precision")

    def accelerator_settings(self) -> dict[str, Any]:
        """The keyword arguments of `accelerate.Accelerator`: ``accelerator_kwargs``, with ``mixed_precision`` passed
        on only where accelerate must own it: "fp16" (its gradient scaler) and sharded runs (an ``fsdp_plugin`` or
        ``deepspeed_plugin``: FSDP's and DeepSpeed's own mixed precision, as before this option existed). Otherwise
        "bf16" and "no" are the trainer's own autocast: accelerate keeps its precision in process-wide state, which
        a second trainer with another precision in the same process could not change."""
        settings = {k: v for k, v in self.accelerator_kwargs.items() if k != "mixed_precision"}
        requested = self.requested_mixed_precision()
        sharded = any(self.accelerator_kwargs.get(k) is not None for k in ("fsdp_plugin", "deepspeed_plugin"))
        if requested == "fp16" or (sharded and requested is not None):
            settings["mixed_precision"] = requested
        return settings

    @property
    def total_ppo_epochs(self) -> int:
        """Loop count of TRL 0.7 scripts (``for epoch in range(config.total_ppo_epochs)``): ceil(steps / batch_size)."""
        return int(math.ceil(self.steps / self.batch_size))

    @property
    def uses_critic(self) -> bool:
        """True for "gae": the value head is trained and its values give the advantages."""
        return self.advantage_estimator == "gae"

    def resolved_estimator_settings(self) -> tuple[bool, float, str]:
        """(KL penalty in the reward, kl_loss_coef, loss_aggregation), None fields filled from the estimator's paper."""
        in_reward, kl_loss, aggregation = ESTIMATOR_DEFAULTS[self.advantage_estimator]
        return (
            in_reward if self.kl_in_reward is None else bool(self.kl_in_reward),
            kl_loss if self.kl_loss_coef is None else float(self.kl_loss_coef),
            aggregation if self.loss_aggregation is None else self.loss_aggregation,
        )

    def resolved_rollout_logprobs(self) -> str:
        """``rollout_logprobs``, None resolved: "recompute" for gae (TRL 0.7's numbers), "generation" otherwise."""
        if self.rollout_logprobs is not None:
            return self.rollout_logprobs
        return "recompute" if self.uses_critic else "generation"

    def _set_world_size(self, world_size: int) -> None:
        """The one place where the world-size-derived fields are computed."""
        self.world_size = world_size
        self.global_backward_batch_size = self.backward_batch_size * world_size
        self.global_batch_size = self.batch_size * world_size

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        out = {}
        for key, value in asdict(self).items():
            try:
                json.dumps(value)
                out[key] = value
            except TypeError:
                out[key] = repr(value)
        return out


def _as_dict(value, name: str) -> dict:
    """A dict field given as a dict, None (empty) or a JSON object string (as on a command line)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"PPOConfig.{name} must be a dict or a JSON object string, got {value!r} ({err}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"PPOConfig.{name} must be a dict (or a JSON object), got {type(value).__name__}.")
    return value

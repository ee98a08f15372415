"""`DDPOConfig`: the hyperparameters of `DDPOTrainer` (TRL 0.7.10 names and defaults).

A pure dataclass: importing it needs neither diffusers nor a GPU.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from ..import_utils import is_bitsandbytes_available, is_npu_available, is_xpu_available, require

MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")
#: Trackers accelerate knows by name ("all" picks every installed one).
LOG_WITH = ("all", "wandb", "tensorboard", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")
#: ProjectConfiguration options the trainer replaces: it names, writes (atomically) and prunes checkpoints itself.
_TRAINER_CHECKPOINT_KEYS = ("automatic_checkpoint_naming", "total_limit", "iteration")


def _has_gpu() -> bool:
    return torch.cuda.is_available() or is_xpu_available() or is_npu_available()


def check_mixed_precision_device(mixed_precision: str) -> None:
    """Raise when ``mixed_precision`` needs a GPU this machine lacks (fp16 / fp8 on a CPU).

    Called by `DDPOTrainer`, not by the config: the config's documented default is "fp16", and a
    CPU user must be able to build it and override the field (e.g. on a tyro command line) first.
    """
    if mixed_precision in ("fp16", "fp8") and not _has_gpu():
        raise ValueError(
            f"DDPOConfig.mixed_precision={mixed_precision!r} needs a GPU and none is available. "
            "Set mixed_precision='no' (or 'bf16') to train on the CPU."
        )


@dataclass
class DDPOConfig:
    """Configuration of `DDPOTrainer` (denoising diffusion policy optimisation, Black et al. 2023)."""

    # --- run and logging
    exp_name: str = os.path.basename(sys.argv[0])[: -len(".py")]
    """Name of this experiment (defaults to the running script's name without ``.py``)."""
    run_name: Optional[str] = ""
    """Run name for the trackers, e.g. for wandb; appended to the checkpoint folder's name when given."""
    seed: int = 0
    """Seed of every random generator (sampling noise, prompts, shuffling)."""
    log_with: Optional[Literal["wandb", "tensorboard"]] = None
    """Tracker accelerate logs to: "wandb", "tensorboard", ... (a name accelerate knows), an
    ``accelerate.tracking.GeneralTracker`` instance (a custom tracker), a list of these, or None for none."""
    tracker_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the tracker (``init_kwargs`` of ``accelerator.init_trackers``)."""
    accelerator_kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for ``accelerate.Accelerator``."""
    project_kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for ``accelerate.utils.ProjectConfiguration``. ``project_dir`` (default:
    ``logdir``) holds the ``checkpoints`` folder; ``total_limit`` overrides ``num_checkpoint_limit``;
    ``automatic_checkpoint_naming`` is ignored: the trainer names and writes checkpoints itself (atomically)."""
    tracker_project_name: str = "trl"
    """Project name of the tracker."""
    logdir: str = "logs"
    """Top folder for logs and checkpoints (checkpoints go to ``logdir/checkpoints``)."""

    # --- schedule and checkpoints
    num_epochs: int = 100
    """Epochs to train; each samples ``sample_batch_size * sample_num_batches_per_epoch`` images per process."""
    save_freq: int = 1
    """Save a checkpoint every this many epochs."""
    num_checkpoint_limit: int = 5
    """Keep at most this many checkpoints; older ones are deleted."""
    mixed_precision: Optional[str] = "fp16"
    """accelerate mixed precision: "no" (None means the same, as in TRL 0.7), "fp16", "bf16" or "fp8".
    fp16 and fp8 need a GPU: `DDPOTrainer` checks that when it starts, so a command line can still
    override this default on a CPU."""
    allow_tf32: bool = True
    """Allow TF32 matmuls on Ampere GPUs (faster, slightly less precise)."""
    resume_from: Optional[str] = ""
    """A checkpoint folder (``.../checkpoint_N``) or a folder of them (the newest complete one is used) to
    resume from. Restores the trained weights (UNet or LoRA), the optimizer, the epoch and global step, the
    per-prompt statistics and the random states of ``random``, ``numpy`` and ``torch``, so a ``prompt_function``
    drawing from those continues with the prompts an uninterrupted run would have drawn."""

    # --- sampling
    sample_num_steps: int = 50
    """Denoising (DDIM) steps per image."""
    sample_eta: float = 1.0
    """DDIM eta: the noise of each step. Must be > 0, or the steps have no log-probability."""
    sample_guidance_scale: float = 5.0
    """Classifier-free guidance scale while sampling (and in training when ``train_cfg``)."""
    sample_batch_size: int = 1
    """Images per sampling batch, per process."""
    sample_num_batches_per_epoch: int = 2
    """Sampling batches per epoch, per process."""

    # --- training
    train_batch_size: int = 1
    """Samples per training micro-batch, per process."""
    train_use_8bit_adam: bool = False
    """Use bitsandbytes' 8-bit AdamW (needs bitsandbytes)."""
    train_learning_rate: float = 3e-4
    """Learning rate of AdamW."""
    train_adam_beta1: float = 0.9
    """AdamW beta1."""
    train_adam_beta2: float = 0.999
    """AdamW beta2."""
    train_adam_weight_decay: float = 1e-4
    """AdamW weight decay."""
    train_adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    train_gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients are summed before an optimizer step (each counts all its trained timesteps)."""
    train_max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    train_num_inner_epochs: int = 1
    """Passes over each epoch's samples."""
    train_cfg: bool = True
    """Use classifier-free guidance in the training forward pass too (as during sampling)."""
    train_adv_clip_max: float = 5
    """Advantages are clamped to [-train_adv_clip_max, train_adv_clip_max]."""
    train_clip_range: float = 1e-4
    """PPO clip range epsilon of the probability ratio."""
    train_timestep_fraction: float = 1.0
    """Fraction of the denoising steps trained on per sample (a random subset, drawn per sample)."""

    # --- advantages and rewards
    per_prompt_stat_tracking: bool = False
    """Normalise rewards per prompt (with a buffer of recent rewards) instead of over the whole batch."""
    per_prompt_stat_tracking_buffer_size: int = 16
    """Rewards remembered per prompt."""
    per_prompt_stat_tracking_min_count: int = 16
    """Rewards a prompt needs before its own statistics are used (before: the batch's)."""
    async_reward_computation: bool = False
    """Compute rewards in a thread pool while sampling continues."""
    max_workers: int = 2
    """Threads of that pool."""
    negative_prompts: Optional[str] = ""
    """Prompt whose embedding is the unconditional branch of classifier-free guidance ("" by default)."""

    def __post_init__(self):
        def positive(name: str, integer: bool = True):
            value = getattr(self, name)
            if (integer and (not isinstance(value, int) or isinstance(value, bool))) or value <= 0:
                kind = "a positive integer" if integer else "> 0"
                raise ValueError(f"DDPOConfig.{name} must be {kind}; got {value!r}.")

        for name in (
            "num_epochs", "save_freq", "num_checkpoint_limit", "sample_num_steps", "sample_batch_size",
            "sample_num_batches_per_epoch", "train_batch_size", "train_gradient_accumulation_steps",
            "train_num_inner_epochs", "per_prompt_stat_tracking_buffer_size", "per_prompt_stat_tracking_min_count",
            "max_workers",
        ):
            positive(name)
        for name in ("sample_eta", "train_learning_rate", "train_clip_range", "train_adv_clip_max", "train_max_grad_norm"):
            positive(name, integer=False)
        if not 0 < self.train_timestep_fraction <= 1:
            raise ValueError(
                f"DDPOConfig.train_timestep_fraction must be in (0, 1]; got {self.train_timestep_fraction}."
            )
        if int(self.sample_num_steps * self.train_timestep_fraction) < 1:
            raise ValueError(
                f"DDPOConfig.train_timestep_fraction={self.train_timestep_fraction} of sample_num_steps="
                f"{self.sample_num_steps} trains on no timestep; raise either so their product is at least 1."
            )
        for name in ("train_adam_beta1", "train_adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"DDPOConfig.{name} must be in [0, 1); got {getattr(self, name)}.")

        # Batch sizes: an epoch's samples must split into whole optimizer steps. The
        # number of processes multiplies both sides, so the per-process check suffices.
        if self.sample_batch_size < self.train_batch_size or self.sample_batch_size % self.train_batch_size:
            raise ValueError(
                f"DDPOConfig.sample_batch_size ({self.sample_batch_size}) must be a multiple of train_batch_size "
                f"({self.train_batch_size}); set train_batch_size to a divisor of sample_batch_size."
            )
        samples = self.sample_batch_size * self.sample_num_batches_per_epoch
        per_step = self.train_batch_size * self.train_gradient_accumulation_steps
        if samples % per_step:
            raise ValueError(
                f"DDPOConfig: an epoch samples sample_batch_size * sample_num_batches_per_epoch = {samples} images per "
                f"process, which is not a multiple of train_batch_size * train_gradient_accumulation_steps = {per_step}. "
                "Change sample_num_batches_per_epoch or train_gradient_accumulation_steps so it divides."
            )

        if self.mixed_precision is None:
            self.mixed_precision = "no"  # TRL 0.7 passed None on to accelerate, which reads it as "no"
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"DDPOConfig.mixed_precision must be one of {', '.join(MIXED_PRECISIONS)} (or None); got {self.mixed_precision!r}."
            )
        for tracker in self._trackers():
            if isinstance(tracker, str):
                if tracker not in LOG_WITH:
                    raise ValueError(
                        f"DDPOConfig.log_with must be None, one of {', '.join(LOG_WITH)}, an accelerate GeneralTracker "
                        f"or a list of these; got {tracker!r}."
                    )
                if tracker in ("wandb", "tensorboard"):
                    require(tracker, f"DDPOConfig(log_with={tracker!r})")
            elif not _is_general_tracker(tracker):
                raise ValueError(
                    f"DDPOConfig.log_with: {type(tracker).__name__} is neither a tracker name nor an "
                    "accelerate.tracking.GeneralTracker instance."
                )
        limit = self.project_kwargs.get("total_limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
            raise ValueError(f"DDPOConfig.project_kwargs['total_limit'] must be a positive integer; got {limit!r}.")
        if self.train_use_8bit_adam and not is_bitsandbytes_available():
            raise ImportError(
                "DDPOConfig.train_use_8bit_adam=True needs bitsandbytes: pip install bitsandbytes, "
                "or set train_use_8bit_adam=False."
            )

    @property
    def num_train_timesteps(self) -> int:
        """Denoising steps trained on per sample: int(sample_num_steps * train_timestep_fraction)."""
        return int(self.sample_num_steps * self.train_timestep_fraction)

    def _trackers(self) -> list:
        if self.log_with is None:
            return []
        return list(self.log_with) if isinstance(self.log_with, (list, tuple)) else [self.log_with]

    @property
    def project_dir(self) -> str:
        """Folder of the run's checkpoints (``project_kwargs["project_dir"]``, default ``logdir``)."""
        return self.project_kwargs.get("project_dir") or self.logdir

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints are written: ``project_dir/checkpoints/checkpoint_<epoch>``."""
        return os.path.join(self.project_dir, "checkpoints")

    @property
    def checkpoint_limit(self) -> int:
        """Checkpoints kept: ``project_kwargs["total_limit"]`` when given (accelerate's name), else ``num_checkpoint_limit``."""
        return self.project_kwargs.get("total_limit") or self.num_checkpoint_limit

    def accelerate_project_kwargs(self) -> dict:
        """Arguments for ``accelerate.utils.ProjectConfiguration``: ``project_kwargs`` without the checkpoint
        naming and pruning options, which the trainer handles itself."""
        kwargs = {k: v for k, v in self.project_kwargs.items() if k not in _TRAINER_CHECKPOINT_KEYS}
        kwargs["project_dir"] = self.project_dir
        return kwargs

    def to_dict(self) -> dict:
        """The fields as plain values (tracker instances in ``log_with`` by their name), for the trackers' run config."""
        from dataclasses import fields

        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "log_with"}
        names = [t if isinstance(t, str) else getattr(t, "name", type(t).__name__) for t in self._trackers()]
        out["log_with"] = None if self.log_with is None else names if isinstance(self.log_with, (list, tuple)) else names[0]
        return out


def _is_general_tracker(obj) -> bool:
    from accelerate.tracking import GeneralTracker

    return isinstance(obj, GeneralTracker)

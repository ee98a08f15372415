"""`DDPOTrainer`: reinforcement learning of a diffusion model from a reward on its images.

Denoising diffusion policy optimisation (Black et al. 2023, "Training Diffusion
Models with Reinforcement Learning"): sample images with a stochastic DDIM
sampler, recording each step's latent and log-probability; score the images;
then take clipped policy-gradient steps (PPO, Schulman et al. 2017) on the
denoising steps, each step being one action. The math is in `rlft.functional.ddpo`.

Needs the optional diffusers extra (``pip install "rlft[diffusers]"``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..import_utils import require

require("diffusers", "DDPO (rlft.DDPOTrainer)")

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed  # noqa: E402

from ..functional.ddpo import ddpo_clipped_loss, normalize_advantages  # noqa: E402
from ..models.modeling_sd_base import DDPOStableDiffusionPipeline  # noqa: E402
from ..utils.running import PerPromptStatTracker  # noqa: E402
from .ddpo_config import DDPOConfig, check_mixed_precision_device  # noqa: E402

CHECKPOINT_PREFIX = "checkpoint_"
TRAINER_STATE_FILE = "ddpo_trainer_state.json"


@dataclass
class DDPOSamples:
    """One epoch's rollouts. B samples, S sampling steps, (C, h, w) latent shape, L prompt tokens, D embedding width."""

    prompt_ids: Tensor  # (B, L)
    prompt_embeds: Tensor  # (B, L, D)
    negative_prompt_embeds: Tensor  # (B, L, D)
    timesteps: Tensor  # (B, S)
    latents: Tensor  # (B, S, C, h, w): x_t before each step
    next_latents: Tensor  # (B, S, C, h, w): x_{t-1} after each step
    log_probs: Tensor  # (B, S): log-probability of next_latents at sampling time
    advantages: Optional[Tensor] = None  # (B,)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def index(self, idx) -> "DDPOSamples":
        """Select samples (rows) with ``idx``."""
        return DDPOSamples(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(parts: list["DDPOSamples"]) -> "DDPOSamples":
        return DDPOSamples(**{
            f.name: None if getattr(parts[0], f.name) is None else torch.cat([getattr(p, f.name) for p in parts])
            for f in fields(DDPOSamples)
        })


class DDPOTrainer:
    """Fine-tune a Stable Diffusion model with DDPO.

    Args:
        config: the `DDPOConfig`.
        reward_function: ``reward_function(images, prompts, prompt_metadata) -> (rewards, reward_metadata)``;
            images: (B, 3, H, W) in [0, 1]; rewards: B numbers (tensor, array or list).
        prompt_function: ``prompt_function() -> (prompt, prompt_metadata)``, called once per image. Draw
            from the global ``random`` / ``numpy`` / ``torch`` generators to make prompts resumable:
            checkpoints save and restore those states (a private ``random.Random`` is not saved).
        sd_pipeline: the `DDPOStableDiffusionPipeline` to train.
        image_samples_hook: optional ``hook(prompt_image_pairs, global_step, tracker)`` called each epoch with a
            list of ``[images, prompts, prompt_metadata, rewards, reward_metadata]`` per sampling batch, and the
            first accelerate tracker (None when there is none).
    """

    _tag_names = ["rlft", "ddpo"]

    def __init__(
        self,
        config: DDPOConfig,
        reward_function: Callable,
        prompt_function: Callable,
        sd_pipeline: DDPOStableDiffusionPipeline,
        image_samples_hook: Optional[Callable] = None,
    ):
        # check arguments
        if not isinstance(config, DDPOConfig):
            raise TypeError(f"config must be a DDPOConfig; got {type(config).__name__}.")
        check_mixed_precision_device(config.mixed_precision)
        if not isinstance(sd_pipeline, DDPOStableDiffusionPipeline):
            raise TypeError(
                "sd_pipeline must be a DDPOStableDiffusionPipeline, e.g. DefaultDDPOStableDiffusionPipeline(name_or_pipe); "
                f"got {type(sd_pipeline).__name__}."
            )
        for name, fn in (("reward_function", reward_function), ("prompt_function", prompt_function)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable.")
        if image_samples_hook is not None and not callable(image_samples_hook):
            raise TypeError("image_samples_hook must be callable or None.")
        if float(getattr(sd_pipeline.scheduler, "final_alpha_cumprod", 0.0)) >= 1.0:
            raise ValueError(
                "The scheduler has set_alpha_to_one=True, so the last DDIM step is deterministic and has no "
                "log-probability. Use DDIMScheduler(..., set_alpha_to_one=False), as Stable Diffusion does."
            )
        self.config = config
        self.reward_fn = reward_function
        self.prompt_fn = prompt_function
        self.sd_pipeline = sd_pipeline
        self.image_samples_callback = image_samples_hook
        self.num_train_timesteps = config.num_train_timesteps
        self.first_epoch = 0
        self.global_step = 0

        # accelerator and trackers
        self.checkpoint_dir = config.checkpoint_dir
        resume_dir = self._resolve_resume_dir(config.resume_from) if config.resume_from else None
        self.accelerator = Accelerator(
            log_with=config.log_with,
            mixed_precision=config.mixed_precision,
            project_config=ProjectConfiguration(**config.accelerate_project_kwargs()),
            # every trained timestep of every micro-batch is one accumulation micro-step. DDPO iterates no
            # dataloader, so syncing follows the step count only: a dataloader that another trainer in this
            # process left unfinished (accelerate's process-wide GradientState) must not force a sync each step
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.train_gradient_accumulation_steps * self.num_train_timesteps, sync_with_dataloader=False,
            ),
            **config.accelerator_kwargs,
        )
        if self.accelerator.is_main_process and config.log_with is not None:
            self.accelerator.init_trackers(
                config.tracker_project_name, config=config.to_dict(), init_kwargs=config.tracker_kwargs
            )
        set_seed(config.seed, device_specific=True)
        self._check_world_size()

        # models: frozen VAE and text encoder in the inference dtype, trainable UNet (or its LoRA)
        device = self.accelerator.device
        inference_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)
        sd_pipeline.set_progress_bar_config(position=1, disable=not self.accelerator.is_local_main_process, leave=False)
        sd_pipeline.vae.to(device, dtype=inference_dtype)
        sd_pipeline.text_encoder.to(device, dtype=inference_dtype)
        if getattr(sd_pipeline, "use_lora", False):
            sd_pipeline.unet.to(device, dtype=inference_dtype)
        else:
            sd_pipeline.unet.to(device)
        trainable_layers = sd_pipeline.get_trainable_layers()
        self.accelerator.register_save_state_pre_hook(self._save_model_hook)
        self.accelerator.register_load_state_pre_hook(self._load_model_hook)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True

        # unconditional embedding for classifier-free guidance: (1, L, D)
        self.neg_prompt_embed = self._embed([config.negative_prompts or ""])
        self.autocast = self.accelerator.autocast if getattr(sd_pipeline, "use_lora", False) else sd_pipeline.autocast
        self.stat_tracker = (
            PerPromptStatTracker(config.per_prompt_stat_tracking_buffer_size, config.per_prompt_stat_tracking_min_count)
            if config.per_prompt_stat_tracking
            else None
        )
        self.executor = futures.ThreadPoolExecutor(max_workers=config.max_workers) if config.async_reward_computation else None

        # optimizer
        self.optimizer = self._setup_optimizer(
            [p for p in trainable_layers.parameters() if p.requires_grad]
            if isinstance(trainable_layers, torch.nn.Module)
            else [p for p in trainable_layers if p.requires_grad]
        )
        if not self.optimizer.param_groups[0]["params"]:
            raise ValueError("sd_pipeline.get_trainable_layers() returned no parameter that requires grad.")
        self.trainable_layers, self.optimizer = self.accelerator.prepare(trainable_layers, self.optimizer)

        # resume: weights, optimizer, RNG states, then our own counters
        if resume_dir is not None:
            self.accelerator.load_state(resume_dir)
            with open(os.path.join(resume_dir, TRAINER_STATE_FILE), encoding="utf-8") as f:
                state = json.load(f)
            self.first_epoch, self.global_step = state["epoch"] + 1, state["global_step"]
            if self.stat_tracker is not None and state.get("stat_tracker"):
                self.stat_tracker.load_state_dict(state["stat_tracker"])

    # ================================================================== training loop

    def step(self, epoch: int, global_step: int) -> int:
        """One epoch: sample, score, compute advantages, train. Returns the updated global step.

        Side effects: updates the weights, logs to the trackers, calls ``image_samples_hook``, and
        saves a checkpoint every ``save_freq`` epochs.
        """
        cfg = self.config
        # 1. sample images, recording every latent and log-probability
        self.sd_pipeline.unet.eval()
        samples, prompt_image_data = self._generate_samples(cfg.sample_num_batches_per_epoch, cfg.sample_batch_size)

        # 2. rewards (gathered across processes) and the image hook
        rewards, reward_metadata = self.compute_rewards(prompt_image_data, is_async=cfg.async_reward_computation)
        for i, data in enumerate(prompt_image_data):
            data.extend([rewards[i], reward_metadata[i]])
        if self.image_samples_callback is not None:
            tracker = self.accelerator.trackers[0] if self.accelerator.trackers else None
            self.image_samples_callback(prompt_image_data, global_step, tracker)
        local_rewards = torch.as_tensor(np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in rewards]))
        all_rewards = self.accelerator.gather(local_rewards.to(self.accelerator.device)).cpu()
        self.accelerator.log(
            # TRL logged the reward array as "reward" (a wandb histogram); a scalar works with every tracker
            {"reward": all_rewards.mean().item(), "reward_mean": all_rewards.mean().item(),
             "reward_std": all_rewards.std(unbiased=False).item(), "epoch": epoch},
            step=global_step,
        )
        self.last_rewards = all_rewards

        # 3. advantages: per prompt or over the whole batch, then this process's share
        samples.advantages = self._advantages(samples, all_rewards)

        # 4. inner epochs of clipped policy-gradient updates
        self.sd_pipeline.unet.train()
        for inner_epoch in range(cfg.train_num_inner_epochs):
            batches = self._shuffled_batches(samples)
            global_step = self._train_batched_samples(inner_epoch, epoch, global_step, batches)
        if not self.accelerator.sync_gradients:
            raise ValueError(
                "An epoch ended in the middle of gradient accumulation; check that the epoch's samples divide "
                "into train_batch_size * train_gradient_accumulation_steps."
            )

        # 5. checkpoint
        if (epoch + 1) % cfg.save_freq == 0:
            self._save_checkpoint(epoch, global_step)
        return global_step

    def train(self, epochs: Optional[int] = None):
        """Train for ``epochs`` epochs (default ``config.num_epochs``), continuing after a resumed checkpoint."""
        global_step = self.global_step
        epochs = self.config.num_epochs if epochs is None else epochs
        for epoch in range(self.first_epoch, epochs):
            global_step = self.step(epoch, global_step)
        self.global_step = global_step
        self.first_epoch = max(self.first_epoch, epochs)

    def calculate_loss(self, latents, timesteps, next_latents, log_probs, advantages, embeds):
        """Clipped DDPO loss of one denoising step for a micro-batch.

        Args:
            latents: (B, C, h, w) x_t; timesteps: (B,); next_latents: (B, C, h, w) the sampled x_{t-1};
            log_probs: (B,) their log-probability at sampling time; advantages: (B,);
            embeds: (2B, L, D) negative then positive prompt embeddings with ``train_cfg``, else (B, L, D).

        Returns:
            loss, approx_kl, clipfrac (scalars).
        """
        cfg = self.config
        with self.autocast():
            if cfg.train_cfg:
                noise_pred = self.sd_pipeline.unet(
                    torch.cat([latents] * 2), torch.cat([timesteps] * 2), embeds, return_dict=False
                )[0]
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + cfg.sample_guidance_scale * (text - uncond)  # Ho & Salimans 2022, eq. 6
            else:
                noise_pred = self.sd_pipeline.unet(latents, timesteps, embeds, return_dict=False)[0]
            # log-probability of the sampled x_{t-1} under the current weights
            log_prob = self.sd_pipeline.scheduler_step(
                noise_pred, timesteps, latents, eta=cfg.sample_eta, prev_sample=next_latents
            ).log_probs
        loss, stats = ddpo_clipped_loss(
            log_prob, log_probs, advantages, clip_range=cfg.train_clip_range, adv_clip_max=cfg.train_adv_clip_max
        )
        return loss, stats["approx_kl"], stats["clipfrac"]

    def loss(self, advantages: Tensor, clip_range: float, ratio: Tensor) -> Tensor:
        """PPO's clipped surrogate given the ratio (TRL's helper): mean of max(-A r, -A clip(r))."""
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        return torch.mean(torch.maximum(unclipped, clipped))

    # ================================================================== phases

    def _generate_samples(self, iterations: int, batch_size: int) -> tuple[DDPOSamples, list]:
        """Sample ``iterations`` batches. Returns the rollouts and ``[images, prompts, metadata]`` per batch."""
        cfg = self.config
        parts, prompt_image_pairs = [], []
        negative = self.neg_prompt_embed.repeat(batch_size, 1, 1)  # (B, L, D)
        for _ in range(iterations):
            prompts, prompt_metadata = zip(*[self.prompt_fn() for _ in range(batch_size)])
            prompt_ids = self._tokenize(list(prompts))  # (B, L)
            with torch.no_grad():
                prompt_embeds = self.sd_pipeline.text_encoder(prompt_ids)[0]  # (B, L, D)
            with self.autocast():
                out = self.sd_pipeline(
                    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, num_inference_steps=cfg.sample_num_steps,
                    guidance_scale=cfg.sample_guidance_scale, eta=cfg.sample_eta, output_type="pt",
                )
            latents = torch.stack(out.latents, dim=1)  # (B, S + 1, C, h, w)
            timesteps = self.sd_pipeline.scheduler.timesteps.repeat(batch_size, 1)  # (B, S)
            parts.append(DDPOSamples(
                prompt_ids=prompt_ids, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative,
                timesteps=timesteps, latents=latents[:, :-1], next_latents=latents[:, 1:],
                log_probs=torch.stack(out.log_probs, dim=1),  # (B, S)
            ))
            prompt_image_pairs.append([out.images, list(prompts), list(prompt_metadata)])
        return DDPOSamples.cat(parts), prompt_image_pairs

    def compute_rewards(self, prompt_image_pairs: list, is_async: bool = False) -> tuple[list, list]:
        """Call the reward function on each sampling batch (in the thread pool when ``is_async``)."""
        if is_async:
            pending = [self.executor.submit(self.reward_fn, images, prompts, meta) for images, prompts, meta in prompt_image_pairs]
            results = [job.result() for job in pending]
        else:
            results = [self.reward_fn(images, prompts, meta) for images, prompts, meta in prompt_image_pairs]
        rewards, metadata = [], []
        for (images, _, _), result in zip(prompt_image_pairs, results):
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(
                    "reward_function must return a pair (rewards, reward_metadata); return (rewards, {}) if there is no metadata."
                )
            reward = result[0].detach().float().cpu().numpy() if isinstance(result[0], Tensor) else np.asarray(result[0], dtype=np.float64)
            if reward.reshape(-1).shape[0] != len(images):
                raise ValueError(f"reward_function returned {reward.size} rewards for {len(images)} images; return one per image.")
            rewards.append(reward.reshape(-1))
            metadata.append(result[1])
        return rewards, metadata

    def _advantages(self, samples: DDPOSamples, all_rewards: Tensor) -> Tensor:
        """(B,) advantages of this process's samples from the gathered rewards (B * world,)."""
        if self.stat_tracker is not None:
            prompt_ids = self.accelerator.gather(samples.prompt_ids).cpu()
            prompts = self.sd_pipeline.tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            advantages = torch.as_tensor(self.stat_tracker.update(prompts, all_rewards.numpy()))
        else:
            advantages = normalize_advantages(all_rewards)
        n = len(samples)
        mine = advantages.reshape(self.accelerator.num_processes, n)[self.accelerator.process_index]  # (B,)
        return mine.to(self.accelerator.device, torch.float32)

    def _shuffled_batches(self, samples: DDPOSamples) -> list[DDPOSamples]:
        """Shuffle samples, then each sample's timesteps independently, and split into training micro-batches."""
        n, steps = len(samples), samples.timesteps.shape[1]
        samples = samples.index(torch.randperm(n))
        perms = torch.stack([torch.randperm(steps) for _ in range(n)])  # (B, S): a timestep order per sample
        rows = torch.arange(n)[:, None]
        shuffled = DDPOSamples(
            prompt_ids=samples.prompt_ids, prompt_embeds=samples.prompt_embeds,
            negative_prompt_embeds=samples.negative_prompt_embeds, advantages=samples.advantages,
            timesteps=samples.timesteps[rows, perms], latents=samples.latents[rows, perms],
            next_latents=samples.next_latents[rows, perms], log_probs=samples.log_probs[rows, perms],
        )
        size = self.config.train_batch_size
        return [shuffled.index(slice(i, i + size)) for i in range(0, n, size)]

    def _train_batched_samples(self, inner_epoch: int, epoch: int, global_step: int, batches: list[DDPOSamples]) -> int:
        """Gradient steps over the first ``num_train_timesteps`` (shuffled) timesteps of each micro-batch."""
        cfg = self.config
        info = defaultdict(list)
        for batch in batches:
            embeds = torch.cat([batch.negative_prompt_embeds, batch.prompt_embeds]) if cfg.train_cfg else batch.prompt_embeds
            for j in range(self.num_train_timesteps):
                with self.accelerator.accumulate(self.sd_pipeline.unet):
                    loss, approx_kl, clipfrac = self.calculate_loss(
                        batch.latents[:, j], batch.timesteps[:, j], batch.next_latents[:, j], batch.log_probs[:, j],
                        batch.advantages, embeds,
                    )
                    info["approx_kl"].append(approx_kl)
                    info["clipfrac"].append(clipfrac)
                    info["loss"].append(loss.detach())
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        params = [p for group in self.optimizer.param_groups for p in group["params"]]
                        self.accelerator.clip_grad_norm_(params, cfg.train_max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                # an optimizer step happened: log the mean over its micro-steps
                if self.accelerator.sync_gradients:
                    stats = {k: self.accelerator.reduce(torch.stack(v).mean(), reduction="mean").item() for k, v in info.items()}
                    stats.update(epoch=epoch, inner_epoch=inner_epoch)
                    self.accelerator.log(stats, step=global_step)
                    global_step += 1
                    info = defaultdict(list)
        return global_step

    # ================================================================== helpers

    def _tokenize(self, prompts: list[str]) -> Tensor:
        tokenizer = self.sd_pipeline.tokenizer
        return tokenizer(
            prompts, return_tensors="pt", padding="max_length", truncation=True, max_length=tokenizer.model_max_length
        ).input_ids.to(self.accelerator.device)

    def _embed(self, prompts: list[str]) -> Tensor:
        with torch.no_grad():
            return self.sd_pipeline.text_encoder(self._tokenize(prompts))[0]

    def _setup_optimizer(self, params):
        cfg = self.config
        if cfg.train_use_8bit_adam:
            import bitsandbytes

            optimizer_cls = bitsandbytes.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        return optimizer_cls(
            params, lr=cfg.train_learning_rate, betas=(cfg.train_adam_beta1, cfg.train_adam_beta2),
            weight_decay=cfg.train_adam_weight_decay, eps=cfg.train_adam_epsilon,
        )

    def _check_world_size(self) -> None:
        cfg, world = self.config, self.accelerator.num_processes
        samples_per_epoch = cfg.sample_batch_size * world * cfg.sample_num_batches_per_epoch
        per_step = cfg.train_batch_size * world * cfg.train_gradient_accumulation_steps
        if samples_per_epoch % per_step:  # already implied by DDPOConfig's per-process check; kept for subclasses
            raise ValueError(f"{samples_per_epoch} samples per epoch do not split into optimizer steps of {per_step}.")

    # ================================================================== checkpoints

    def _save_model_hook(self, models, weights, output_dir):
        self.sd_pipeline.save_checkpoint(models, weights, output_dir)

    def _load_model_hook(self, models, input_dir):
        self.sd_pipeline.load_checkpoint(models, input_dir)

    def _resolve_resume_dir(self, resume_from: str) -> str:
        """The checkpoint folder to resume from: ``resume_from`` itself, or the newest complete checkpoint in it."""
        path = os.path.normpath(os.path.expanduser(resume_from))
        if not os.path.isdir(path):
            raise ValueError(f"DDPOConfig.resume_from={resume_from!r} is not a folder.")
        if not os.path.basename(path).startswith(CHECKPOINT_PREFIX):
            # Only checkpoint_<N> folders holding the state file, which is written last, count;
            # "checkpoint_<N>.tmp" left by an interrupted save never matches.
            found = sorted(
                (int(name[len(CHECKPOINT_PREFIX):]), name)
                for name in os.listdir(path)
                if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit()
                and os.path.isfile(os.path.join(path, name, TRAINER_STATE_FILE))
            )
            if not found:
                raise ValueError(f"No complete {CHECKPOINT_PREFIX}N folder in {path} to resume from.")
            path = os.path.join(path, found[-1][1])
        if not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
            raise ValueError(f"{path} is not a complete DDPO checkpoint (no {TRAINER_STATE_FILE}).")
        return path

    def _save_checkpoint(self, epoch: int, global_step: int) -> None:
        """Save to ``logdir/checkpoints/checkpoint_{epoch}`` atomically (temp folder, then rename); prune old ones."""
        final = os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}{epoch}")
        tmp = final + ".tmp"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(tmp)
        if self.accelerator.is_main_process:
            state = {"epoch": epoch, "global_step": global_step}
            if self.stat_tracker is not None:
                state["stat_tracker"] = self.stat_tracker.state_dict()
            with open(os.path.join(tmp, TRAINER_STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            existing = sorted(
                int(n[len(CHECKPOINT_PREFIX):]) for n in os.listdir(self.checkpoint_dir)
                if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit()
            )
            for old in existing[: max(0, len(existing) - self.config.checkpoint_limit)]:
                shutil.rmtree(os.path.join(self.checkpoint_dir, f"{CHECKPOINT_PREFIX}{old}"), ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # ================================================================== saving

    def save_pretrained(self, save_directory: str) -> None:
        """Save the trained pipeline (or its LoRA weights) and a model card."""
        self.sd_pipeline.save_pretrained(save_directory)
        self.create_model_card(save_directory)

    def create_model_card(self, path: str, model_name: Optional[str] = "TRL DDPO Model") -> None:
        """Write a README.md model card to ``path`` describing this DDPO fine-tune."""
        os.makedirs(path, exist_ok=True)
        base = getattr(self.sd_pipeline, "pretrained_model", None) or "a Stable Diffusion pipeline"
        lora = "LoRA adapters of the UNet" if getattr(self.sd_pipeline, "use_lora", False) else "the full UNet"
        card = (
            f"---\nlicense: apache-2.0\nlibrary_name: diffusers\ntags:\n- rlft\n- ddpo\n- diffusers\n"
            f"- reinforcement-learning\n- text-to-image\n- stable-diffusion\n---\n\n# {model_name}\n\n"
            f"A text-to-image diffusion model fine-tuned from {base} with DDPO (denoising diffusion policy "
            f"optimisation, Black et al. 2023), training {lora}, using [rlft](https://pypi.org/project/rlft/).\n\n"
            f"## Training\n\n- epochs: {self.config.num_epochs}\n- sampling steps: {self.config.sample_num_steps}\n"
            f"- guidance scale: {self.config.sample_guidance_scale}\n- learning rate: {self.config.train_learning_rate}\n"
            f"- clip range: {self.config.train_clip_range}\n\n## Usage\n\n```python\nfrom diffusers import "
            f"StableDiffusionPipeline\n\npipe = StableDiffusionPipeline.from_pretrained(\"{path}\")\nimage = "
            f"pipe(\"a prompt\").images[0]\n```\n"
        )
        with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)

    def __del__(self):
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"DDPOTrainer(epochs={self.config.num_epochs}, lora={getattr(self.sd_pipeline, 'use_lora', None)})"


"""Stable Diffusion pipelines for DDPO: sampling that records every latent and its log-probability.

`DDPOStableDiffusionPipeline` is the interface `DDPOTrainer` needs; subclass it to
train another diffusion model. `DefaultDDPOStableDiffusionPipeline` implements it
over a diffusers ``StableDiffusionPipeline`` with a DDIM scheduler, training either
the whole UNet or LoRA adapters on its attention projections (peft).

Needs the optional diffusers extra (``pip install "rlft[diffusers]"``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ..import_utils import require

require("diffusers", "DDPO (rlft.models.modeling_sd_base)")

from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402

from ..functional.ddpo import ddim_step_with_logprob  # noqa: E402

#: LoRA settings of the default pipeline: rank-4 adapters on the attention
#: projections of the UNet, the usual choice for DDPO on Stable Diffusion.
LORA_RANK = 4
LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
LORA_FILE = "unet_lora.safetensors"


@dataclass
class DDPOPipelineOutput:
    """What one sampling call returns.

    images: (B, 3, H, W) images in [0, 1] (or PIL images / arrays, by output_type).
    latents: list of num_steps + 1 tensors (B, C, h, w): the initial noise, then each step's latent.
    log_probs: list of num_steps tensors (B,): the log-probability of each step's latent.
    """

    images: Any
    latents: list
    log_probs: list


@dataclass
class DDPOSchedulerOutput:
    """One scheduler step: latents (B, C, h, w), the previous (less noisy) latent; log_probs (B,) its log-probability."""

    latents: Tensor
    log_probs: Tensor


class DDPOStableDiffusionPipeline:
    """The interface `DDPOTrainer` trains through. Subclasses implement every method."""

    def __call__(self, *args, **kwargs) -> DDPOPipelineOutput:
        """Sample images, returning them with every intermediate latent and its log-probability."""
        raise NotImplementedError

    def scheduler_step(self, *args, **kwargs) -> DDPOSchedulerOutput:
        """One denoising step that also returns the log-probability of the resulting latent."""
        raise NotImplementedError

    @property
    def unet(self):
        """The denoising network being trained."""
        raise NotImplementedError

    @property
    def vae(self):
        raise NotImplementedError

    @property
    def tokenizer(self):
        raise NotImplementedError

    @property
    def scheduler(self):
        raise NotImplementedError

    @property
    def text_encoder(self):
        raise NotImplementedError

    @property
    def autocast(self):
        """A context manager factory for the forward passes (autocast with LoRA, a no-op otherwise)."""
        raise NotImplementedError

    def set_progress_bar_config(self, *args, **kwargs):
        raise NotImplementedError

    def save_pretrained(self, *args, **kwargs):
        raise NotImplementedError

    def get_trainable_layers(self, *args, **kwargs):
        """The module(s) whose parameters the optimizer updates."""
        raise NotImplementedError

    def save_checkpoint(self, *args, **kwargs):
        """accelerate save hook: ``save_checkpoint(models, weights, output_dir)``."""
        raise NotImplementedError

    def load_checkpoint(self, *args, **kwargs):
        """accelerate load hook: ``load_checkpoint(models, input_dir)``."""
        raise NotImplementedError


class DefaultDDPOStableDiffusionPipeline(DDPOStableDiffusionPipeline):
    """DDPO over a diffusers ``StableDiffusionPipeline`` with a DDIM scheduler.

    Args:
        pretrained_model_name: a model name or folder for
            ``StableDiffusionPipeline.from_pretrained``, or a pipeline instance.
        pretrained_model_revision: the revision to load (names only).
        use_lora: train LoRA adapters (rank 4 on the attention projections) instead
            of the whole UNet. The VAE and text encoder are always frozen.
    """

    def __init__(
        self,
        pretrained_model_name: Union[str, os.PathLike, StableDiffusionPipeline],
        *,
        pretrained_model_revision: str = "main",
        use_lora: bool = True,
    ):
        if isinstance(pretrained_model_name, StableDiffusionPipeline):
            self.sd_pipeline = pretrained_model_name
        elif isinstance(pretrained_model_name, (str, os.PathLike)):
            self.sd_pipeline = StableDiffusionPipeline.from_pretrained(
                str(pretrained_model_name), revision=pretrained_model_revision
            )
        else:
            raise TypeError(
                "DefaultDDPOStableDiffusionPipeline takes a model name/folder or a diffusers StableDiffusionPipeline; "
                f"got {type(pretrained_model_name).__name__}."
            )
        self.use_lora = use_lora
        self.pretrained_model = str(getattr(self.sd_pipeline, "name_or_path", "") or pretrained_model_name)
        # DDPO needs a stochastic sampler with a tractable step density: DDIM with eta > 0.
        self.sd_pipeline.scheduler = DDIMScheduler.from_config(self.sd_pipeline.scheduler.config)
        self.sd_pipeline.safety_checker = None
        self.sd_pipeline.vae.requires_grad_(False)
        self.sd_pipeline.text_encoder.requires_grad_(False)
        self.sd_pipeline.unet.requires_grad_(not self.use_lora)
        self._lora_added = False

    # ------------------------------------------------------------------ components

    @property
    def unet(self):
        return self.sd_pipeline.unet

    @property
    def vae(self):
        return self.sd_pipeline.vae

    @property
    def tokenizer(self):
        return self.sd_pipeline.tokenizer

    @property
    def scheduler(self):
        return self.sd_pipeline.scheduler

    @property
    def text_encoder(self):
        return self.sd_pipeline.text_encoder

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        return contextlib.nullcontext

    def set_progress_bar_config(self, *args, **kwargs):
        self.sd_pipeline.set_progress_bar_config(*args, **kwargs)

    # ------------------------------------------------------------------ sampling

    def scheduler_step(
        self,
        model_output: Tensor,
        timestep: Union[int, Tensor],
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        prev_sample: Optional[Tensor] = None,
    ) -> DDPOSchedulerOutput:
        """DDIM step with log-probability, using this pipeline's scheduler settings.

        model_output, sample, prev_sample: (B, C, h, w); timestep: int, () or (B,).
        """
        scheduler = self.scheduler
        if scheduler.num_inference_steps is None:
            raise ValueError("scheduler_step needs scheduler.set_timesteps(num_inference_steps) to be called first.")
        if getattr(scheduler.config, "thresholding", False):
            raise NotImplementedError("DDPO's DDIM step does not support dynamic thresholding; set thresholding=False.")
        latents, log_probs = ddim_step_with_logprob(
            model_output,
            torch.as_tensor(timestep, device=sample.device),
            sample,
            alphas_cumprod=scheduler.alphas_cumprod,
            final_alpha_cumprod=scheduler.final_alpha_cumprod,
            step_ratio=scheduler.config.num_train_timesteps // scheduler.num_inference_steps,
            eta=eta,
            prediction_type=scheduler.config.prediction_type,
            clip_sample=scheduler.config.clip_sample,
            clip_sample_range=scheduler.config.clip_sample_range,
            use_clipped_model_output=use_clipped_model_output,
            prev_sample=prev_sample,
            generator=generator,
        )
        return DDPOSchedulerOutput(latents, log_probs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, list[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Union[str, list[str], None] = None,
        num_images_per_prompt: int = 1,
        eta: float = 1.0,
        generator: Optional[torch.Generator] = None,
        latents: Optional[Tensor] = None,
        prompt_embeds: Optional[Tensor] = None,
        negative_prompt_embeds: Optional[Tensor] = None,
        output_type: str = "pil",
    ) -> DDPOPipelineOutput:
        """Sample images with classifier-free guidance, recording each latent and its log-probability.

        prompt_embeds / negative_prompt_embeds: (B, L, D) precomputed text embeddings
        (used instead of ``prompt`` / ``negative_prompt``). Guidance is applied when
        ``guidance_scale > 1``. ``output_type`` is "pt", "np", "pil" or "latent".
        """
        pipe = self.sd_pipeline
        device = pipe.unet.device
        height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        do_cfg = guidance_scale > 1.0

        # 1. text embeddings: (B, L, D), and the unconditional ones for guidance
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        )
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds  # (2B or B, L, D)

        # 2. timesteps and initial noise: (B, C, h, w)
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = pipe.prepare_latents(
            prompt_embeds.shape[0], pipe.unet.config.in_channels, height, width, prompt_embeds.dtype, device,
            generator, latents,
        )

        # 3. denoising loop, keeping every latent and its log-probability
        all_latents, all_log_probs = [latents], []
        for t in pipe.scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if do_cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)  # Ho & Salimans 2022, eq. 6
            out = self.scheduler_step(noise_pred, t, latents, eta, generator=generator)
            latents = out.latents
            all_latents.append(latents)
            all_log_probs.append(out.log_probs)

        # 4. decode
        if output_type == "latent":
            images = latents
        else:
            images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            images = pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * len(images))
        return DDPOPipelineOutput(images, all_latents, all_log_probs)

    # ------------------------------------------------------------------ training state

    def get_trainable_layers(self):
        """The UNet; with ``use_lora`` its LoRA adapters are added first and only they require grad."""
        if self.use_lora and not self._lora_added:
            require("peft", "DDPO with use_lora=True")
            from peft import LoraConfig

            config = LoraConfig(
                r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES)
            )
            self.sd_pipeline.unet.add_adapter(config)
            for param in self.sd_pipeline.unet.parameters():
                if param.requires_grad:  # train adapters in fp32 even if the UNet runs in half precision
                    param.data = param.data.float()
            self._lora_added = True
        return self.sd_pipeline.unet

    def _lora_state_dict(self) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.sd_pipeline.unet)

    def save_checkpoint(self, models, weights, output_dir):
        """accelerate save hook: write the trained weights to ``output_dir`` and take them off accelerate's list."""
        os.makedirs(output_dir, exist_ok=True)
        if self.use_lora:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous().cpu() for k, v in self._lora_state_dict().items()}
            save_file(state, os.path.join(output_dir, LORA_FILE))
        else:
            self.sd_pipeline.unet.save_pretrained(os.path.join(output_dir, "unet"))
        if weights:
            weights.pop()  # saved here, so accelerate does not save the model a second time

    def load_checkpoint(self, models, input_dir):
        """accelerate load hook: restore the weights written by `save_checkpoint`."""
        if self.use_lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            self.get_trainable_layers()
            result = set_peft_model_state_dict(self.sd_pipeline.unet, load_file(os.path.join(input_dir, LORA_FILE)))
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"LoRA checkpoint in {input_dir} has keys the UNet lacks: {unexpected[:5]}")
        else:
            from diffusers import UNet2DConditionModel

            loaded = UNet2DConditionModel.from_pretrained(os.path.join(input_dir, "unet"))
            self.sd_pipeline.unet.load_state_dict(loaded.state_dict())
            del loaded
        if models:
            models.pop()  # restored here, so accelerate does not load it again

    def save_pretrained(self, output_dir: str):
        """Save for inference: the LoRA weights (loadable with ``load_lora_weights``) or the whole pipeline."""
        if self.use_lora:
            from diffusers.utils import convert_state_dict_to_diffusers

            StableDiffusionPipeline.save_lora_weights(
                output_dir, unet_lora_layers=convert_state_dict_to_diffusers(self._lora_state_dict())
            )
        self.sd_pipeline.save_pretrained(output_dir)

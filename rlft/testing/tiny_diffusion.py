"""A tiny randomly initialised Stable Diffusion pipeline, built offline from configs.

UNet, VAE and CLIP text encoder have a few thousand parameters each; the CLIP
tokenizer is a character-level BPE written to a temporary folder. Images are
16x16 (8x8 latents). For tests and smoke runs of DDPO on a CPU; needs diffusers.
"""

from __future__ import annotations

import json
import os
import string
import tempfile

import torch

#: A few merges so that the tokenizer is a real BPE, not only characters.
_MERGES = ("t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>")
MAX_PROMPT_TOKENS = 16
IMAGE_SIZE = 16


def build_clip_tokenizer(save_dir: str | os.PathLike | None = None):
    """A character-level CLIP BPE tokenizer (lower-case letters, digits, punctuation)."""
    from transformers import CLIPTokenizer

    if save_dir is None:  # the tokenizer reads its files when built: a throwaway folder is enough
        with tempfile.TemporaryDirectory(prefix="rlft-tiny-clip-") as folder:
            return build_clip_tokenizer(folder)
    save_dir = str(save_dir)
    os.makedirs(save_dir, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for merge in _MERGES:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_file, merges_file = os.path.join(save_dir, "vocab.json"), os.path.join(save_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=MAX_PROMPT_TOKENS)


def build_sd_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionPipeline`` (16x16 images) with a DDIM scheduler; no downloads."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4, sample_size=IMAGE_SIZE,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=MAX_PROMPT_TOKENS, projection_dim=16,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

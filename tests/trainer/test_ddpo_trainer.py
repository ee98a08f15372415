"""DDPOTrainer on a tiny random Stable Diffusion pipeline: training, resume, checkpoints, config, optional extra."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from rlft.trainer.ddpo_config import DDPOConfig

pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny UNet is dominated by thread overhead on a shared CPU; one thread is several times faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3)), {}


def make_prompt_fn(seed=0):
    rng = random.Random(seed)
    return lambda: (rng.choice(["the cat", "a dog", "red"]), {"id": 1})


def config(tmp_path, **overrides):
    kw = dict(
        num_epochs=2, mixed_precision="no", sample_num_steps=3, sample_batch_size=2, train_batch_size=1,
        sample_num_batches_per_epoch=2, train_learning_rate=1e-2, train_clip_range=0.2, logdir=str(tmp_path / "logs"),
        save_freq=1, seed=0,
    )
    kw.update(overrides)
    return DDPOConfig(**kw)


def make_trainer(cfg, use_lora=False, hook=None, seed=0):
    from rlft import DDPOTrainer
    from rlft.models import DefaultDDPOStableDiffusionPipeline
    from rlft.testing.tiny_diffusion import build_sd_pipeline

    pipe = DefaultDDPOStableDiffusionPipeline(build_sd_pipeline(seed=0), use_lora=use_lora)
    return DDPOTrainer(cfg, brightness, make_prompt_fn(seed), pipe, image_samples_hook=hook)


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.sd_pipeline.unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("use_lora", [False, True])
def test_one_epoch_updates_every_trainable_parameter(tmp_path, use_lora):
    calls = []
    trainer = make_trainer(config(tmp_path, num_epochs=1), use_lora=use_lora, hook=lambda *a: calls.append(a))
    before = trainable(trainer)
    frozen = {n: p.detach().clone() for n, p in trainer.sd_pipeline.vae.named_parameters()}
    assert all(n.find("lora") >= 0 for n in before) == use_lora
    trainer.train()
    after = trainable(trainer)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, unchanged[:5]
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.sd_pipeline.vae.named_parameters())
    # hook: once per epoch with [images, prompts, metadata, rewards, reward_metadata] per sampling batch
    assert len(calls) == 1
    pairs, global_step, tracker = calls[0]
    assert global_step == 0 and tracker is None and len(pairs) == 2
    images, prompts, metadata, rewards, _ = pairs[0]
    assert images.shape == (2, 3, 16, 16) and len(prompts) == 2 and len(rewards) == 2
    assert trainer.global_step == 4  # 4 samples / (train_batch_size 1 * accumulation 1) optimizer steps
    assert os.path.isdir(os.path.join(trainer.config.logdir, "checkpoints", "checkpoint_0"))


def test_calculate_loss_shapes_and_cfg(tmp_path):
    trainer = make_trainer(config(tmp_path, num_epochs=1, train_cfg=True))
    samples, _ = trainer._generate_samples(1, 2)
    assert samples.latents.shape == (2, 3, 4, 8, 8) and samples.log_probs.shape == (2, 3)
    embeds = torch.cat([samples.negative_prompt_embeds, samples.prompt_embeds])
    loss, kl, clipfrac = trainer.calculate_loss(
        samples.latents[:, 0], samples.timesteps[:, 0], samples.next_latents[:, 0], samples.log_probs[:, 0],
        torch.tensor([1.0, -1.0]), embeds,
    )
    # same weights as at sampling: ratio 1, so the loss is -mean(advantages) = 0 and nothing is clipped
    assert abs(loss.item()) < 1e-4 and kl.item() < 1e-8 and clipfrac.item() == 0


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_reproduces_uninterrupted_run(tmp_path, use_lora):
    full = make_trainer(config(tmp_path / "a", num_epochs=3, per_prompt_stat_tracking=True,
                               per_prompt_stat_tracking_min_count=2), use_lora=use_lora)
    full.train()
    expected = trainable(full)

    first = make_trainer(config(tmp_path / "b", num_epochs=3, per_prompt_stat_tracking=True,
                                per_prompt_stat_tracking_min_count=2), use_lora=use_lora)
    first.train(epochs=2)
    checkpoints = tmp_path / "b" / "logs" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["checkpoint_0", "checkpoint_1"]
    del first
    resumed = make_trainer(
        config(tmp_path / "b", num_epochs=3, per_prompt_stat_tracking=True, per_prompt_stat_tracking_min_count=2,
               resume_from=str(checkpoints)),
        use_lora=use_lora, seed=1,  # the prompt function's own RNG differs; only restored state may matter
    )
    assert resumed.first_epoch == 2 and resumed.global_step == 8
    # the prompt function here is stateful outside our control: give the resumed run the same prompts
    resumed.prompt_fn = _advance(make_prompt_fn(0), 2 * 4)
    resumed.train()
    got = trainable(resumed)
    assert all(torch.allclose(expected[n], got[n], atol=1e-6) for n in expected)
    assert torch.allclose(full.last_rewards, resumed.last_rewards)


def _advance(fn, n):
    for _ in range(n):
        fn()
    return fn


def test_checkpoint_limit_and_atomic_names(tmp_path):
    trainer = make_trainer(config(tmp_path, num_epochs=3, num_checkpoint_limit=2, sample_num_batches_per_epoch=1,
                                  sample_batch_size=1))
    trainer.train()
    names = sorted(os.listdir(os.path.join(trainer.config.logdir, "checkpoints")))
    assert names == ["checkpoint_1", "checkpoint_2"]  # oldest pruned, no temp folders left


def test_async_rewards_match_sync(tmp_path):
    sync = make_trainer(config(tmp_path / "s", num_epochs=1, save_freq=5))
    sync.train()
    asyn = make_trainer(config(tmp_path / "a", num_epochs=1, save_freq=5, async_reward_computation=True, max_workers=2))
    asyn.train()
    assert torch.allclose(sync.last_rewards, asyn.last_rewards)


def test_create_model_card(tmp_path):
    trainer = make_trainer(config(tmp_path, num_epochs=1))
    trainer.create_model_card(str(tmp_path / "card"))
    text = (tmp_path / "card" / "README.md").read_text()
    assert "TRL DDPO Model" in text and "DDPO" in text


def test_bad_reward_function(tmp_path):
    trainer = make_trainer(config(tmp_path, num_epochs=1))
    trainer.reward_fn = lambda images, prompts, meta: images.mean(dim=(1, 2, 3))
    with pytest.raises(TypeError, match="pair"):
        trainer.train()
    trainer.reward_fn = lambda images, prompts, meta: (torch.zeros(5), {})
    with pytest.raises(ValueError, match="5 rewards for 2 images"):
        trainer.train()


@pytest.mark.slow
def test_brightness_reward_rises(tmp_path):
    """Train for brightness and, from the same start, for darkness: brightness rises and ends above darkness."""
    def run(sign, where):
        cfg = config(where, num_epochs=10, sample_batch_size=8, train_batch_size=4, sample_num_batches_per_epoch=2,
                     sample_num_steps=4, train_learning_rate=1e-3, save_freq=100, sample_guidance_scale=1.0,
                     train_cfg=False)
        trainer = make_trainer(cfg)
        trainer.reward_fn = lambda images, prompts, meta: (sign * images.mean(dim=(1, 2, 3)), {})
        rewards = []
        for epoch in range(cfg.num_epochs):
            trainer.step(epoch, 0)
            rewards.append(sign * trainer.last_rewards.mean().item())
        return rewards

    bright, dark = run(1.0, tmp_path / "bright"), run(-1.0, tmp_path / "dark")
    print("brightness per epoch, rewarding brightness:", [round(r, 4) for r in bright])
    print("brightness per epoch, rewarding darkness:  ", [round(r, 4) for r in dark])
    assert sum(bright[-3:]) / 3 > sum(bright[:3]) / 3
    assert sum(bright[-3:]) / 3 > sum(dark[-3:]) / 3


# ------------------------------------------------------------------ config


def test_config_has_the_40_documented_fields_and_defaults():
    from dataclasses import fields

    cfg_fields = {f.name for f in fields(DDPOConfig)}
    assert len(cfg_fields) == 40
    cfg = DDPOConfig(mixed_precision="no")
    assert (cfg.num_epochs, cfg.save_freq, cfg.num_checkpoint_limit, cfg.sample_num_steps) == (100, 1, 5, 50)
    assert (cfg.sample_eta, cfg.sample_guidance_scale, cfg.train_learning_rate, cfg.train_clip_range) == (1.0, 5.0, 3e-4, 1e-4)
    assert cfg.tracker_project_name == "trl" and cfg.negative_prompts == "" and cfg.train_cfg is True
    assert DDPOConfig.__dataclass_fields__["mixed_precision"].default == "fp16"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(sample_batch_size=3, train_batch_size=2), "sample_batch_size .3. must be a multiple of train_batch_size"),
        (dict(sample_batch_size=2, sample_num_batches_per_epoch=1, train_gradient_accumulation_steps=4), "not a multiple"),
        (dict(train_timestep_fraction=1.5), "train_timestep_fraction must be in"),
        (dict(train_timestep_fraction=0.01, sample_num_steps=10), "trains on no timestep"),
        (dict(sample_eta=0.0), "sample_eta must be > 0"),
        (dict(num_epochs=0), "num_epochs must be a positive integer"),
        (dict(mixed_precision="fp32"), "mixed_precision must be one of"),
        (dict(log_with="nonsense"), "log_with must be None or one of"),
    ],
)
def test_config_validation(overrides, match):
    kw = dict(mixed_precision="no")
    kw.update(overrides)
    with pytest.raises(ValueError, match=match):
        DDPOConfig(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_fp16_on_cpu_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="mixed_precision='no'"):
        DDPOConfig()


def test_scheduler_with_alpha_one_is_rejected(tmp_path):
    from diffusers import DDIMScheduler

    from rlft import DDPOTrainer
    from rlft.models import DefaultDDPOStableDiffusionPipeline
    from rlft.testing.tiny_diffusion import build_sd_pipeline

    sd = build_sd_pipeline()
    sd.scheduler = DDIMScheduler(set_alpha_to_one=True)
    with pytest.raises(ValueError, match="set_alpha_to_one=False"):
        DDPOTrainer(config(tmp_path), brightness, make_prompt_fn(), DefaultDDPOStableDiffusionPipeline(sd))


def test_without_diffusers_import_works_and_ddpo_names_the_extra():
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "import rlft, rlft.trainer\n"
        "cfg = rlft.DDPOConfig(mixed_precision='no')\n"
        "for get in (lambda: rlft.DDPOTrainer, lambda: rlft.trainer.DefaultDDPOStableDiffusionPipeline):\n"
        "    try:\n"
        "        get()\n"
        "    except ImportError as e:\n"
        "        assert 'pip install \"rlft[diffusers]\"' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]

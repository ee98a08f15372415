"""DDPOTrainer on a tiny random Stable Diffusion pipeline: training, resume, checkpoints, config, optional extra."""

from __future__ import annotations

import copy
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.tracking import GeneralTracker

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


PROMPTS = ["the cat", "a dog", "red"]


def global_rng_prompt_fn(record: list):
    """A prompt function drawing from the global random and numpy RNGs (as TRL's examples do); records its draws."""

    def prompt_fn():
        prompt, k = random.choice(PROMPTS), int(np.random.randint(1000))
        record.append((prompt, k))
        return prompt, {"k": k}

    return prompt_fn


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_reproduces_uninterrupted_run(tmp_path, use_lora):
    """2 epochs straight == 1 epoch, save, fresh process state, resume, 1 epoch: same weights and same prompts."""
    kw = dict(num_epochs=2, per_prompt_stat_tracking=True, per_prompt_stat_tracking_min_count=2)
    straight_prompts: list = []
    full = make_trainer(config(tmp_path / "a", **kw), use_lora=use_lora)
    full.prompt_fn = global_rng_prompt_fn(straight_prompts)
    full.train()
    expected = trainable(full)

    first_prompts: list = []
    first = make_trainer(config(tmp_path / "b", **kw), use_lora=use_lora)
    first.prompt_fn = global_rng_prompt_fn(first_prompts)
    first.train(epochs=1)
    checkpoints = tmp_path / "b" / "logs" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["checkpoint_0"]
    del first
    # What a new process would have: other RNG states (and other initial LoRA weights).
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)

    resumed_prompts: list = []
    resumed = make_trainer(config(tmp_path / "b", resume_from=str(checkpoints), **kw), use_lora=use_lora)
    resumed.prompt_fn = global_rng_prompt_fn(resumed_prompts)
    assert resumed.first_epoch == 1 and resumed.global_step == 4
    resumed.train()

    per_epoch = 4  # sample_batch_size 2 * sample_num_batches_per_epoch 2
    assert first_prompts == straight_prompts[:per_epoch]
    assert resumed_prompts == straight_prompts[per_epoch:]
    got = trainable(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)
    assert resumed.global_step == full.global_step == 8
    assert torch.equal(full.last_rewards, resumed.last_rewards)


def test_interrupted_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(config(tmp_path, num_epochs=2))
    trainer.train(epochs=1)
    checkpoints = os.path.join(trainer.config.logdir, "checkpoints")
    real_save = trainer.accelerator.save_state

    def crash_after_writing(output_dir, **kw):
        real_save(output_dir, **kw)  # every file written, the trainer state not yet
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer.accelerator, "save_state", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(os.listdir(checkpoints)) == ["checkpoint_0", "checkpoint_1.tmp"]
    assert not os.path.exists(os.path.join(checkpoints, "checkpoint_1.tmp", "ddpo_trainer_state.json"))

    # resuming from the folder takes the last complete checkpoint; an explicit partial one is refused
    resumed = make_trainer(config(tmp_path, num_epochs=2, resume_from=checkpoints))
    assert resumed.first_epoch == 1 and resumed.global_step == 4
    with pytest.raises(ValueError, match="not a complete DDPO checkpoint"):
        make_trainer(config(tmp_path, resume_from=os.path.join(checkpoints, "checkpoint_1.tmp")))
    # the next save replaces the leftover
    resumed.train()
    assert sorted(os.listdir(checkpoints)) == ["checkpoint_0", "checkpoint_1"]


def test_gradient_accumulation_matches_one_full_batch(tmp_path):
    """Same samples: train_batch_size 1 x accumulation 2 makes the same update as batch 2 x accumulation 1."""
    # Adam with a large epsilon moves each weight by about lr * gradient, so a wrong gradient scale
    # shows in the update (with eps 1e-8 its first step is nearly sign(gradient)); no clipping.
    common = dict(num_epochs=1, sample_batch_size=2, sample_num_batches_per_epoch=1, save_freq=10, sample_num_steps=3,
                  train_learning_rate=1.0, train_adam_epsilon=1.0, train_max_grad_norm=1e6)
    full = make_trainer(config(tmp_path / "full", train_batch_size=2, train_gradient_accumulation_steps=1, **common))
    samples, prompt_image_data = full._generate_samples(1, 2)

    def update(trainer):
        trainer._generate_samples = lambda *a: (copy.deepcopy(samples), copy.deepcopy(prompt_image_data))
        trainer.sd_pipeline.scheduler.set_timesteps(common["sample_num_steps"])  # sampling would have set them
        before = trainable(trainer)
        torch.manual_seed(0)  # same sample and timestep shuffles
        steps = trainer.step(0, 0)
        after = trainable(trainer)
        return steps, {n: after[n] - before[n] for n in before}

    full_steps, full_delta = update(full)
    half_steps, half_delta = update(make_trainer(config(tmp_path / "half", train_batch_size=1,
                                                        train_gradient_accumulation_steps=2, **common)))
    single_steps, single_delta = update(make_trainer(config(tmp_path / "single", train_batch_size=1,
                                                            train_gradient_accumulation_steps=1, **common)))
    assert full_steps == half_steps == 1 and single_steps == 2
    scale = max(d.abs().max().item() for d in full_delta.values())
    assert scale > 1e-3  # the update is not negligible
    for name in full_delta:
        torch.testing.assert_close(half_delta[name], full_delta[name], atol=1e-4 * scale, rtol=1e-3, msg=name)
    # control: two separate optimizer steps are a different update, and the comparison sees it
    assert max((single_delta[n] - full_delta[n]).abs().max().item() for n in full_delta) > 1e-2 * scale


class RecordingTracker(GeneralTracker):
    """A custom accelerate tracker that keeps what it is given."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.config, self.logs, self.images = None, [], []

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logs.append((step, dict(values)))

    def log_images(self, values, step=None, **kwargs):
        self.images.append((step, values))


def test_logs_rewards_stats_and_hook_images_to_trackers(tmp_path):
    tracker = RecordingTracker()
    seen = []

    def hook(prompt_image_pairs, global_step, hook_tracker):
        assert hook_tracker is tracker
        seen.append(prompt_image_pairs)
        hook_tracker.log_images({"samples": torch.cat([p[0] for p in prompt_image_pairs])}, step=global_step)

    trainer = make_trainer(config(tmp_path, num_epochs=2, save_freq=10, log_with=tracker), hook=hook)
    trainer.train()

    assert tracker.config["num_epochs"] == 2 and tracker.config["log_with"] == "recording"
    reward_logs = [(step, v) for step, v in tracker.logs if "reward" in v]
    train_logs = [(step, v) for step, v in tracker.logs if "loss" in v]
    assert [step for step, _ in reward_logs] == [0, 4]  # global step at each epoch's start
    for (_, logged), pairs in zip(reward_logs, seen):
        images = torch.cat([p[0] for p in pairs])  # (4, 3, 16, 16)
        brightness = images.mean(dim=(1, 2, 3)).double()  # the reward function, recomputed
        assert logged["reward"] == pytest.approx(brightness.mean().item(), rel=1e-5)
        assert logged["reward_mean"] == logged["reward"]
        assert logged["reward_std"] == pytest.approx(brightness.std(unbiased=False).item(), rel=1e-4)
    assert [v["epoch"] for _, v in reward_logs] == [0, 1]
    # one training log per optimizer step: 4 samples / batch 1 per epoch
    assert [step for step, _ in train_logs] == list(range(8))
    assert all({"loss", "approx_kl", "clipfrac", "epoch", "inner_epoch"} <= set(v) for _, v in train_logs)
    assert all(math.isfinite(v["loss"]) for _, v in train_logs)
    assert [step for step, _ in tracker.images] == [0, 4]
    assert tracker.images[0][1]["samples"].shape == (4, 3, 16, 16)


def test_trl_style_project_kwargs(tmp_path):
    """TRL's examples pass project_dir, automatic_checkpoint_naming and total_limit; checkpoints still go
    through the atomic save, into project_dir/checkpoints, pruned to total_limit."""
    project = tmp_path / "save"
    cfg = config(tmp_path, num_epochs=3, sample_num_batches_per_epoch=1, sample_batch_size=1, project_kwargs={
        "project_dir": str(project), "automatic_checkpoint_naming": True, "total_limit": 2,
        "logging_dir": str(tmp_path / "tb")})
    trainer = make_trainer(cfg)
    trainer.train()
    assert sorted(os.listdir(project / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    assert all((project / "checkpoints" / n / "ddpo_trainer_state.json").is_file() for n in ["checkpoint_1", "checkpoint_2"])


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
        (dict(log_with="nonsense"), "log_with must be None, one of"),
        (dict(log_with=["all", 3]), "int is neither a tracker name nor"),
        (dict(project_kwargs={"total_limit": 0}), r"project_kwargs\['total_limit'\] must be a positive integer"),
    ],
)
def test_config_validation(overrides, match):
    kw = dict(mixed_precision="no")
    kw.update(overrides)
    with pytest.raises(ValueError, match=match):
        DDPOConfig(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_fp16_on_cpu_is_rejected_by_the_trainer_with_the_fix(tmp_path):
    from rlft import DDPOTrainer
    from rlft.models import DefaultDDPOStableDiffusionPipeline
    from rlft.testing.tiny_diffusion import build_sd_pipeline

    cfg = DDPOConfig()  # the documented default, fp16, builds on a CPU so that a command line can override it
    assert cfg.mixed_precision == "fp16"
    with pytest.raises(ValueError, match="mixed_precision='no'"):
        DDPOTrainer(cfg, brightness, make_prompt_fn(), DefaultDDPOStableDiffusionPipeline(build_sd_pipeline()))


def test_mixed_precision_none_means_no():
    """TRL 0.7.10 passed None to accelerate (its own DDPO tests did, to run on a CPU)."""
    assert DDPOConfig(mixed_precision=None).mixed_precision == "no"


def test_tyro_command_line_overrides_the_fp16_default():
    """The layout of TRL's DDPO example script: the config's defaults are built before the command line applies."""
    from dataclasses import dataclass, field

    tyro = pytest.importorskip("tyro")

    @dataclass
    class ScriptArguments:
        ddpo_config: DDPOConfig = field(default_factory=lambda: DDPOConfig(num_epochs=3))

    args = tyro.cli(ScriptArguments, args=["--ddpo_config.mixed_precision", "no"])
    assert (args.ddpo_config.mixed_precision, args.ddpo_config.num_epochs) == ("no", 3)


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


def test_an_unfinished_dataloader_of_another_trainer_does_not_change_the_step_count(tmp_path):
    """accelerate keeps its gradient state per process: a transformers Trainer stopped by max_steps leaves its
    dataloader marked as at its end, which made every DDPO micro-step sync (12 optimizer steps instead of 4)."""
    from accelerate.state import GradientState

    class Abandoned:  # what a dataloader left at its end by another trainer looks like to accelerate
        end_of_dataloader = True

    state = GradientState()
    loader = Abandoned()
    state._add_dataloader(loader)
    assert state.end_of_dataloader
    try:
        trainer = make_trainer(config(tmp_path, num_epochs=1))
        trainer.train()
        assert trainer.global_step == 4
    finally:
        GradientState._reset_state()

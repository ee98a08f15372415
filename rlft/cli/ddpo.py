"""``rlft ddpo``: DDPO fine-tuning of a Stable Diffusion pipeline against an image reward (`DDPOTrainer`).

The pipeline is a local diffusers folder or ``tiny-sd`` (rlft's tiny random pipeline,
16x16 images, for smoke runs). Rewards: ``brightness``, ``darkness``, ``contrast``
(built in, no model needed) or ``module:function`` with DDPO's reward signature.
Needs the diffusers extra.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

from ._args import CLIError, merged_config
from ._run import Finish, Plot, RunOptions, config_table, done_line, finish_run, open_run, progress, run_result, trend

DESCRIPTION = "DDPO (DDPOTrainer) for a Stable Diffusion pipeline, with a built-in or Python image reward."

TINY_PIPELINE = "tiny-sd"
BAR_KEYS = ("reward", "loss", "approx_kl")
PLOTS = [
    Plot("ddpo_reward.png", ["reward", "reward_std"], "DDPO: reward of each epoch's samples (x: optimizer step)"),
    Plot("ddpo_loss.png", ["loss", "approx_kl", "clipfrac"], "DDPO: clipped loss, approximate KL, clipped fraction"),
]
#: Rendered size (pixels) of the sample images in the report; tiny images are upscaled without smoothing.
REPORT_IMAGE_SIZE = 128

TINY_PRESET = dict(
    model_name_or_path=TINY_PIPELINE, use_lora=False, num_epochs=2, sample_num_steps=3, sample_batch_size=2,
    sample_num_batches_per_epoch=1, train_batch_size=1, mixed_precision="no", train_learning_rate=1e-3, num_samples=2,
)


def CLI_DEFAULTS() -> dict:
    """fp16 (DDPOConfig's default) only where there is a GPU; the CPU trains in full precision."""
    import torch

    return {} if torch.cuda.is_available() else {"mixed_precision": "no"}


@dataclass
class DDPOScriptArguments(RunOptions):
    """Where the pipeline, prompts and reward come from (the run directory is --output_dir)."""

    output_dir: Optional[str] = None
    """The run directory (default: runs/ddpo-<date>-<time>); DDPOConfig.logdir is set to it."""
    model_name_or_path: Optional[str] = None
    """A local diffusers Stable Diffusion folder, or tiny-sd for an offline smoke run."""
    use_lora: bool = True
    """Train LoRA adapters of the UNet (needs peft) instead of the whole UNet."""
    prompts: list[str] = field(default_factory=lambda: ["a cat", "a dog", "the red sun"])
    """Prompts drawn at random for each image."""
    dataset: Optional[str] = None
    """Prompts from a .json/.jsonl/.csv/.parquet file or save_to_disk folder instead of --prompts."""
    prompt_column: Optional[str] = None
    """The dataset's prompt column (default: the first of prompt, query, text)."""
    reward: str = "brightness"
    """'brightness', 'darkness', 'contrast', or module:function with f(images, prompts, metadata) -> rewards."""


def arguments():
    from ..trainer.ddpo_config import DDPOConfig

    return (DDPOScriptArguments, DDPOConfig)


# ---------------------------------------------------------------------- built-in rewards
def brightness(images, prompts, metadata):
    """Mean pixel value in [0, 1]: brighter images score higher."""
    return images.float().mean(dim=(1, 2, 3)), {}


def darkness(images, prompts, metadata):
    """One minus the mean pixel value."""
    return 1.0 - images.float().mean(dim=(1, 2, 3)), {}


def contrast(images, prompts, metadata):
    """Standard deviation of the pixel values of each image."""
    return images.float().flatten(1).std(dim=1), {}


IMAGE_REWARDS = {"brightness": brightness, "darkness": darkness, "contrast": contrast}


def _image_reward(spec: str):
    from ._load import import_callable

    if spec in IMAGE_REWARDS:
        return IMAGE_REWARDS[spec]
    if ":" not in spec:
        raise CLIError(f"--reward {spec!r}: choose one of {', '.join(IMAGE_REWARDS)} or module:function.")
    fn = import_callable(spec)

    def reward(images, prompts, metadata):
        out = fn(images, prompts, metadata)
        return out if isinstance(out, tuple) and len(out) == 2 else (out, {})

    return reward


# ---------------------------------------------------------------------- the command
def run(args: DDPOScriptArguments, config) -> dict:
    """Train as configured; returns a summary (run_dir, epochs, interrupted, exit_code, ...)."""
    from ..import_utils import is_diffusers_available

    if not is_diffusers_available():
        raise CLIError('rlft ddpo needs diffusers: pip install "rlft[diffusers]".')
    from ..models.modeling_sd_base import DefaultDDPOStableDiffusionPipeline
    from ..reporting import graceful_interrupt
    from ..trainer.ddpo_trainer import DDPOTrainer

    prompts = _prompts(args)
    reward_fn = _image_reward(args.reward)
    pipeline = _pipeline(args.model_name_or_path, config.seed)
    run_dir = open_run(args.output_dir, args, "ddpo", merged_config(args, config))
    config.logdir = str(run_dir.path)  # checkpoints go to <run>/checkpoints
    if args.resume:
        config.resume_from = str(run_dir.checkpoints_dir)
    sd = DefaultDDPOStableDiffusionPipeline(pipeline, use_lora=args.use_lora)
    rng = random.Random(config.seed)
    try:
        trainer = DDPOTrainer(config, reward_fn, lambda: (rng.choice(prompts), {}), sd)
    except ValueError as err:
        if args.resume:
            raise CLIError(f"--resume: {err}") from None
        raise
    sink = _attach_tracker(trainer, run_dir)
    if args.resume:
        run_dir.truncate_metrics(trainer.global_step)
    shown = prompts[: args.num_samples]
    before = _images(run_dir, "before", trainer, shown, reward_fn, config, resume=args.resume)

    epoch = trainer.first_epoch
    with graceful_interrupt() as stop, progress(config.num_epochs, "ddpo", BAR_KEYS, unit="epoch", initial=epoch) as bar:
        while epoch < config.num_epochs and not stop.stop:
            trainer.global_step = trainer.step(epoch, trainer.global_step)
            epoch += 1
            bar.update(1, **sink.latest)
    if epoch % config.save_freq and epoch > trainer.first_epoch:
        # DDPOTrainer saved only every save_freq epochs: keep the last finished one for --resume too.
        trainer._save_checkpoint(epoch - 1, trainer.global_step)
    interrupted = epoch < config.num_epochs

    trainer.save_pretrained(str(run_dir.model_dir))
    after = _images(run_dir, "after", trainer, shown, reward_fn, config)
    grid = _grid(run_dir, before, after)
    records = run_dir.read_metrics()
    summary = "\n".join([
        f"DDPO of `{args.model_name_or_path}` ({'LoRA' if args.use_lora else 'full UNet'}) with reward `{args.reward}` on "
        f"{len(prompts)} prompt(s).",
        "",
        done_line("epochs done", epoch, config.num_epochs, interrupted),
        f"- mean reward of the samples, first -> last epochs: {trend(records, 'reward')}",
        "",
        config_table(config, ["sample_num_steps", "sample_batch_size", "sample_num_batches_per_epoch", "train_learning_rate",
                              "train_clip_range", "seed"]),
    ])
    table = [{"prompt": b["prompt"], "reward before": b["reward"], "reward after": a["reward"]} for b, a in zip(before, after)]
    written = finish_run(run_dir, Finish(
        command="ddpo", title=f"DDPO: {args.model_name_or_path}", summary=summary, plots=PLOTS, samples_table=table,
        samples_heading="Samples before (top row) and after (bottom row) training, same noise", images=[grid] if grid else [],
        tags=["diffusers", "text-to-image"],
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, epochs=epoch, model_dir=str(run_dir.model_dir))


def _prompts(args) -> list[str]:
    from . import _load

    if args.dataset:
        rows = _load.load_rows(args.dataset, kind="prompt")
        column = _load.pick_column(rows, args.prompt_column, ("prompt", "query", "text"), "--prompt_column")
        prompts = [str(p) for p in rows[column]]
    else:
        prompts = list(args.prompts)
    if not prompts:
        raise CLIError("no prompts: give --prompts or --dataset.")
    return prompts


def _pipeline(name: str | None, seed: int):
    if name == TINY_PIPELINE:
        from ..testing.tiny_diffusion import build_sd_pipeline

        return build_sd_pipeline(seed=seed)
    from ._load import model_folder

    if name and name.startswith("tiny-"):
        raise CLIError(f"--model_name_or_path {name!r}: the tiny diffusion pipeline is called {TINY_PIPELINE}.")
    return model_folder(name)


def _attach_tracker(trainer, run_dir):
    """Send what DDPOTrainer logs through accelerate (reward per epoch, loss per optimizer step) to metrics.jsonl."""
    from accelerate.tracking import GeneralTracker

    class RunDirTracker(GeneralTracker):
        name = "rlft_run_dir"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.latest: dict = {}

        @property
        def tracker(self):
            return run_dir

        def store_init_configuration(self, values):  # config.yaml holds it already
            pass

        def log(self, values, step=None, **kwargs):
            row = run_dir.log_metrics(step if step is not None else 0, values)
            self.latest.update({k: v for k, v in row.items() if k != "step"})

    tracker = RunDirTracker()
    trainer.accelerator.trackers.append(tracker)
    return tracker


def _images(run_dir, name, trainer, prompts, reward_fn, config, resume=False) -> list[dict]:
    """Sample one image per prompt under a fixed seed, save PNGs and samples/<name>.jsonl (kept when resuming)."""
    import torch

    if resume and run_dir.read_samples(name):
        return run_dir.read_samples(name)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    out = trainer.sd_pipeline(
        prompts, num_inference_steps=config.sample_num_steps, guidance_scale=config.sample_guidance_scale,
        eta=config.sample_eta, generator=generator, output_type="pt",
    )
    images = out.images.float().clamp(0, 1).cpu()  # (B, 3, H, W)
    rewards, _ = reward_fn(images, list(prompts), [{} for _ in prompts])
    rewards = torch.as_tensor(rewards).float().reshape(-1).tolist()
    folder = run_dir.samples_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (prompt, image, reward) in enumerate(zip(prompts, images, rewards)):
        path = folder / f"{name}_{i}.png"
        _to_pil(image).save(path)
        rows.append({"prompt": prompt, "reward": reward, "image": str(path.relative_to(run_dir.path))})
    run_dir.save_samples(name, rows)
    return rows


def _to_pil(image):
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")  # (H, W, 3)
    return Image.fromarray(array)


def _grid(run_dir, before: list[dict], after: list[dict]):
    """One PNG: the before images on top, the after images below, each scaled to REPORT_IMAGE_SIZE."""
    from PIL import Image

    if not before or not after:
        return None
    size = REPORT_IMAGE_SIZE
    grid = Image.new("RGB", (size * len(before), size * 2), "white")
    for row, samples in enumerate((before, after)):
        for col, sample in enumerate(samples):
            with Image.open(run_dir.path / sample["image"]) as im:
                grid.paste(im.convert("RGB").resize((size, size), Image.NEAREST), (col * size, row * size))
    path = run_dir.samples_dir / "images" / "before_after.png"
    grid.save(path)
    return path

"""PPOTrainer's checkpoints: `save_checkpoint` / `load_checkpoint` (a mixin of `PPOTrainer`).

A checkpoint is accelerate's ``save_state`` (optimizer, scheduler, the random states of every
process; under DeepSpeed/FSDP also the engine's sharded weights) plus rlft's own files: the
policy's parameters and ``ppo_trainer_state.json`` (step, KL controller, score moments, dataloader
position, non-finite counters). It is written atomically with `rlft.utils.checkpoint.atomic_directory`.

Under DeepSpeed ZeRO the policy, its value head and the optimizer are the engine's own files
(``pytorch_model/``, one optimizer partition per process). DeepSpeed loads those only into the
number of processes that wrote them; into another number, `load_checkpoint` first converts them
once to DeepSpeed's universal format (`deepspeed_universal`), which the engine re-partitions on load.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from ..utils.checkpoint import (
    CHECKPOINT_PREFIX,
    atomic_directory,
    prune_checkpoints,
    remove_interrupted_saves,
    resolve_checkpoint,
)
from . import _distributed, _sharding

#: Files of a PPO checkpoint written by rlft itself (accelerate writes the optimizer, scheduler and RNG files).
TRAINER_STATE_FILE = "ppo_trainer_state.json"
POLICY_FILE = "policy.safetensors"
CHECKPOINT_FORMAT = "rlft-ppo-checkpoint"
#: Elements of each reference parameter hashed into the reference fingerprint (cheap even for large models).
_FINGERPRINT_ELEMENTS = 64
#: The subfolder of a checkpoint that holds a DeepSpeed engine's files (accelerate's checkpoint tag for the first model).
DEEPSPEED_TAG = "pytorch_model"
#: DeepSpeed's universal-format folder inside `DEEPSPEED_TAG` (one folder per parameter: fp32 weights and
#: optimizer moments), written by `deepspeed_universal`; the name DeepSpeed's loader expects.
UNIVERSAL_FOLDER = "zero"


class PPOCheckpointMixin:
    """Checkpoint methods of `PPOTrainer`; they use its accelerator, model, optimizer, scheduler,
    KL controller, running moments, dataloader and non-finite guard."""

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Save the complete training state to ``directory/checkpoint-<current_step>``, atomically.

        The checkpoint holds the policy and value head (for a peft model: the trainable
        adapter and value head only), the optimizer, the learning-rate scheduler, the
        random-number generators of every process (accelerate's files), and
        ``ppo_trainer_state.json``: the step count, KL controller, score-scaling moments,
        dataloader position and non-finite counters. It is written to a hidden temporary
        folder and renamed into place only when complete (see `rlft.utils.checkpoint`),
        so a kill during the save leaves the previous checkpoints intact. With
        ``PPOConfig.save_total_limit`` only that many newest checkpoints are kept.
        Call it on every process. Returns the checkpoint folder.
        """
        directory = Path(directory)
        final = directory / f"{CHECKPOINT_PREFIX}{self.current_step}"
        acc = self.accelerator
        marker = {"step": self.current_step, "trainer": type(self).__name__}
        if acc.is_main_process:
            remove_interrupted_saves(directory)
        with atomic_directory(final, marker_extra=marker, is_main_process=acc.is_main_process, barrier=acc.wait_for_everyone) as tmp:
            with _sharding.module_state_dict(acc.unwrap_model(self.model)):  # FSDP: accelerate's DCP files
                acc.save_state(str(tmp))  # the policy goes through _save_policy_hook
            if acc.is_main_process:
                (tmp / TRAINER_STATE_FILE).write_text(json.dumps(self._trainer_state(), indent=1), encoding="utf-8")
        if self.nonfinite.consecutive == 0:  # saved while healthy: a good point to come back to
            self.nonfinite.last_good_checkpoint = final
        if acc.is_main_process and self.config.save_total_limit is not None:
            keep = {self.nonfinite.last_good_checkpoint, final}
            prune_checkpoints(directory, self.config.save_total_limit, protect=keep)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str | Path) -> Path:
        """Restore the state written by `save_checkpoint`; returns the checkpoint folder used.

        ``path`` is a checkpoint folder, or a run folder whose latest complete checkpoint is
        used. Build the trainer exactly as for the original run (same base model, reference,
        config, dataset, optimizer and scheduler types), then call this on every process:
        the next `step` (and the next batch of ``self.dataloader``) continue where the saved
        run stopped. Raises FileNotFoundError / ValueError naming what is missing or does not match.
        """
        ckpt = resolve_checkpoint(path)
        state_file = ckpt / TRAINER_STATE_FILE
        if not state_file.is_file():
            raise ValueError(f"{ckpt} is not a PPOTrainer checkpoint: it has no {TRAINER_STATE_FILE}.")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{state_file} is not a {CHECKPOINT_FORMAT} file (format={state.get('format')!r}).")
        self._check_checkpoint_matches(ckpt, state)
        universal = self._prepare_deepspeed_resharding(ckpt, state)
        with _sharding.module_state_dict(self.accelerator.unwrap_model(self.model)), _universal_load(self.model, universal):
            self.accelerator.load_state(str(ckpt))  # the policy goes through _load_policy_hook
        self.current_step = int(state["step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.running.load_state_dict(state["running"])
        self.nonfinite.load_state_dict(state["nonfinite"])
        self.nonfinite.last_good_checkpoint = ckpt
        if self.dataloader is not None and state.get("dataloader") is not None:
            self.dataloader.load_state_dict(state["dataloader"])
        self._drop_gradients()
        return ckpt

    def _trainer_state(self) -> dict:
        from .. import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "rlft_version": __version__,
            "step": self.current_step,
            "kl_ctl": self.kl_ctl.state_dict(),
            "running": self.running.state_dict(),
            "nonfinite": self.nonfinite.state_dict(),
            "dataloader": self.dataloader.state_dict() if self.dataloader is not None else None,
            "world_size": self.accelerator.num_processes,
            "deepspeed_zero_stage": _deepspeed_stage(self.accelerator),
            "has_scheduler": self.lr_scheduler is not None,
            "is_peft_model": self.is_peft_model,
            "reference_fingerprint": self._reference_fingerprint(),
            "config": self.config.to_dict(),
        }

    def _prepare_deepspeed_resharding(self, ckpt: Path, state: dict) -> bool:
        """Whether the DeepSpeed engine must load ``ckpt`` in the universal format (saved by another number of
        processes); converts it first when needed (main process, once; every process fails if it fails).
        Refuses what DeepSpeed cannot load: a DeepSpeed checkpoint into a trainer without DeepSpeed or under
        another ZeRO stage, and a checkpoint saved without DeepSpeed into a DeepSpeed trainer."""
        acc = self.accelerator
        saved_stage, stage = state.get("deepspeed_zero_stage"), _deepspeed_stage(acc)
        saved_by_deepspeed = saved_stage is not None or (ckpt / DEEPSPEED_TAG).is_dir()
        saved_name = f"DeepSpeed ZeRO-{'?' if saved_stage is None else saved_stage}"
        weights = f"deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint('{ckpt}', '{DEEPSPEED_TAG}')"
        if saved_by_deepspeed and stage is None:
            raise ValueError(
                f"{ckpt} was saved under {saved_name} (the weights and optimizer are DeepSpeed's files in "
                f"{DEEPSPEED_TAG}/) but this trainer does not run DeepSpeed: launch with the same DeepSpeed config "
                f"(any number of processes), or start a new run from its weights ({weights})."
            )
        if stage is not None and not saved_by_deepspeed:
            raise ValueError(f"{ckpt} was saved without DeepSpeed but this trainer runs DeepSpeed ZeRO-{stage}: "
                             "load it with the sharding it was saved with (no --deepspeed).")
        if stage is not None and saved_stage is not None and saved_stage != stage:
            # ZeRO-3 files (zero_pp_rank_*) and ZeRO-1/2 files (mp_rank_*) are named and loaded differently
            raise ValueError(
                f"{ckpt} was saved under {saved_name} but this trainer runs DeepSpeed ZeRO-{stage}; DeepSpeed loads a "
                f"checkpoint only into the stage that wrote it: launch with a ZeRO-{saved_stage} config, or start a "
                f"new run from its weights ({weights})."
            )
        if not stage or state.get("world_size") == acc.num_processes:  # stage 0 keeps whole optimizer states
            return False
        failed = None
        if acc.is_main_process and not (ckpt / DEEPSPEED_TAG / UNIVERSAL_FOLDER).is_dir():
            try:
                deepspeed_universal(ckpt)
            except Exception as err:  # noqa: BLE001  (any failure must stop every process, not leave them at a barrier)
                failed = err
        # an all-reduce: also the barrier that keeps the other processes from reading a half-written conversion
        if _distributed.any_over_processes(failed is not None, acc):
            raise RuntimeError(
                f"{ckpt} was saved by {state.get('world_size')} processes and DeepSpeed could not convert it to its "
                f"universal format for {acc.num_processes} ({type(failed).__name__ if failed else 'on the main process'}: "
                f"{failed or 'see its error'}). Resume with {state.get('world_size')} processes, or start a new run "
                f"from its weights ({weights})."
            ) from failed
        return True

    def _check_checkpoint_matches(self, ckpt: Path, state: dict) -> None:
        """Refuse checkpoints that would silently train something else; warn about benign differences."""
        if bool(state.get("is_peft_model")) != self.is_peft_model:
            raise ValueError(
                f"{ckpt} was saved from a {'peft' if state.get('is_peft_model') else 'full'} model but this trainer has a "
                f"{'peft' if self.is_peft_model else 'full'} one; build the trainer as in the saved run."
            )
        if state.get("has_scheduler") and self.lr_scheduler is None:
            warnings.warn(f"{ckpt} holds a learning-rate scheduler state but this trainer has no lr_scheduler; it is ignored.",
                          UserWarning, stacklevel=3)
        if self.lr_scheduler is not None and not state.get("has_scheduler"):
            raise ValueError(f"This trainer has an lr_scheduler but {ckpt} was saved without one; pass lr_scheduler=None.")
        saved_fp, fp = state.get("reference_fingerprint"), self._reference_fingerprint()
        if saved_fp is not None and fp is not None and saved_fp != fp:
            raise ValueError(
                f"The reference model differs from the one {ckpt} was trained against (the KL penalty would change). "
                "Build the trainer from the same base model as the saved run (not from a trained checkpoint), "
                "then load_checkpoint restores the trained policy."
            )
        if state.get("world_size") != self.accelerator.num_processes:
            warnings.warn(
                f"{ckpt} was saved with {state.get('world_size')} processes, this run has {self.accelerator.num_processes}: "
                "the weights, optimizer and counters are restored, but the random streams and the data order differ "
                "from an uninterrupted run.", UserWarning, stacklevel=3,
            )
        for key in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "seed"):
            saved = state.get("config", {}).get(key)
            if saved is not None and saved != getattr(self.config, key):
                warnings.warn(f"PPOConfig.{key} was {saved} in {ckpt}, now {getattr(self.config, key)}.", UserWarning, stacklevel=3)

    def _reference_fingerprint(self) -> list[float] | None:
        """A few values of every frozen reference parameter (the base weights for peft), to detect a changed reference."""
        if self.ref_model is not None:  # the language model only: a copied value head plays no part in the KL
            params = list(getattr(self.ref_model, "pretrained_model", self.ref_model).parameters())
        else:
            params = [p for p in self.accelerator.unwrap_model(self.model).pretrained_model.parameters() if not p.requires_grad]
        if not params or any(p.numel() == 0 for p in params):  # sharded (ZeRO-3) or empty: nothing reliable to compare
            return None
        if any(type(p).__name__ == "DTensor" for p in params):  # FSDP2: each process holds another slice, per world size
            return None
        with torch.no_grad():
            return [round(float(p.detach().reshape(-1)[:_FINGERPRINT_ELEMENTS].double().sum()), 6) for p in params]

    def _policy_state(self) -> dict[str, Tensor]:
        """Parameters a checkpoint stores: all of the policy and value head, or only the trainable ones for peft."""
        policy = self.accelerator.unwrap_model(self.model)
        return {n: p for n, p in policy.named_parameters() if p.requires_grad or not self.is_peft_model}

    def _is_policy(self, model) -> bool:
        # accelerate's list may hold the DDP wrapper or the bare module: compare what is inside.
        unwrap = self.accelerator.unwrap_model
        return unwrap(model) is unwrap(self.model)

    def _save_policy_hook(self, models, weights, output_dir) -> None:
        # accelerate would save the full state dict (for peft: the whole frozen base); save our own selection instead.
        for i, model in enumerate(models):
            if self._is_policy(model) and i < len(weights):
                weights.pop(i)
                if self.accelerator.is_main_process:
                    from safetensors.torch import save_file

                    tensors = {n: p.detach().contiguous().cpu() for n, p in self._policy_state().items()}
                    save_file(tensors, str(Path(output_dir) / POLICY_FILE), metadata={"format": "pt", "writer": "rlft"})
                return

    def _load_policy_hook(self, models, input_dir) -> None:
        mine = [m for m in models if self._is_policy(m)]
        if not mine:  # DeepSpeed / FSDP: accelerate loads the engine's own files
            return
        models.remove(mine[0])
        path = Path(input_dir) / POLICY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint has no policy weights.")
        from safetensors.torch import load_file

        try:
            saved = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a damaged file
            raise ValueError(f"Could not read {path}: the file is damaged ({err}).") from err
        params = self._policy_state()
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Build the trainer as in the saved run."
            )
        for name, param in params.items():  # check everything before changing anything
            if tuple(saved[name].shape) != tuple(param.shape):
                raise ValueError(f"{path}: {name} has shape {tuple(saved[name].shape)}, the model expects {tuple(param.shape)}.")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name].to(device=param.device, dtype=param.dtype))


# ---------------------------------------------------------------------- DeepSpeed: another number of processes
def _deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage when ``accelerator`` runs DeepSpeed, else None."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def deepspeed_universal(checkpoint: str | Path) -> Path:
    """Add DeepSpeed's universal format to a PPO checkpoint saved under DeepSpeed ZeRO (1, 2 or 3); returns its folder.

    DeepSpeed keeps one optimizer partition per process (``pytorch_model/*optim_states.pt``) and loads
    them only into as many processes as wrote them. Its universal format (``deepspeed.checkpoint.ds_to_universal``)
    holds every parameter whole: the fp32 weights, Adam's ``exp_avg`` and ``exp_avg_sq`` and the step, which an
    engine with any number of processes partitions on load. `PPOTrainer.load_checkpoint` calls this by itself
    when the number of processes differs; calling it beforehand (one process, e.g. on the machine that holds the
    files) saves that time at resume. The original files stay; ``pytorch_model/zero/`` is added (about 3x the fp32
    model size for Adam), written aside and renamed into place, so an interrupted conversion leaves no half folder.
    """
    import argparse
    import io
    import shutil

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    ckpt = resolve_checkpoint(checkpoint)
    source = ckpt / DEEPSPEED_TAG
    if not source.is_dir():
        raise ValueError(f"{ckpt} holds no DeepSpeed files ({DEEPSPEED_TAG}/): it was not saved under DeepSpeed, "
                         "and it loads into any number of processes as it is.")
    final = source / UNIVERSAL_FOLDER
    if final.is_dir():
        return final
    work = ckpt / ".universal.incomplete"  # ds_to_universal also writes a 'latest_universal' file beside its output
    shutil.rmtree(work, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(source), output_folder=str(work / DEEPSPEED_TAG), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              # rlft's models do not record Megatron's tensor-parallel layout: there is none to record
                              inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        ds_to_universal(args)
    (work / DEEPSPEED_TAG / UNIVERSAL_FOLDER).rename(final)
    shutil.rmtree(work, ignore_errors=True)
    return final


@contextlib.contextmanager
def _universal_load(engine, universal: bool) -> Iterator[None]:
    """Inside the block, the DeepSpeed ``engine`` loads checkpoints in the universal format (`deepspeed_universal`).

    DeepSpeed reads that choice from its config (``checkpoint.load_universal``), fixed when the engine is
    built; accelerate's ``load_state`` offers no argument for it, so it is set on the engine's parsed config
    for this one load and restored after.
    """
    if not universal:
        yield
        return
    config = engine._config
    saved = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = saved

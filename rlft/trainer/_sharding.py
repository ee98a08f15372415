"""Sharded models (FSDP2, DeepSpeed ZeRO-3): gathering parameters for generation, and the reference model.

accelerate shards the policy in ``Accelerator.prepare`` (FSDP2: ``fully_shard`` on each block of the
wrap policy and on the root; ZeRO-3: the DeepSpeed engine). What PPO needs on top of that lives
here, once for every trainer (docs/distributed.md says what was tested):

- `gathered_parameters`: ``generate`` runs one forward per new token. Under FSDP2 every
  forward all-gathers each block and frees it again (``reshard_after_forward``), so a response of
  N tokens costs N all-gathers of the whole model. Inside this context the parameters are gathered
  once, kept through every token, and resharded on exit. Under ZeRO-3 the same holds with
  DeepSpeed's ``GatheredParameters``.
- `prepare_reference`: the frozen reference shares the policy's sharding under FSDP2 (no optimizer,
  so no optimizer state), or DeepSpeed's inference engine under ZeRO-3.
- `create_reference`: the reference copy, loaded again under ZeRO-3 (a copy of a partitioned model is empty).
- `fill_deepspeed_config`: DeepSpeed's "auto" batch sizes and gradient clipping from PPO's settings.
- `module_state_dict`: torch's own ``state_dict`` keys while accelerate writes or reads FSDP checkpoints.
- `full_state_dict` / `save_pretrained`: a ``from_pretrained`` folder from a sharded model (gathered on
  every process, written by the main one).
- `sharding_summary`: one line naming the sharding in use (for the CLI and logs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def fsdp2_modules(model: torch.nn.Module) -> list:
    """The ``fully_shard``-ed modules inside ``model`` (outermost first); empty when it is not FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_zero3(accelerator) -> bool:
    """True under DeepSpeed ZeRO stage 3 (parameters partitioned across processes)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def sharding_summary(accelerator) -> str:
    """One line naming the sharding in use (for the CLI and logs): "FSDP2 (...)", "DeepSpeed ZeRO-3", "DDP" or "none"."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        offload = " + CPU offload" if type(getattr(plugin, "cpu_offload", None)).__name__ in ("CPUOffloadPolicy", "CPUOffload") else ""
        return f"FSDP{plugin.fsdp_version} over {accelerator.num_processes} processes{offload}"
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage} over {accelerator.num_processes} processes"
    if kind == DistributedType.NO:
        return "none (one process)"
    return f"DDP over {accelerator.num_processes} processes (parameters replicated)"


@contextlib.contextmanager
def _fsdp2_gathered(modules: list) -> Iterator[None]:
    # The root's lazy init normally runs in its first forward. generate() calls the language model
    # inside a value-head wrapper, not the root, so an inner block would otherwise run first and
    # take itself for a root.
    root = modules[0]._get_fsdp_state()
    if root._is_root is None:
        root._lazy_init()
    saved = [(group, group.post_forward_mesh_info) for m in modules for group in m._get_fsdp_state()._fsdp_param_groups]
    try:
        for m in modules:
            m.set_reshard_after_forward(False, recurse=False)  # the forward hooks keep what unshard() gathered
            m.unshard()
        yield
    finally:
        for m in modules:
            m.reshard()
        for group, info in saved:  # the reshard-after-forward setting of each group, as it was
            group.post_forward_mesh_info = info


@contextlib.contextmanager
def gathered_parameters(model: torch.nn.Module, accelerator) -> Iterator[None]:
    """Gather the full parameters of a sharded ``model`` once for the block (generation), then reshard.

    FSDP2: each ``fully_shard``-ed module is unsharded once and kept unsharded through every
    forward in the block. DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters`` over the model's
    parameters. Otherwise (one process, DDP, ZeRO-1/2) nothing happens. Every process must enter
    the block, as for any collective. Peak memory inside the block is that of the full model.

    Inside the block no forward is a collective, so processes may generate different numbers of
    tokens without waiting for each other: the hang TRL users met under ZeRO-3 when one process
    finished early (TRL issues 1051, 1497; there fixed with ``synced_gpus=True``) cannot happen.
    """
    modules = fsdp2_modules(model)
    if modules:
        with _fsdp2_gathered(modules):
            yield
        return
    if is_zero3(accelerator):
        with _zero3_gathered(model, accelerator):
            yield
        return
    yield


@contextlib.contextmanager
def _zero3_gathered(model: torch.nn.Module, accelerator) -> Iterator[None]:
    """ZeRO-3: ``GatheredParameters`` over ``model``, with the hooks of the engine that runs it set aside.

    The engine fetches and releases parameters in hooks around every submodule's forward. Once it
    has recorded a full forward/backward (after a few training steps: transformers' Trainer), those
    hooks also prefetch and release by that record while ``generate`` runs inside the block, and
    leave parameters half gathered ("in flight"): ``GatheredParameters`` then fails to partition them
    again. So the block starts from a released model (``empty_partition_cache``, DeepSpeed's call
    between steps; it frees, no collective), runs with the hooks removed, and puts them back after.
    """
    import deepspeed

    offload = _zero3_offload(model, accelerator)
    if offload is not None:
        offload.empty_partition_cache()
        offload._remove_module_hooks()
    try:
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
    finally:
        if offload is not None:
            offload.setup_zero_stage3_hooks()  # re-registered hooks start a new record (DeepSpeed invalidates the old)


def _zero3_offload(model: torch.nn.Module, accelerator):
    """The ZeRO-3 parameter manager (``DeepSpeedZeRoOffload``) of the engine that is ``model`` or wraps it, else None
    (a model no engine runs: its parameters have no hooks)."""
    from deepspeed import DeepSpeedEngine

    for engine in [model, *getattr(accelerator, "_models", [])]:
        if isinstance(engine, DeepSpeedEngine) and (engine is model or engine.module is model):
            manager = getattr(engine.optimizer, "parameter_offload", engine.optimizer)  # training engine / inference engine
            return manager if hasattr(manager, "setup_zero_stage3_hooks") else None
    return None


def prepare_reference(ref_model: torch.nn.Module, accelerator, shard: bool = True) -> torch.nn.Module:
    """Place the frozen reference model: sharded like the policy under FSDP2 (``shard=True``), DeepSpeed's
    inference engine under ZeRO-3, else moved to the accelerator's device (a full copy per process).

    Returns the model to use (FSDP2 shards it in place and returns it; DeepSpeed wraps it).
    """
    from accelerate.utils import DistributedType

    # No requires_grad_(False) here: a user's reference may share (trainable) parameters with the policy.
    if shard and accelerator.distributed_type == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, ref_model).eval()
    if shard and is_zero3(accelerator):
        engine = _deepspeed_inference(ref_model, accelerator)
        engine.eval()  # DeepSpeedEngine.eval returns None, not the engine
        return engine
    return ref_model.to(accelerator.device).eval()


def _deepspeed_inference(model: torch.nn.Module, accelerator):
    """A frozen model partitioned with the training run's ZeRO-3 settings (no optimizer)."""
    import copy

    import deepspeed

    def without_auto(d: dict) -> dict:  # "auto" values are filled in by accelerate's prepare, which the reference skips
        return {k: without_auto(v) if isinstance(v, dict) else v for k, v in d.items() if v != "auto"}

    config = without_auto(copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config))
    for key in ("optimizer", "scheduler", "train_batch_size"):
        config.pop(key, None)
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)  # no training: any valid sizes
    stage = config.get("zero_optimization", {})
    config["zero_optimization"] = {"stage": 3, "offload_param": stage.get("offload_param", {"device": "none"})}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine  # called as a whole: the engine's forward keeps ZeRO-3's parameter fetching in order


@contextlib.contextmanager
def module_state_dict(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, ``model.state_dict()`` is torch's own (keys are attribute paths).

    The value-head wrappers return the wrapped model's keys without their ``pretrained_model.``
    prefix (the saved-file format TRL defined). torch.distributed.checkpoint, which accelerate uses
    for FSDP checkpoints, resolves every key as an attribute path and fails on those keys.
    """
    if "state_dict" in vars(model):  # already overridden on the instance: leave it
        yield
        return
    model.state_dict = torch.nn.Module.state_dict.__get__(model)
    try:
        yield
    finally:
        del model.state_dict


def full_state_dict(model: torch.nn.Module, accelerator) -> dict | None:
    """The full (unsharded) ``model.state_dict()`` on CPU, on every process; None when ``model`` is not sharded.

    A collective under FSDP2 (each DTensor's ``full_tensor()``) and ZeRO-3 (``GatheredParameters``):
    every process must call it, in the same order. A tensor held under two keys (GPT-2's LM head is
    its input embedding) is gathered once and stays one tensor under both keys.
    """
    if fsdp2_modules(model):
        from torch.distributed.tensor import DTensor

        gathered: dict[int, torch.Tensor] = {}
        out = {}
        for key, value in model.state_dict().items():
            if id(value) not in gathered:
                full = value.full_tensor() if isinstance(value, DTensor) else value
                gathered[id(value)] = full.detach().cpu()
            out[key] = gathered[id(value)]
        return out
    if is_zero3(accelerator):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return None


def save_pretrained(model: torch.nn.Module, accelerator, save_directory: str) -> None:
    """``model.save_pretrained(save_directory)`` that also works when ``model`` is sharded. Call it on every process.

    Under FSDP2 and ZeRO-3 a parameter read on one process alone is a collective that the others
    never join (FSDP2's DTensors gather when saved), so a save on the main process only hangs.
    Here every process gathers the full state dict (`full_state_dict`), then the main process
    writes it. A value-head wrapper writes its head from the same gathered tensors. Unsharded, only
    the main process does anything, so a save called on the main process alone still works there.
    """
    state = full_state_dict(model, accelerator)
    if state is None:  # not sharded: the main process saves, the others return at once (no collective)
        if accelerator.is_main_process:
            model.save_pretrained(save_directory)
        return
    if accelerator.is_main_process:
        with _wrapper_state_from(model, state):
            model.save_pretrained(save_directory, state_dict=state)
    accelerator.wait_for_everyone()  # sharded: the folder is complete when any process returns


@contextlib.contextmanager
def _wrapper_state_from(model: torch.nn.Module, state: dict) -> Iterator[None]:
    """Inside the block, a value-head wrapper's ``wrapper_state_dict()`` (its head, saved beside the model)
    comes from ``state`` instead of its own (sharded) parameters."""
    modules = getattr(model, "supported_modules", None)
    if modules is None or "wrapper_state_dict" in vars(model):
        yield
        return
    prefixes = tuple(f"{name}." for name in modules)
    model.wrapper_state_dict = lambda: {k: v.contiguous() for k, v in state.items() if k.startswith(prefixes)}
    try:
        yield
    finally:
        del model.wrapper_state_dict


def fill_deepspeed_config(accelerator, micro_batch_size: int, gradient_accumulation_steps: int, max_grad_norm) -> None:
    """Under DeepSpeed, fill the config's "auto" (or missing) entries from the trainer's settings.

    The micro-batch size and accumulation count: accelerate fills them from a prepared dataloader;
    PPOTrainer often has none (the user passes the batches to ``step``), and its micro-batch is
    ``mini_batch_size`` in any case. ``gradient_clipping``: accelerate's "auto" means 1.0, which would
    clip every update although ``max_grad_norm`` is None (no clipping, the default); measured on the
    2-process test, that moved parameters by 3e-3 after 3 steps.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = float(max_grad_norm) if max_grad_norm is not None else 0.0  # 0: DeepSpeed does not clip
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
    if config.get("gradient_accumulation_steps", "auto") == "auto":
        config["gradient_accumulation_steps"] = gradient_accumulation_steps
    if config.get("train_batch_size") == "auto":
        config["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * accelerator.num_processes


def _zero3_partitioned(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters were partitioned at load time (transformers' ``zero.Init`` under ZeRO-3)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def create_reference(model: torch.nn.Module, num_shared_layers=None) -> torch.nn.Module:
    """The frozen reference copy of ``model`` (`rlft.models.create_reference_model`), ZeRO-3 aware.

    Under ZeRO-3 with ``zero3_init_flag`` transformers loads the policy already partitioned, so a
    deep copy would copy each process's empty partition. The reference is then loaded again from
    the policy's checkpoint (``name_or_path``), partitioned the same way; this is only right when
    the policy has not been trained yet, which holds when the trainer is built.
    """
    from ..models import create_reference_model

    if not _zero3_partitioned(model):
        return create_reference_model(model, num_shared_layers=num_shared_layers)
    if num_shared_layers is not None:
        raise ValueError(
            "num_shared_layers cannot be used under DeepSpeed ZeRO-3: the policy's parameters are partitioned "
            "inside its DeepSpeed engine and cannot be shared with the reference. Pass num_shared_layers=None."
        )
    lm = getattr(model, "pretrained_model", model)
    source = getattr(lm, "name_or_path", "") or getattr(getattr(lm, "config", None), "_name_or_path", "")
    if not source:
        raise ValueError(
            "Under DeepSpeed ZeRO-3 the policy's parameters are partitioned, so no reference copy can be made from it, "
            "and the policy does not say where it was loaded from. Pass ref_model=, loaded with from_pretrained from "
            "the same checkpoint as the policy."
        )
    return type(model).from_pretrained(source)

"""Sharded models (FSDP2, DeepSpeed ZeRO-3): gathering parameters for generation, and the reference model.

accelerate shards the policy in ``Accelerator.prepare`` (FSDP2: ``fully_shard`` on each block of the
wrap policy and on the root; ZeRO-3: the DeepSpeed engine). Two things PPO needs on top of that
live here, once for every trainer:

- `gathered_for_generation`: ``generate`` runs one forward per new token. Under FSDP2 every
  forward all-gathers each block and frees it again (``reshard_after_forward``), so a response of
  N tokens costs N all-gathers of the whole model. Inside this context the parameters are gathered
  once, kept through every token, and resharded on exit. Under ZeRO-3 the same holds with
  DeepSpeed's ``GatheredParameters``.
- `prepare_reference`: the frozen reference shares the policy's sharding under FSDP2 (no optimizer,
  so no optimizer state), or DeepSpeed's inference engine under ZeRO-3.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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
def gathered_for_generation(model: torch.nn.Module, accelerator) -> Iterator[None]:
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
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
        return
    yield


def prepare_reference(ref_model: torch.nn.Module, accelerator, shard: bool = True) -> torch.nn.Module:
    """Place the frozen reference model: sharded like the policy under FSDP2 (``shard=True``), DeepSpeed's
    inference engine under ZeRO-3, else moved to the accelerator's device (a full copy per process).

    Returns the model to use (FSDP2 shards it in place and returns it; DeepSpeed wraps it).
    """
    from accelerate.utils import DistributedType

    ref_model.requires_grad_(False)
    if shard and accelerator.distributed_type == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, ref_model).eval()
    if shard and is_zero3(accelerator):
        return _deepspeed_inference(ref_model, accelerator).eval()
    return ref_model.to(accelerator.device).eval()


def _deepspeed_inference(model: torch.nn.Module, accelerator):
    """A frozen model partitioned with the training run's ZeRO-3 settings (no optimizer)."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    stage = config.get("zero_optimization", {})
    config["zero_optimization"] = {"stage": 3, "offload_param": stage.get("offload_param", {"device": "none"})}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine.module


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

"""``--fsdp``, ``--deepspeed CONFIG`` and ``--accelerate_config FILE``: sharded training from the command line.

The options are read where they are parsed (`normalize_options`, before any dataclass is built), so
a wrong combination or a missing file stops the command in one line before anything loads. After
that the values are those of ``TrainingArguments`` (``fsdp=True`` with an ``fsdp_config`` dict, or
``deepspeed=<json file>``) for every command: sft, reward and dpo hand them to transformers, and
ppo builds accelerate's plugins from them (`ppo_accelerator_kwargs`). Once the trainer exists,
`announce` prints the sharding in use and fails when the launch did not give it (one process, or
CPU processes: see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._args import CLIError

#: ``--fsdp`` words (as transformers' ``fsdp`` option): how each sets the FSDP2 config.
FSDP_WORDS = {"full_shard": {"reshard_after_forward": True}, "shard_grad_op": {"reshard_after_forward": False},
              "offload": {"cpu_offload": True}, "auto_wrap": {}}
#: ``fsdp_config`` keys rlft reads (transformers' names; an accelerate file's ``fsdp_`` prefix is dropped).
FSDP_KEYS = {"version", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "reshard_after_forward", "state_dict_type",
             "cpu_offload", "cpu_ram_efficient_loading", "activation_checkpointing", "min_num_params"}
#: accelerate config keys that name the launch, not the sharding: the launcher's business, read nowhere here.
LAUNCH_KEYS = {"compute_environment", "distributed_type", "num_machines", "machine_rank", "num_processes",
               "main_training_function", "rdzv_backend", "same_network", "use_cpu", "main_process_ip",
               "main_process_port", "gpu_ids", "downcast_bf16", "tpu_env", "tpu_use_cluster", "tpu_use_sudo",
               "enable_cpu_affinity", "debug", "dynamo_config"}
EXAMPLES = "examples/configs/accelerate/"


@dataclass
class ShardingOptions:
    """Sharded training across the launched processes (sft, reward, dpo: --fsdp / --deepspeed are TrainingArguments')."""

    accelerate_config: str | None = None
    """An accelerate config file (FSDP or DEEPSPEED, e.g. examples/configs/accelerate/fsdp2.yaml): its sharding and mixed-precision settings are used; the launcher still sets the processes."""


@dataclass
class PPOShardingOptions(ShardingOptions):
    """Sharded PPO: the policy, its value head and the reference across the launched processes."""

    fsdp: str | None = None
    """Shard with FSDP2: --fsdp alone means full_shard; add 'offload' for CPU offload ('full_shard offload'), or shard_grad_op."""
    fsdp_config: dict | None = None
    """FSDP2 settings as JSON (transformers' fsdp_config keys: transformer_layer_cls_to_wrap, state_dict_type, ...)."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config (ZeRO-2 or ZeRO-3; "auto" values are filled from the PPO settings)."""


def rank() -> int:
    """This process's rank in a multi-process launch (torchrun and accelerate launch set RANK); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """False on the non-main processes of a multi-process launch."""
    return rank() == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------- parse time
def normalize_options(values: dict) -> None:
    """Check the sharding options in the parsed ``values`` and rewrite them to ``fsdp=True`` + ``fsdp_config``
    or ``deepspeed``; CLIError (one line, with the fix) on a wrong combination or a missing or bad file."""
    if "accelerate_config" not in values:
        return  # a command without sharding options (bon, ddpo, demo)
    fsdp, deepspeed, accelerate_config = values.get("fsdp"), values.get("deepspeed"), values.get("accelerate_config")
    if accelerate_config and (fsdp or deepspeed):
        given = "--fsdp" if fsdp else "--deepspeed"
        raise CLIError(f"--accelerate_config {accelerate_config} and {given} both choose the sharding; keep one of them.")
    if fsdp and deepspeed:
        raise CLIError("--fsdp and --deepspeed both choose the sharding; keep one (FSDP2: --fsdp; DeepSpeed ZeRO: --deepspeed CONFIG).")
    if accelerate_config:
        values.update(_from_accelerate_file(accelerate_config, values))
        fsdp, deepspeed = values.get("fsdp"), values.get("deepspeed")
    if fsdp:
        values["fsdp"], values["fsdp_config"] = True, _fsdp_config(fsdp, values.get("fsdp_config"))
    elif values.get("fsdp_config") and "fsdp" in values:
        raise CLIError("--fsdp_config is set but --fsdp is not: add --fsdp to shard with FSDP2, or drop --fsdp_config.")
    if deepspeed:
        values["deepspeed"] = _deepspeed_file(deepspeed)
    if (fsdp or deepspeed) and values.get("num_shared_layers") is not None:
        raise CLIError("--num_shared_layers cannot be combined with sharding: the shared blocks would be sharded twice "
                       "(policy and reference). Drop --num_shared_layers (the reference is then a sharded frozen copy).")


def _fsdp_config(fsdp, given) -> dict:
    """``--fsdp WORDS`` and ``--fsdp_config`` as one FSDP2 config dict (transformers' key names)."""
    if isinstance(given, str):  # TrainingArguments' fsdp_config may be a JSON file
        given = _json_file(given, "--fsdp_config")
    config = {k.removeprefix("fsdp_"): v for k, v in (given or {}).items()}
    unknown = sorted(set(config) - FSDP_KEYS)
    if unknown:
        raise CLIError(f"--fsdp_config: unknown key(s) {unknown}; rlft reads {sorted(FSDP_KEYS)}.")
    words = fsdp.split() if isinstance(fsdp, str) else []
    bad = [w for w in words if w not in FSDP_WORDS]
    if bad:
        raise CLIError(f"--fsdp {fsdp}: unknown word(s) {bad}; use full_shard (the default) or shard_grad_op, "
                       "optionally with offload (e.g. --fsdp 'full_shard offload').")
    if "full_shard" in words and "shard_grad_op" in words:
        raise CLIError("--fsdp: full_shard and shard_grad_op contradict each other; choose one.")
    for word in words:
        for key, value in FSDP_WORDS[word].items():
            config.setdefault(key, value)
    if int(config.setdefault("version", 2)) != 2:
        raise CLIError(f"FSDP version {config['version']}: rlft's sharded paths are FSDP2's; set version 2 "
                       "(fsdp_version: 2 in an accelerate file).")
    config["version"] = 2
    return config


def _deepspeed_file(path) -> str:
    if isinstance(path, dict):
        return path  # TrainingArguments also takes the settings themselves
    _json_file(path, "--deepspeed", example=f"{EXAMPLES}ds_zero3.json is a ZeRO-3 config to start from")
    if importlib.util.find_spec("deepspeed") is None:
        raise CLIError("--deepspeed needs DeepSpeed, which is not installed: pip install deepspeed.")
    return str(path)


def _json_file(path: str, option: str, example: str = "") -> dict:
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"{option} {path}: no such file" + (f"; {example}." if example else "."))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CLIError(f"{option} {path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(data, dict):
        raise CLIError(f"{option} {path}: expected a JSON object of settings, got {type(data).__name__}.")
    return data


def _from_accelerate_file(path: str, values: dict) -> dict:
    """The option values an accelerate config file stands for: fsdp + fsdp_config, or deepspeed; and mixed precision."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--accelerate_config {path}: no such file; write one with `accelerate config`, or start from "
                       f"{EXAMPLES}fsdp2.yaml or {EXAMPLES}zero3.yaml.")
    try:
        data = json.loads(file.read_text()) if file.suffix == ".json" else yaml.safe_load(file.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CLIError(f"--accelerate_config {path}: not a YAML or JSON file ({' '.join(str(err).split())[:200]}).") from None
    if not isinstance(data, dict):
        raise CLIError(f"--accelerate_config {path}: expected accelerate's settings (a mapping), got {type(data).__name__}.")
    kind = str(data.get("distributed_type", "")).upper()
    out: dict[str, Any] = {}
    if kind == "FSDP":
        config = dict(data.get("fsdp_config") or {})
        if "fsdp_offload_params" in config:  # accelerate's name for transformers' cpu_offload
            config["cpu_offload"] = config.pop("fsdp_offload_params")
        out.update(fsdp="full_shard", fsdp_config=config)
        known = LAUNCH_KEYS | {"fsdp_config", "mixed_precision"}
    elif kind == "DEEPSPEED":
        ds = dict(data.get("deepspeed_config") or {})
        if not ds.get("deepspeed_config_file"):
            raise CLIError(f"--accelerate_config {path}: rlft reads DeepSpeed settings from a JSON file; set "
                           f"deepspeed_config.deepspeed_config_file (as {EXAMPLES}zero3.yaml does), or pass --deepspeed CONFIG.")
        out["deepspeed"] = ds["deepspeed_config_file"]
        known = LAUNCH_KEYS | {"deepspeed_config", "mixed_precision"}
    else:
        raise CLIError(f"--accelerate_config {path}: distributed_type is {kind or 'missing'}, which shards nothing; "
                       "give an FSDP or DEEPSPEED file (or run plain data parallel without --accelerate_config).")
    unknown = sorted(set(data) - known)
    if unknown:
        raise CLIError(f"--accelerate_config {path}: rlft does not read {unknown}; remove them or launch with "
                       "`accelerate launch --config_file` instead.")
    precision = str(data.get("mixed_precision") or "no").lower()
    if precision not in ("no", "bf16", "fp16"):
        raise CLIError(f"--accelerate_config {path}: mixed_precision {precision!r}; rlft takes no, bf16 or fp16.")
    if precision != "no":
        if precision in values:  # TrainingArguments: bf16 / fp16 flags
            out[precision] = True
        elif "accelerator_kwargs" in values:  # PPO: accelerate's own setting
            out["accelerator_kwargs"] = {**(values.get("accelerator_kwargs") or {}), "mixed_precision": precision}
    return out


@contextlib.contextmanager
def outside_zero3_init() -> Iterator[None]:
    """Inside the block transformers builds models whole, even after ``TrainingArguments(deepspeed=<ZeRO-3 file>)``.

    Those arguments make every later ``from_config`` / ``from_pretrained`` partition the model while it
    is built (``zero.Init``): right for the trainer's model, wrong for the tiny model that ``--tiny``
    builds and saves to a folder before anything loads (its saved weights would be empty partitions).
    transformers reads that setting from a module-level reference, which is restored on leaving.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


# ---------------------------------------------------------------------- PPO: accelerate plugins
def ppo_accelerator_kwargs(options: PPOShardingOptions, model) -> dict:
    """accelerate's ``fsdp_plugin`` / ``deepspeed_plugin`` for PPOTrainer from the normalized options ({} without sharding).

    FSDP2 wraps each of the language model's blocks (its ``_no_split_modules`` unless
    ``transformer_layer_cls_to_wrap`` says otherwise) and checkpoints sharded (reshardable on load).
    """
    if options.fsdp:
        from accelerate import FullyShardedDataParallelPlugin

        config = dict(options.fsdp_config or {})
        lm = getattr(model, "pretrained_model", model)
        lm = getattr(lm, "get_base_model", lambda: lm)()  # a peft model: the transformers model inside
        blocks = config.get("transformer_layer_cls_to_wrap") or list(getattr(lm, "_no_split_modules", None) or [])
        if isinstance(blocks, str):
            blocks = [b.strip() for b in blocks.split(",")]
        if not blocks and str(config.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")).upper() == "TRANSFORMER_BASED_WRAP":
            raise CLIError(f"--fsdp: {type(lm).__name__} names no block class to shard one by one; set "
                           "--fsdp_config '{\"transformer_layer_cls_to_wrap\": [\"<its block class>\"]}'.")
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy=str(config.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")).lower(),
            transformer_cls_names_to_wrap=blocks, reshard_after_forward=_bool(config.get("reshard_after_forward", True)),
            state_dict_type=config.get("state_dict_type", "SHARDED_STATE_DICT"),
            cpu_offload=_bool(config.get("cpu_offload", False)),
            cpu_ram_efficient_loading=_bool(config.get("cpu_ram_efficient_loading", False)),
            activation_checkpointing=_bool(config.get("activation_checkpointing", False)),
            **({"min_num_params": int(config["min_num_params"])} if config.get("min_num_params") else {}),
        )
        return {"fsdp_plugin": plugin}
    if options.deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=options.deepspeed)}
    return {}


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------- after the trainer exists
def requested(fsdp, deepspeed) -> str | None:
    """"FSDP2", "DeepSpeed" or None: what the options asked for."""
    return "FSDP2" if fsdp else "DeepSpeed" if deepspeed else None


def _launch_hint(command: str) -> str:
    return (f"start several processes: accelerate launch --num_processes N -m rlft.cli {command} ... "
            "(or torchrun --nproc_per_node N -m rlft.cli ...)")


def check_launch(command: str, wanted: str | None) -> None:
    """Before anything loads: CLIError when sharding is asked for in a single process (nothing to shard across)."""
    if wanted is not None and world_size() == 1:
        raise CLIError(f"{wanted} was asked for but accelerate runs none (one process): {_launch_hint(command)}.")


def announce(command: str, accelerator, wanted: str | None) -> str:
    """Print (main process) ``rlft <command>: sharding: <what is in use>``; CLIError when ``wanted`` is not in effect.

    accelerate takes FSDP or DeepSpeed only over several processes on accelerator devices: on one
    process, or on CPU processes, it would silently train unsharded (see docs/distributed.md).
    """
    from accelerate.utils import DistributedType

    from ..trainer._sharding import sharding_summary

    summary = sharding_summary(accelerator)
    expected = {"FSDP2": DistributedType.FSDP, "DeepSpeed": DistributedType.DEEPSPEED}.get(wanted)
    if expected is not None and accelerator.distributed_type != expected:
        why = _launch_hint(command) if accelerator.num_processes == 1 else (
            "accelerate shards only on GPUs (on CPU processes it runs DDP); drop the sharding option there")
        raise CLIError(f"{wanted} was asked for but accelerate runs {summary}: {why}.")
    if (wanted is not None or accelerator.num_processes > 1) and accelerator.is_main_process:
        print(f"rlft {command}: sharding: {summary}", flush=True)
    return summary

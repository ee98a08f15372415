"""``rlft <command> ...`` on each process of ``python -m torch.distributed.run --nproc_per_node 2 _cli_sharded_run.py <command> ...``,
with accelerate put on its FSDP2 or DeepSpeed path on CPU processes (the shims of _sharded_run.py; accelerate
1.16 shards only on GPUs and would run DDP here). DeepSpeed needs ``DS_ACCELERATOR=cpu`` in the environment.

The shim is applied where accelerate's ``Accelerator`` is built with an FSDP or DeepSpeed plugin (PPOTrainer,
or transformers' Trainer), with that very plugin: what the command line built from ``--fsdp`` or
``--deepspeed CONFIG`` is what runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))


def _shim_sharding_plugins() -> None:
    import accelerate
    from _sharded_run import use_deepspeed_plugin_on_cpu, use_fsdp2_on_cpu

    original = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        if kwargs.get("fsdp_plugin") is not None:
            use_fsdp2_on_cpu(kwargs["fsdp_plugin"])
        plugin = kwargs.pop("deepspeed_plugin", None) or kwargs.pop("deepspeed_plugins", None)
        if plugin is not None:  # accelerate then takes the plugin from its shared state (a second Accelerator may not pass one)
            use_deepspeed_plugin_on_cpu(plugin)
        original(self, *args, **kwargs)

    accelerate.Accelerator.__init__ = init


def main() -> int:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _shim_sharding_plugins()
    if "--deepspeed" in sys.argv:  # on GPUs accelerate does this when TrainingArguments(deepspeed=...) sets up its devices
        from _sharded_run import init_deepspeed_on_cpu

        init_deepspeed_on_cpu()
    from rlft.cli import main as rlft_main

    code = rlft_main(sys.argv[1:])
    import torch.distributed as dist

    if code == 0 and dist.is_available() and dist.is_initialized():  # a failed process leaves at once: torchrun stops the others
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gloo's threads sometimes abort in the interpreter's teardown (see _sharded_run._finish)


if __name__ == "__main__":
    main()

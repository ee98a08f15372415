"""``rlft <command> ...`` on each process of ``python -m torch.distributed.run --nproc_per_node 2 _cli_sharded_run.py <command> ...``,
with accelerate put on its FSDP2 path on CPU processes (the shim of _sharded_run.py; accelerate 1.16 shards
only on GPUs and would run DDP here).

The shim is applied where accelerate's ``Accelerator`` is built with an FSDP plugin (PPOTrainer, or
transformers' Trainer), with that very plugin: what the command line built from ``--fsdp`` is what runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))


def _shim_fsdp_plugins() -> None:
    import accelerate

    from _sharded_run import use_fsdp2_on_cpu

    original = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        if kwargs.get("fsdp_plugin") is not None:
            use_fsdp2_on_cpu(kwargs["fsdp_plugin"])
        original(self, *args, **kwargs)

    accelerate.Accelerator.__init__ = init


def main() -> int:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _shim_fsdp_plugins()
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

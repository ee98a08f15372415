"""``rlft <command> ...`` on each process of ``python -m torch.distributed.run --nproc_per_node 2 _cli_sharded_run.py <command> ...``,
with accelerate put on its FSDP2 path on CPU processes (the shim of _sharded_run.py; accelerate 1.16 shards
only on GPUs and would run DDP here).

The shim is applied where accelerate's ``Accelerator`` is built with an FSDP plugin (PPOTrainer, or
transformers' Trainer), with that very plugin: what the command line built from ``--fsdp`` is what runs.
Until ``PPOTrainer._save_pretrained`` gathers on every process (docs/distributed.md), it is replaced here
by the version proposed for it, which calls ``rlft.trainer._sharding.save_pretrained``.
"""

from __future__ import annotations

import inspect
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


def _save_pretrained_gathered() -> str:
    """'trainer' when PPOTrainer saves sharded models itself, else 'patched' (the proposed replacement is installed)."""
    from rlft.trainer import _sharding
    from rlft.trainer.ppo_trainer import PPOTrainer

    if "_sharding.save_pretrained" in inspect.getsource(PPOTrainer._save_pretrained):
        return "trainer"

    def _save_pretrained(self, save_directory: str) -> None:
        # every process: a sharded model is gathered first (a collective), then the main process writes
        _sharding.save_pretrained(self.accelerator.unwrap_model(self.model), self.accelerator, save_directory)
        if self.accelerator.is_main_process:
            self.tokenizer.save_pretrained(save_directory)
            self.create_model_card(save_directory)

    PPOTrainer._save_pretrained = _save_pretrained
    return "patched"


def main() -> int:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _shim_fsdp_plugins()
    how = _save_pretrained_gathered()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"save_pretrained: {how}", flush=True)
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

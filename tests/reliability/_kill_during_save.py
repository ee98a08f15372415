"""Child process of test_atomic_save.py: train, checkpoint, then get SIGKILLed in the middle of a save.

argv: model_dir run_dir kill_point out_dir
kill_point: "weights" (half-written policy file), "marker" (all files written, no marker yet),
"rename" (marked complete, not yet renamed), "overwrite" (between the two renames replacing an
existing checkpoint of the same step), or "loop" (save again and again until killed from outside).
"""

import os
import signal
import sys
import warnings

warnings.simplefilter("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from safetensors.torch import save_file

import rlft.utils.checkpoint as ckpt
from tests.reliability._ppo_helpers import make_ppo, trainable


def die(*_args, **_kwargs):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    model_dir, run_dir, kill_point, out_dir = sys.argv[1:5]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = make_ppo(lambda arch: model_dir, tokenizer, scheduler=False)
    g = torch.Generator().manual_seed(0)
    qs = [torch.randint(5, 900, (4,), generator=g) for _ in range(4)]
    rs = [torch.randint(5, 900, (3,), generator=g) for _ in range(4)]
    trainer.step(qs, rs, [1.0, 0.0, 1.0, 0.5])
    trainer.save_checkpoint(run_dir)
    save_file(trainable(trainer), os.path.join(out_dir, "expected.safetensors"))
    print("saved", trainer.current_step, flush=True)
    if kill_point != "overwrite":
        trainer.step(qs, rs, [0.0, 1.0, 0.5, 1.0])

    if kill_point == "weights":
        import safetensors.torch

        real = safetensors.torch.save_file

        def half_then_die(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            die()

        safetensors.torch.save_file = half_then_die
    elif kill_point == "marker":
        ckpt.write_complete_marker = die
    elif kill_point in ("rename", "overwrite"):
        real_replace = os.replace

        def replace_then_die(src, dst):
            # Die just before the finished folder is renamed into place; when overwriting the same step,
            # the existing checkpoint has already been moved aside by then.
            if str(src).endswith(".incomplete"):
                die()
            real_replace(src, dst)

        ckpt.os.replace = replace_then_die
    elif kill_point == "loop":
        while True:
            trainer.step(qs, rs, [0.0, 1.0, 0.5, 1.0])
            trainer.save_checkpoint(run_dir)
            print("saved", trainer.current_step, flush=True)
    trainer.save_checkpoint(run_dir)
    print("survived", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()

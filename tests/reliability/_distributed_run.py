"""Training run shared by the multi-process test: launched on 2 CPU processes (gloo) with
``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 _distributed_run.py MODE MODEL_DIR OUT``,
or called in-process (one process) with the same global batch. Writes parameters and stats to OUT.

MODE "ppo": 3 PPOTrainer steps on a global batch of 8 (per process: 8 / world), with a NaN score on the
last sample at the second step (only the last process sees it), then save_checkpoint.
MODE "sft": 3 SFTTrainer optimizer steps with a global batch of 4.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch

GLOBAL_BATCH = 8
STEPS = 3


def _global_batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    queries = [torch.randint(5, 900, (2 + (i * 3 + step) % 5,), generator=g) for i in range(GLOBAL_BATCH)]
    responses = [torch.randint(5, 900, (5,), generator=g) for _ in range(GLOBAL_BATCH)]  # equal token counts per process
    scores = [float((i * 7 + step) % 5) / 2 for i in range(GLOBAL_BATCH)]
    if step == 1:
        scores[-1] = float("nan")  # lands on the last process only: every process must skip together
    return queries, responses, scores


def run_ppo(model_dir: str, out: Path) -> None:
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    state = PartialState(cpu=True)
    world, rank = state.num_processes, state.process_index
    per_process = GLOBAL_BATCH // world
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)  # same value-head init everywhere
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    config = PPOConfig(batch_size=per_process, mini_batch_size=per_process, ppo_epochs=2, learning_rate=1e-3,
                       accelerator_kwargs={"cpu": True}, seed=0)
    trainer = PPOTrainer(config, model, None, tok)
    history = []
    for step in range(STEPS):
        q, r, s = _global_batch(step)
        mine = slice(rank * per_process, (rank + 1) * per_process)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = trainer.step(q[mine], r[mine], s[mine])
        history.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items() if not k.startswith("time/")})
    ckpt = trainer.save_checkpoint(out / "run")
    if trainer.accelerator.is_main_process:
        from safetensors.torch import save_file

        policy = trainer.accelerator.unwrap_model(trainer.model)
        save_file({n: p.detach().contiguous() for n, p in policy.named_parameters()}, str(out / "params.safetensors"))
        (out / "stats.json").write_text(json.dumps({"world": world, "history": history, "checkpoint": str(ckpt)}))


def run_sft(model_dir: str, out: Path) -> None:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from rlft import SFTTrainer
    from rlft.trainer.utils import disable_dropout_in_model

    world = PartialState(cpu=True).num_processes
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    texts = ["the value is returned to the caller.", "return a new list of the items.", "the file is closed.",
             "a new object from the list.", "the default is to use the file.", "if the path is not a string."] * 2
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout_in_model(model)  # dropout masks would differ between one and two processes
    args = TrainingArguments(output_dir=str(out / "sft"), report_to=[], use_cpu=True, max_steps=STEPS, save_strategy="no",
                             per_device_train_batch_size=4 // world, learning_rate=5e-3, logging_steps=1,
                             disable_tqdm=True, seed=0, data_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                             processing_class=tok, dataset_text_field="text", max_seq_length=16)
        result = trainer.train()
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in trainer.model.named_parameters()}, str(out / "params.safetensors"))
        (out / "stats.json").write_text(json.dumps({"world": world, "loss": result.training_loss}))


def main() -> None:
    mode, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    {"ppo": run_ppo, "sft": run_sft}[mode](model_dir, out)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

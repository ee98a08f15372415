"""``rlft sft`` and ``rlft ppo`` with ``--fsdp`` and ``--deepspeed CONFIG`` on 2 CPU processes (gloo), accelerate on
its FSDP2 or DeepSpeed path through the tests' shim (_cli_sharded_run.py): the sharding line is printed once, only
the main process writes the run directory, the processes train on different prompts, and ``model/`` holds the
full trained model (for PPO: gathered on every process by ``rlft.trainer._sharding.save_pretrained``, not a hang).
Under DeepSpeed, ``model/`` is compared tensor by tensor with DeepSpeed's own consolidation of the run's last
checkpoint (``zero_to_fp32``: the fp32 master weights of the optimizer partitions), an independent path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import _cli_sharded_run

SCRIPT = Path(_cli_sharded_run.__file__)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")]


#: The ready DeepSpeed files of examples/configs (ZeRO-2 and ZeRO-3, "auto" values filled by rlft or transformers).
DS_CONFIGS = {2: "examples/configs/accelerate/ds_zero2.json", 3: "examples/configs/accelerate/ds_zero3.json"}


def launch(*argv: str, nproc: int = 2, timeout: int = 170, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port, str(SCRIPT), *argv]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if ": error: " in line]  # rlft's one-line errors
    assert proc.returncode == 0, "\n".join(errors[:4]) + "\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def launch_sharded(command: str, sharding: str, run: Path) -> subprocess.CompletedProcess:
    """``rlft <command> --tiny`` on 2 processes with ``sharding`` ("fsdp", "zero2" or "zero3": the ready
    DeepSpeed file of examples/configs) into ``run``; asserts the sharding line is printed once."""
    if sharding == "fsdp":
        option, summary = ["--fsdp"], "FSDP2 over 2 processes"
    else:
        pytest.importorskip("deepspeed", reason="DeepSpeed is optional: DS_BUILD_OPS=0 pip install deepspeed")
        stage = int(sharding[-1])
        option, summary = ["--deepspeed", DS_CONFIGS[stage]], f"DeepSpeed ZeRO-{stage} over 2 processes"
    proc = launch(command, "--tiny", *option, "--output_dir", str(run), "--no_plots", "--num_samples", "2",
                  env={"DS_ACCELERATOR": "cpu"})
    assert proc.stdout.count(f"rlft {command}: sharding: {summary}") == 1, proc.stdout
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_rlft_sft_fsdp_two_processes(tmp_path):
    run = tmp_path / "sft"
    proc = launch_sharded("sft", "fsdp", run)
    assert proc.stdout.count("rlft sft: done.") == 1  # the summary: main process only
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))  # each step logged once, not once per process
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert len((run / "samples" / "after.jsonl").read_text().splitlines()) == 2  # generated with the gathered model
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run / "model")  # a full model (transformers' FULL_STATE_DICT save)
    assert all(type(p).__name__ == "Parameter" for p in trained.parameters())
    config = (run / "config.yaml").read_text()
    assert "fsdp: true" in config and "version: 2" in config  # --resume continues sharded


def test_rlft_ppo_fsdp_two_processes(tmp_path):
    from safetensors.torch import load_file

    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.cli._load import tiny_model_folder

    run = tmp_path / "ppo"
    proc = launch_sharded("ppo", "fsdp", run)
    print(proc.stdout.splitlines()[0])  # how PPOTrainer saved: itself, or through the proposed replacement
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["ppo/nonfinite/skipped"] == 0 for r in rows)
    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts and (ckpts[-1] / "pytorch_model_fsdp_0").is_dir()  # sharded checkpoints, as in test_sharded.py

    # model/: written from the full parameters, gathered on both processes (no hang), value head included
    trained = AutoModelForCausalLMWithValueHead.from_pretrained(str(run / "model"))
    head = load_file(str(run / "model" / "value_head.safetensors"))
    hidden = trained.pretrained_model.config.hidden_size
    assert head["v_head.summary.weight"].shape == (1, hidden)  # the whole head, not one process's shard
    assert torch.equal(head["v_head.summary.weight"], trained.v_head.summary.weight)
    start = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_folder("tiny-gpt2"))
    moved = max(float((a - b).abs().max()) for a, b in zip(trained.pretrained_model.parameters(), start.pretrained_model.parameters()))
    assert moved > 0  # trained
    lm = trained.pretrained_model
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # the tied head loads tied


def deepspeed_weights(checkpoint: Path, tag: str | None = None) -> dict:
    """DeepSpeed's consolidation of a ZeRO checkpoint (fp32 weights gathered from every process's partition)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag)


def assert_same_parameters(model: torch.nn.Module, reference: dict) -> None:
    params = dict(model.named_parameters())
    assert set(params) <= set(reference), sorted(set(params) - set(reference))[:5]
    differ = [n for n, p in params.items() if not torch.equal(p.detach(), reference[n].to(p.dtype))]
    assert not differ, differ[:5]


@pytest.mark.parametrize("stage", [2, 3])
def test_rlft_ppo_deepspeed_two_processes(tmp_path, stage):
    """``rlft ppo --tiny --deepspeed ds_zero<stage>.json``: the value-head model in model/ is exactly the trained one."""
    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.cli._load import tiny_model_folder

    run = tmp_path / "ppo"
    proc = launch_sharded("ppo", f"zero{stage}", run)
    assert proc.stdout.count("rlft ppo: done.") == 1  # the summary: main process only
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # each step logged once, not once per process
    assert all(r["ppo/nonfinite/skipped"] == 0 for r in rows)
    assert len((run / "samples" / "after.jsonl").read_text().splitlines()) == 2
    ckpts = sorted((run / "checkpoints").iterdir())
    last = ckpts[-1]
    assert last.name == "checkpoint-4" and (last / "pytorch_model").is_dir()  # the engine's own files

    trained = AutoModelForCausalLMWithValueHead.from_pretrained(str(run / "model"))
    assert_same_parameters(trained, deepspeed_weights(last, "pytorch_model"))  # value head included
    start = AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model_folder("tiny-gpt2"))
    moved = max(float((a - b).abs().max()) for a, b in zip(trained.pretrained_model.parameters(), start.pretrained_model.parameters()))
    assert moved > 0  # trained
    lm = trained.pretrained_model
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # the tied head loads tied
    assert "deepspeed: examples/configs/accelerate/ds_zero" in (run / "config.yaml").read_text()  # --resume continues sharded


@pytest.mark.parametrize("stage", [2, 3])
def test_rlft_sft_deepspeed_two_processes(tmp_path, stage):
    """``rlft sft --tiny --deepspeed ds_zero<stage>.json`` (transformers' DeepSpeed path): model/ is the trained model."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "sft"
    proc = launch_sharded("sft", f"zero{stage}", run)
    assert proc.stdout.count("rlft sft: done.") == 1
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert len((run / "samples" / "after.jsonl").read_text().splitlines()) == 2
    last = run / "checkpoints" / "checkpoint-6"
    assert (last / "global_step6").is_dir()  # transformers' DeepSpeed checkpoint

    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    assert all(type(p).__name__ == "Parameter" and p.numel() > 0 for p in trained.parameters())  # whole, not partitions
    assert_same_parameters(trained, deepspeed_weights(last))


@pytest.mark.parametrize("sharding", [
    "fsdp", "zero2", "zero3",
])
def test_rlft_reward_sharded_two_processes(tmp_path, sharding):
    """``rlft reward --tiny`` sharded: the sample pairs are scored with the gathered model on every process
    (ZeRO-3's partitions cannot run a forward outside the engine), and the scores after training are those of
    ``model/`` scored here, in one process; under DeepSpeed ``model/`` is zero_to_fp32 of the last checkpoint."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "reward"
    launch_sharded("reward", sharding, run)
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, 7))
    before = [json.loads(x) for x in (run / "samples" / "before.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (run / "samples" / "after.jsonl").read_text().splitlines()]
    assert len(before) == len(after) == 2 and before != after  # scored before and after training

    trained = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model", padding_side="right")
    with torch.no_grad():
        for row in after:
            enc = tokenizer([row["chosen"], row["rejected"]], return_tensors="pt", padding=True)
            scores = trained(**enc).logits[:, 0].tolist()
            assert scores == pytest.approx([row["score_chosen"], row["score_rejected"]], abs=1e-5)
    if sharding != "fsdp":
        assert_same_parameters(trained, deepspeed_weights(run / "checkpoints" / "checkpoint-6"))


@pytest.mark.parametrize("sharding", [
    "fsdp", "zero2", "zero3",
])
def test_rlft_dpo_sharded_two_processes(tmp_path, sharding):
    """``rlft dpo --tiny`` sharded (the reference a frozen copy of the policy): 6 steps logged once, samples
    generated after training, ``model/`` loadable whole; under DeepSpeed it is zero_to_fp32 of the last checkpoint."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "dpo"
    launch_sharded("dpo", sharding, run)
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert len((run / "samples" / "after.jsonl").read_text().splitlines()) == 2
    trained = AutoModelForCausalLM.from_pretrained(run / "model")
    assert all(p.numel() > 0 for p in trained.parameters())
    if sharding != "fsdp":
        assert_same_parameters(trained, deepspeed_weights(run / "checkpoints" / "checkpoint-6"))

"""Two CPU processes (gloo, launched with torch.distributed.run; accelerate picks them up) give the
same parameters after a few steps as one process with the same global batch, for PPOTrainer.step
and SFTTrainer; PPO stats are gathered from both processes, and a NaN on one process skips the
step on both."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from . import _distributed_run

SCRIPT = Path(_distributed_run.__file__)
ROOT = Path(__file__).resolve().parents[2]
#: Two processes sum gradients and statistics in another order than one: float32 rounding only.
ATOL = 2e-5
#: Except GPT-2's attention key bias: its true gradient is 0 (softmax ignores a shift shared by all keys),
#: so Adam divides float noise by float noise and moves it by up to a fraction of the learning rate.
KEY_BIAS, KEY_BIAS_ATOL = "attn.c_attn.bias", 2e-4


def launch(mode, model_dir, out):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           str(SCRIPT), mode, model_dir, str(out)]
    t = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return time.time() - t


def single(mode, model_dir, out):
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        getattr(_distributed_run, f"run_{mode}")(model_dir, out)
    finally:
        torch.set_num_threads(threads)


def compare_params(a_dir, b_dir):
    a, b = load_file(str(a_dir / "params.safetensors")), load_file(str(b_dir / "params.safetensors"))
    assert a.keys() == b.keys()
    key_bias = max((float((a[k] - b[k]).abs().max()) for k in a if k.endswith(KEY_BIAS)), default=0.0)
    assert key_bias < KEY_BIAS_ATOL
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith(KEY_BIAS))


@pytest.mark.slow
def test_ppo_two_processes_match_one(model_path, tmp_path):
    model_dir = model_path("gpt2")
    wall = launch("ppo", model_dir, tmp_path / "two")
    single("ppo", model_dir, tmp_path / "one")
    diff = compare_params(tmp_path / "two", tmp_path / "one")
    print(f"PPO 2 processes: {wall:.1f} s, max |param difference| vs 1 process = {diff:.2e}")
    assert diff < ATOL

    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    one = json.loads((tmp_path / "one" / "stats.json").read_text())
    assert (two["world"], one["world"]) == (2, 1)
    for s2, s1 in zip(two["history"], one["history"]):
        assert s2["ppo/nonfinite/skipped"] == s1["ppo/nonfinite/skipped"]
        if s1["ppo/nonfinite/skipped"]:
            continue
        # gathered, not averaged per process: distributions hold all 8 samples, std is the global std
        assert len(s2["objective/kl_dist"]) == len(s1["objective/kl_dist"])
        assert len(s2["tokens/queries_dist"]) == 8
        np.testing.assert_array_equal(s2["tokens/queries_dist"], s1["tokens/queries_dist"])
        for key in ("ppo/mean_scores", "ppo/std_scores", "objective/kl", "ppo/loss/total", "ppo/policy/ratio",
                    "objective/kl_coef", "tokens/queries_len_std", "objective/kl_dist"):
            a, b = np.asarray(s2[key], dtype=float), np.asarray(s1[key], dtype=float)
            assert a.shape == b.shape, key
            if a.ndim:  # per-token vectors come in process order, not minibatch order
                a, b = np.sort(a, axis=None), np.sort(b, axis=None)
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=key)
    skipped = two["history"][1]
    assert skipped["ppo/nonfinite/skipped"] == 1.0 and math.isnan(skipped["objective/kl"])
    # the checkpoint written by two processes loads into one (with a warning about the world size)
    ckpt = Path(two["checkpoint"])
    assert ckpt.name == "checkpoint-3" and json.loads((ckpt / "ppo_trainer_state.json").read_text())["world_size"] == 2
    from transformers import AutoTokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=8), AutoModelForCausalLMWithValueHead.from_pretrained(model_dir),
                         None, tok)
    with pytest.warns(UserWarning, match="saved with 2 processes"):
        trainer.load_checkpoint(ckpt.parent)
    saved = load_file(str(tmp_path / "two" / "params.safetensors"))
    assert all(torch.equal(p, saved[n]) for n, p in trainer.model.named_parameters())
    assert trainer.current_step == 3


@pytest.mark.slow
def test_sft_two_processes_match_one(model_path, tmp_path):
    model_dir = model_path("gpt2")
    wall = launch("sft", model_dir, tmp_path / "two")
    single("sft", model_dir, tmp_path / "one")
    diff = compare_params(tmp_path / "two", tmp_path / "one")
    print(f"SFT 2 processes: {wall:.1f} s, max |param difference| vs 1 process = {diff:.2e}")
    assert diff < ATOL

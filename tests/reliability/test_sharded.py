"""FSDP2 with real processes: 2 CPU processes (gloo) running accelerate's FSDP2 path (see
_sharded_run.py for how accelerate is put on it on CPU) give the same parameters as one unsharded
process with the same global batch, for PPOTrainer (full model with GPT-2's tied head, sharded
reference; LoRA) and SFTTrainer; generation gathers the parameters once per call; a sharded PPO
checkpoint loads bitwise into another number of processes; a dead process surfaces as an error
within the gloo timeout."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from . import _sharded_run
from .test_multiprocess import ATOL, KEY_BIAS, KEY_BIAS_ATOL

SCRIPT = Path(_sharded_run.__file__)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")


def launch(mode, model_dir, out, *options, nproc=2, expect_rc=0, timeout=300, env=None):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    with socket.socket() as sock:  # a free port: a fixed one may still be held by the previous launch
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port,
           str(SCRIPT), mode, model_dir, str(out), *options]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if expect_rc == 0:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def single(mode, model_dir, out, *options):
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        getattr(_sharded_run, f"run_{mode}")(model_dir, out, *options)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "stats.json").read_text())


def max_diff(a_dir, b_dir, name="params.safetensors"):
    a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
    assert a.keys() == b.keys()
    key_bias = max((float((a[k] - b[k]).abs().max()) for k in a if k.endswith(KEY_BIAS)), default=0.0)
    assert key_bias < KEY_BIAS_ATOL
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith(KEY_BIAS))


@pytest.mark.slow
def test_ppo_fsdp2_two_processes_match_one(model_path, tmp_path):
    model_dir = model_path("gpt2")  # GPT-2's LM head is tied to its input embedding: one parameter, sharded once
    launch("ppo", model_dir, tmp_path / "two")
    one = single("ppo", model_dir, tmp_path / "one")
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["sharding"] == "FSDP2 over 2 processes" and one["sharding"] == "none (one process)"
    assert two["sharded_params"] > 0 and one["sharded_params"] == 0
    assert two["reference_sharded_params"] > 0  # the frozen copy is sharded like the policy
    assert two["tied_head"] and one["tied_head"]  # GPT-2's LM head stays the input embedding under fully_shard
    for process in two["per_process"]:  # each process holds about half of the parameters and optimizer state
        assert process["params_kb"] < 0.6 * one["params_kb"] and process["optimizer_kb"] < 0.6 * one["optimizer_kb"]
    diff = max_diff(tmp_path / "two", tmp_path / "one")
    print(f"PPO FSDP2 2 processes: max |param difference| vs 1 process = {diff:.2e}; per process {two['per_process']}; "
          f"1 process: params {one['params_kb']:.0f} KiB, optimizer {one['optimizer_kb']:.0f} KiB")
    assert diff < ATOL
    for s2, s1 in zip(two["history"], one["history"]):
        assert s2["ppo/nonfinite/skipped"] == s1["ppo/nonfinite/skipped"]
    assert two["history"][1]["ppo/nonfinite/skipped"] == 1.0  # the NaN score on one process skipped the step on both

    # generation: each process generated its own length (3 and 9 tokens) without waiting for the other, and
    # gathered each FSDP group once per call: as many all-gathers for 9 tokens as for 3, at most one per group
    first, second = two["per_process"]
    assert first["generated_lengths"] == [3, 3] and second["generated_lengths"] == [9, 9]
    assert first["all_gathers_in_generate"] == second["all_gathers_in_generate"] <= two["fsdp_groups"]

    assert_pretrained_is_the_trained_model(tmp_path / "two")

    # the sharded checkpoint (torch.distributed.checkpoint files) loads bitwise into 1 process, with a warning
    ckpt = Path(two["checkpoint"])
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()
    launch("ppo", model_dir, tmp_path / "resumed", f"resume={ckpt}", nproc=1)
    resumed = json.loads((tmp_path / "resumed" / "stats.json").read_text())
    assert any("saved with 2 processes, this run has 1" in w for w in resumed["warnings"])
    loaded, saved = load_file(str(tmp_path / "resumed" / "loaded.safetensors")), load_file(str(tmp_path / "two" / "params.safetensors"))
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert resumed["history"][0]["ppo/nonfinite/skipped"] == 0.0  # and it trains on (optimizer state loaded too)


@pytest.mark.slow
def test_ppo_fsdp2_peft_two_processes_match_one(model_path, tmp_path):
    model_dir = model_path("gpt2")
    launch("ppo", model_dir, tmp_path / "two", "peft")
    single("ppo", model_dir, tmp_path / "one", "peft")
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["sharding"] == "FSDP2 over 2 processes" and two["sharded_params"] > 0
    diff = max_diff(tmp_path / "two", tmp_path / "one")
    print(f"PPO LoRA FSDP2 2 processes: max |param difference| vs 1 process = {diff:.2e}")
    assert diff < ATOL
    lora = [k for k in load_file(str(tmp_path / "two" / "params.safetensors")) if "lora_" in k]
    assert lora  # the adapter is in the compared parameters
    assert_pretrained_is_the_trained_model(tmp_path / "two")  # the adapter and the head, gathered


def assert_pretrained_is_the_trained_model(out: Path) -> None:
    """OUT/pretrained (`_sharding.save_pretrained` of the FSDP2-sharded policy, which a main-process-only save
    cannot write: it hangs) loads with from_pretrained into exactly the trained parameters, value head included."""
    from rlft import AutoModelForCausalLMWithValueHead

    trained = load_file(str(out / "params.safetensors"))
    loaded = dict(AutoModelForCausalLMWithValueHead.from_pretrained(str(out / "pretrained")).named_parameters())
    if any("lora_" in k for k in trained):  # an adapter folder: the base model's frozen weights are not in it
        trained = {k: v for k, v in trained.items() if "lora_" in k or k.startswith("v_head.")}
    assert trained and all(torch.equal(loaded[k], v) for k, v in trained.items())
    assert loaded["v_head.summary.weight"].shape == trained["v_head.summary.weight"].shape


@pytest.mark.slow
def test_ppo_fsdp2_cpu_offload_within_a_per_process_budget(model_path, tmp_path):
    """FSDP2 with CPUOffloadPolicy (accelerate's cpu_offload=True) trains PPO on 2 processes like one process,
    and each process holds parameters plus Adam state within a budget that the unsharded model exceeds.

    On CPU processes the "device" is the CPU, so offloading moves nothing: what this runs is FSDP2's
    offload code path (sharded parameters and optimizer state kept on the CPU, copied to the compute
    device for each all-gather), and the budget is tracked (bytes of each process's tensors), not enforced
    by the operating system: a per-process RLIMIT_AS would count torch's and gloo's address-space
    reservations (hundreds of MiB), not the model. The memory saved on GPUs is not measured here.
    """
    model_dir = model_path("gpt2")
    launch("ppo", model_dir, tmp_path / "two", "offload")
    one = single("ppo", model_dir, tmp_path / "one")
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["sharding"] == "FSDP2 over 2 processes + CPU offload"
    needed = one["params_kb"] + one["optimizer_kb"]  # one process, unsharded: parameters + Adam's two moments
    budget = 0.6 * needed
    for process in two["per_process"]:
        held = process["params_kb"] + process["optimizer_kb"]
        print(f"offload: this process holds {held:.0f} KiB of parameters + optimizer state; budget {budget:.0f}; unsharded {needed:.0f}")
        assert held <= budget < needed
    diff = max_diff(tmp_path / "two", tmp_path / "one")
    print(f"PPO FSDP2 + CPU offload, 2 processes: max |param difference| vs 1 process = {diff:.2e}")
    assert diff < ATOL
    assert_pretrained_is_the_trained_model(tmp_path / "two")


@pytest.mark.slow
@pytest.mark.parametrize("mode, option", [
    ("sft", None), ("reward", None), ("dpo", None), ("isft", None), ("isft", "linear"),
])
def test_trainer_fsdp2_two_processes_match_one(model_path, tmp_path, monkeypatch, mode, option):
    """SFT / reward / DPO / IterativeSFT through TrainingArguments(fsdp="full_shard", fsdp_config={"version": 2}).
    DPO's reference copy is sharded like the policy; the reward trainer skips its packing probe under FSDP2;
    IterativeSFT's learning-rate schedule is stepped once per optimizer step (not once per process)."""
    model_dir = model_path("gpt2")
    # Sharded runs keep torch's linear kernels (rlft.trainer._step_kernels); so does the 1-process baseline here:
    # over 3 Adam steps oneDNN's other rounding alone moves DPO's parameters by up to 1.7e-4.
    monkeypatch.setenv("RLFT_ONEDNN_LINEARS", "torch")
    options = [option] if option else []
    launch(mode, model_dir, tmp_path / "two", *options)
    one = single(mode, model_dir, tmp_path / "one", *options)
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["sharding"] == "FSDP2 over 2 processes" and two["sharded_params"] > 0 and one["sharded_params"] == 0
    diff = max_diff(tmp_path / "two", tmp_path / "one")
    print(f"{mode} FSDP2 2 processes: max |param difference| vs 1 process = {diff:.2e}; per process {two['per_process']}")
    assert diff < ATOL
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "stuck"])
def test_dead_process_fails_the_others_within_the_timeout(model_path, tmp_path, fault):
    proc = launch("hang", model_path("gpt2"), tmp_path / "hang", fault, expect_rc=None, timeout=240)
    assert proc.returncode != 0
    survivor = json.loads((tmp_path / "hang" / "survivor.json").read_text())
    print(fault, survivor)
    assert survivor["error"].startswith("RuntimeError") or survivor["error"].startswith("DistBackendError")
    if fault == "killed":  # the peer's socket closes: at once
        assert survivor["seconds"] < 30 and "Connection" in survivor["error"]
    else:  # the peer is alive but silent: the process group's timeout
        assert _sharded_run.FAULT_TIMEOUT_S - 1 < survivor["seconds"] < _sharded_run.FAULT_TIMEOUT_S + 60


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_ppo_deepspeed_zero_two_processes_match_one(model_path, tmp_path, stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: DS_BUILD_OPS=0 pip install deepspeed")
    model_dir = model_path("gpt2")
    launch("ppo", model_dir, tmp_path / "two", f"zero{stage}", env=DS_CPU)
    single("ppo", model_dir, tmp_path / "one")
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert two["sharding"] == f"DeepSpeed ZeRO-{stage} over 2 processes"
    diff = max_diff(tmp_path / "two", tmp_path / "one")
    print(f"PPO ZeRO-{stage} 2 processes: max |param difference| vs 1 process = {diff:.2e}; per process {two['per_process']}")
    assert diff < ATOL
    first, second = two["per_process"]  # 3 and 9 new tokens: no process waited for the other
    assert first["generated_lengths"] == [3, 3] and second["generated_lengths"] == [9, 9]
    if stage == 3:  # the policy was loaded partitioned (zero.Init); the reference was loaded again, partitioned too
        assert two["params_kb"] == 0 and two["reference_partitioned"]
    assert_pretrained_is_the_trained_model(tmp_path / "two")  # ZeRO-3: gathered with GatheredParameters

    # The checkpoint (DeepSpeed's files, one optimizer partition per process) resumes in as many processes with
    # DeepSpeed's own load, and in 1 process: load_checkpoint converts it to DeepSpeed's universal format first.
    # Each time: weights, fp32 master weights, Adam moments and step as saved.
    ckpt = Path(two["checkpoint"])
    universal = ckpt / "pytorch_model" / "zero"
    assert (ckpt / "pytorch_model").is_dir() and not universal.exists()
    launch("ppo", model_dir, tmp_path / "same", f"zero{stage}", f"resume={ckpt}", env=DS_CPU)
    same = json.loads((tmp_path / "same" / "stats.json").read_text())
    assert not any("processes, this run has" in w for w in same["warnings"]) and not universal.exists()  # no conversion
    assert_resumed_as_saved(tmp_path / "same", tmp_path / "two")
    launch("ppo", model_dir, tmp_path / "one_resumed", f"zero{stage}", f"resume={ckpt}", nproc=1, env=DS_CPU)
    resumed = json.loads((tmp_path / "one_resumed" / "stats.json").read_text())
    assert resumed["sharding"] == f"DeepSpeed ZeRO-{stage} over 1 processes"
    assert any("saved with 2 processes, this run has 1" in w for w in resumed["warnings"])
    assert universal.is_dir()  # converted once, beside the original files
    assert_resumed_as_saved(tmp_path / "one_resumed", tmp_path / "two")
    assert resumed["history"][0]["ppo/nonfinite/skipped"] == 0.0  # and it trains on

    # and back: the checkpoint that 1 process wrote after its step resumes in 2 processes
    launch("ppo", model_dir, tmp_path / "two_resumed", f"zero{stage}", f"resume={resumed['checkpoint']}", env=DS_CPU)
    again = json.loads((tmp_path / "two_resumed" / "stats.json").read_text())
    assert any("saved with 1 processes, this run has 2" in w for w in again["warnings"])
    assert_resumed_as_saved(tmp_path / "two_resumed", tmp_path / "one_resumed")

    # A conversion that fails (here: one process's optimizer partition damaged) stops both processes with the
    # error and the ways out: the main process's own, the other's through the shared flag (not a wait at a barrier)
    damaged = tmp_path / "damaged" / Path(resumed["checkpoint"]).name
    shutil.copytree(resumed["checkpoint"], damaged)
    shutil.rmtree(damaged / "pytorch_model" / "zero", ignore_errors=True)
    for partition in (damaged / "pytorch_model").glob("*optim_states.pt"):  # bytes garbled, size kept (rlft's
        data = bytearray(partition.read_bytes())  # checkpoint marker records sizes: a truncated file is refused earlier)
        data[: len(data) // 2] = bytes(len(data) // 2)
        partition.write_bytes(bytes(data))
    proc = launch("ppo", model_dir, tmp_path / "damaged_run", f"zero{stage}", f"resume={damaged}", expect_rc=None, env=DS_CPU)
    assert proc.returncode != 0
    assert proc.stderr.count("DeepSpeed could not convert it to its universal format for 2") == 2, proc.stderr[-3000:]
    assert "Resume with 1 processes" in proc.stderr

    # Refused in one line that names the ways out: another ZeRO stage (DeepSpeed's files differ per stage) ...
    other = {2: 3, 3: 2}[stage]
    proc = launch("ppo", model_dir, tmp_path / "other_stage", f"zero{other}", f"resume={ckpt}", nproc=1, expect_rc=None, env=DS_CPU)
    assert proc.returncode != 0
    assert f"saved under DeepSpeed ZeRO-{stage} but this trainer runs DeepSpeed ZeRO-{other}" in proc.stderr, proc.stderr[-3000:]
    # ... and a trainer without DeepSpeed, which cannot read the engine's files
    with pytest.raises(ValueError, match=f"saved under DeepSpeed ZeRO-{stage}.*launch with the same DeepSpeed config.*zero_to_fp32"):
        single("ppo", model_dir, tmp_path / "plain", f"resume={ckpt}")


#: DeepSpeed on CPU processes (see _sharded_run.use_deepspeed_on_cpu).
DS_CPU = {"DS_ACCELERATOR": "cpu"}


def assert_resumed_as_saved(resumed: Path, saved: Path) -> None:
    """The run in ``resumed`` loaded exactly what the run in ``saved`` checkpointed: every parameter, and DeepSpeed's
    fp32 master weights, Adam moments and step count (gathered whole from the engines on each side)."""
    loaded, params = load_file(str(resumed / "loaded.safetensors")), load_file(str(saved / "params.safetensors"))
    assert loaded.keys() == params.keys() and all(torch.equal(loaded[k], params[k]) for k in params)
    state, saved_state = load_file(str(resumed / "loaded_optimizer.safetensors")), load_file(str(saved / "optimizer.safetensors"))
    assert state.keys() == saved_state.keys() and any(k.endswith("/exp_avg_sq") for k in saved_state)
    differ = [k for k in saved_state if not torch.equal(state[k], saved_state[k])]
    assert not differ, differ[:5]
    assert saved_state["step"].numel() == 1 and float(saved_state["step"]) > 0  # one step count, as trained
    assert all(float(v.abs().max()) > 0 for k, v in saved_state.items() if k.endswith("/exp_avg"))  # a trained state


def test_example_accelerate_configs_load():
    """examples/configs/accelerate: the FSDP2 and ZeRO-3 files parse as accelerate configs, and the ZeRO-3 one
    points at its DeepSpeed JSON file, whose settings rlft's DeepSpeed path reads ("auto" values, stage 3)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    folder = ROOT / "examples" / "configs" / "accelerate"
    fsdp = ClusterConfig.from_yaml_file(str(folder / "fsdp2.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"  # what the resharding test relies on
    zero = ClusterConfig.from_yaml_file(str(folder / "zero3.yaml"))
    assert zero.distributed_type == DistributedType.DEEPSPEED and zero.deepspeed_config["zero3_init_flag"]
    ds = json.loads((ROOT / zero.deepspeed_config["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == "auto"

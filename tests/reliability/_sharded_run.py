"""Training runs shared by the sharded (FSDP2) tests: launched on 2 CPU processes (gloo) with
``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 _sharded_run.py MODE MODEL_DIR OUT [OPTIONS]``,
or called in-process (one process, no sharding) with the same global batch. Writes the full
parameters and stats to OUT.

accelerate 1.16 switches to FSDP only on accelerator devices: on CPU (``distributed_type``
MULTI_CPU) it ignores an FSDP plugin and wraps the model in DDP. `use_fsdp2_on_cpu` sets its
shared state to FSDP before the trainers create their Accelerator, so the trainers run exactly
accelerate's FSDP2 path (``fsdp2_prepare_model``: ``fully_shard`` per block and on the root,
DCP checkpoints) as on GPUs, only over gloo.

MODE "ppo": 3 PPOTrainer steps on a global batch of 8 (a NaN score on one process at step 2), then
generation with a different number of new tokens on each process (all-gathers counted), then
save_checkpoint and `_sharding.save_pretrained` (OUT/pretrained). Options: "peft" (LoRA policy), "resume=CKPT"
(load CKPT first, run 1 step), "zero2" / "zero3" (DeepSpeed ZeRO on CPU processes instead of FSDP2; with them
the fp32 weights and Adam moments are written at the save and, with "resume", after the load:
OUT/optimizer.safetensors, OUT/loaded_optimizer.safetensors), "offload" (FSDP2 with CPUOffloadPolicy).
MODE "sft" / "reward" / "dpo" / "isft": 3 optimizer steps of SFTTrainer / RewardTrainer / DPOTrainer /
IterativeSFTTrainer with a global batch of 4 (FSDP2 through TrainingArguments' fsdp / fsdp_config); options
"wrap=<block class>" (a model other than GPT-2) and "unsharded" (no FSDP shim: a one-process baseline).
MODE "hang": one PPO step, then process 1 dies (option "stuck": sleeps instead); process 0 must fail
within the gloo timeout instead of waiting forever.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed_run import GLOBAL_BATCH, STEPS, _global_batch

#: Blocks of the tiny GPT-2 that fully_shard wraps one by one (the rest goes to the root group).
WRAP = ["GPT2Block"]
#: gloo timeout of the fault test: a dead peer must surface within it.
FAULT_TIMEOUT_S = 20


def fsdp2_plugin(**overrides):
    from accelerate import FullyShardedDataParallelPlugin

    kwargs = {"fsdp_version": 2, "auto_wrap_policy": "transformer_based_wrap", "transformer_cls_names_to_wrap": WRAP,
                  "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT", "cpu_ram_efficient_loading": False}
    kwargs.update(overrides)
    return FullyShardedDataParallelPlugin(**kwargs)


def use_fsdp2_on_cpu(plugin, timeout_s: float | None = None) -> None:
    """Make accelerate's shared state FSDP (version 2) on CPU processes; see the module docstring."""
    from datetime import timedelta

    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))] if timeout_s else None
    Accelerator(cpu=True, kwargs_handlers=handlers)
    PartialState().distributed_type = DistributedType.FSDP  # PartialState's attributes are shared by every instance
    AcceleratorState().fsdp_plugin = plugin


def use_deepspeed_on_cpu(stage: int) -> None:
    """Make accelerate's shared state DeepSpeed ZeRO-``stage`` on CPU processes (DS_ACCELERATOR=cpu, gloo).

    accelerate 1.16 takes DeepSpeed only with an accelerator device (``ACCELERATE_USE_DEEPSPEED`` is
    ignored with ``cpu=True``; without it, on a machine with no GPU, it counts 1 process while
    DeepSpeed counts all of them). Here the process group comes from the CPU path and DeepSpeed's
    communication wraps it.
    """
    from accelerate.utils import DeepSpeedPlugin

    use_deepspeed_plugin_on_cpu(DeepSpeedPlugin(zero_stage=stage, gradient_accumulation_steps=1, zero3_init_flag=stage == 3))


def init_deepspeed_on_cpu() -> None:
    """The CPU process group (gloo) with DeepSpeed's communication on it: what accelerate's ``PartialState``
    does on GPUs (``deepspeed.init_distributed``) when DeepSpeed is asked for. Before it, DeepSpeed counts
    one process (e.g. in ``zero.Init``'s batch-size check). Idempotent."""
    import deepspeed
    from accelerate import Accelerator

    Accelerator(cpu=True)
    deepspeed.init_distributed(dist_backend="gloo")


def use_deepspeed_plugin_on_cpu(plugin) -> None:
    """`use_deepspeed_on_cpu` with a given ``DeepSpeedPlugin`` (e.g. the one ``rlft ppo --deepspeed CONFIG``
    or transformers' ``TrainingArguments(deepspeed=CONFIG)`` built from a JSON file)."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    init_deepspeed_on_cpu()
    PartialState().distributed_type = DistributedType.DEEPSPEED
    plugin.set_mixed_precision("no")
    plugin.select(_from_accelerator_state=True)  # also makes transformers load under zero.Init at stage 3
    AcceleratorState().deepspeed_plugins = plugin


def full_params(model) -> dict:
    """Every parameter as a full tensor (a collective under FSDP2: call on every process)."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone().contiguous() for n, p in model.named_parameters()}


def _gather_counter():
    """Counts FSDP2 all-gathers (one per parameter group and unshard)."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group_mod

    counter = {"n": 0}
    original = group_mod.foreach_all_gather

    def counting(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    group_mod.foreach_all_gather = counting
    return counter, lambda: setattr(group_mod, "foreach_all_gather", original)


def _peft_policy(model_dir):
    from peft import LoraConfig

    from rlft import AutoModelForCausalLMWithValueHead

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM")
    return AutoModelForCausalLMWithValueHead.from_pretrained(model_dir, peft_config=lora)


def run_ppo(model_dir: str, out: Path, *options: str) -> None:
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from rlft.trainer import _sharding

    opts = dict(o.split("=", 1) if "=" in o else (o, "1") for o in options)
    state = PartialState(cpu=True)
    world, rank = state.num_processes, state.process_index
    per_process = GLOBAL_BATCH // world
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)  # same value-head (and LoRA) init everywhere
    model = _peft_policy(model_dir) if "peft" in opts else AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    config = PPOConfig(batch_size=per_process, mini_batch_size=per_process, ppo_epochs=2, learning_rate=1e-3,
                       accelerator_kwargs={"cpu": True}, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = PPOTrainer(config, model, None, tok)
        if "resume" in opts:
            trainer.load_checkpoint(opts["resume"])
    info = {"world": world, "sharding": _sharding.sharding_summary(trainer.accelerator),
            "warnings": [str(w.message) for w in caught], "rss_mb": {}}
    deepspeed = any(o.startswith("zero") for o in opts)
    if "resume" in opts:  # the parameters (and under DeepSpeed the optimizer state) as loaded, before any step
        policy = trainer.accelerator.unwrap_model(trainer.model)
        loaded = _zero3_full_params(policy) if "zero3" in opts else full_params(policy)
        moments = _deepspeed_optimizer_state(policy, trainer.optimizer) if deepspeed else None
        if rank == 0:
            from safetensors.torch import save_file

            out.mkdir(parents=True, exist_ok=True)
            save_file(loaded, str(out / "loaded.safetensors"))
            if moments is not None:
                save_file(moments, str(out / "loaded_optimizer.safetensors"))
    steps = range(trainer.current_step, trainer.current_step + 1) if "resume" in opts else range(STEPS)
    history = []
    for step in steps:
        q, r, s = _global_batch(step)
        mine = slice(rank * per_process, (rank + 1) * per_process)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = trainer.step(q[mine], r[mine], s[mine])
        history.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items() if not k.startswith("time/")})
    info["history"] = history
    policy = trainer.accelerator.unwrap_model(trainer.model)
    info["sharded_params"] = sum(type(p).__name__ == "DTensor" for p in policy.parameters())
    reference = trainer.ref_model if trainer.ref_model is not None else torch.nn.Module()
    info["reference_sharded_params"] = sum(type(p).__name__ == "DTensor" for p in reference.parameters())
    if "resume" not in opts:
        # generation: a different number of new tokens per process (no hang), all-gathers counted
        counter, restore = _gather_counter()
        queries, _, _ = _global_batch(0)
        new_tokens = 3 + 6 * rank
        try:
            responses = trainer.generate(queries[:2], batch_size=2, return_prompt=False, max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=True, generate_ref_response=True)
        finally:
            restore()
        info["generated_lengths"] = [len(x) for x in responses[0]]
        info["all_gathers_in_generate"] = counter["n"]
        info["fsdp_groups"] = len(_sharding.fsdp2_modules(policy)) + len(_sharding.fsdp2_modules(trainer.ref_model or torch.nn.Module()))
    info["checkpoint"] = str(trainer.save_checkpoint(out / "run"))  # a resumed run saves too: it may be resumed again
    if deepspeed:  # what the checkpoint holds, from the engine itself: weights and Adam moments, whole
        moments = _deepspeed_optimizer_state(policy, trainer.optimizer)
        if rank == 0:
            from safetensors.torch import save_file

            save_file(moments, str(out / "optimizer.safetensors"))
    if "resume" not in opts:
        # a from_pretrained folder from the sharded policy: PPOTrainer.save_pretrained on every process
        # (_sharding.save_pretrained gathers on each, the main one writes)
        trainer.save_pretrained(str(out / "pretrained"))
    if "zero3" in opts:
        info["reference_partitioned"] = any(hasattr(p, "ds_id") for p in trainer.ref_model.parameters())
    lm = getattr(policy, "pretrained_model", policy)
    info["tied_head"] = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    info.update(_local_bytes(policy, trainer.optimizer))
    params = full_params(policy) if "zero3" not in opts else _zero3_full_params(policy)
    info["rss_mb"] = _peak_rss_mb()
    _write(out, rank, params, info)


TEXTS = ["the value is returned to the caller.", "return a new list of the items.", "the file is closed.",
         "a new object from the list.", "the default is to use the file.", "if the path is not a string."] * 2


def _trainer_args(out: Path, world: int, args_class=None, wrap=None, **extra):
    """TrainingArguments for 3 optimizer steps of global batch 4, with FSDP2 when there are several processes
    (each block of a class in ``wrap``, default `WRAP`, sharded on its own)."""
    from transformers import TrainingArguments

    wrap = wrap or WRAP
    fsdp = {"fsdp": "full_shard", "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": wrap}} if world > 1 else {}
    args = (args_class or TrainingArguments)(
        output_dir=str(out / "trainer"), report_to=[], use_cpu=True, max_steps=STEPS, save_strategy="no",
        per_device_train_batch_size=4 // world, learning_rate=5e-3, logging_steps=1, disable_tqdm=True, seed=0,
        data_seed=0, **fsdp, **extra,
    )
    if world > 1:  # TrainingArguments resets accelerate's state when it picks its device: apply the shim again
        args.device  # noqa: B018
        use_fsdp2_on_cpu(fsdp2_plugin(transformer_cls_names_to_wrap=wrap))
    return args


def _train_and_write(trainer, out: Path, world: int, rank: int) -> None:
    from rlft.trainer import _sharding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer.train()
    info = {"world": world, "loss": result.training_loss, "sharding": _sharding.sharding_summary(trainer.accelerator),
            "sharded_params": sum(type(p).__name__ == "DTensor" for p in trainer.model.parameters())}
    info.update(_local_bytes(trainer.model, trainer.optimizer))
    params = full_params(trainer.model)
    info["rss_mb"] = _peak_rss_mb()
    _write(out, rank, params, info)


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    return tok


def run_sft(model_dir: str, out: Path, *options: str) -> None:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from rlft import SFTTrainer
    from rlft.trainer.utils import disable_dropout_in_model

    state = PartialState(cpu=True)
    tok = _tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout_in_model(model)  # dropout masks would differ between one and two processes
    args = _trainer_args(out, state.num_processes, wrap=_wrap_option(options))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                             processing_class=tok, dataset_text_field="text", max_seq_length=16)
    _train_and_write(trainer, out, state.num_processes, state.process_index)


def _wrap_option(options) -> list | None:
    """"wrap=LlamaDecoderLayer": the block class of a model other than the GPT-2 fixture."""
    return next(([o.split("=", 1)[1]] for o in options if o.startswith("wrap=")), None)


def run_reward(model_dir: str, out: Path, *options: str) -> None:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from rlft import RewardConfig, RewardTrainer
    from rlft.trainer.utils import disable_dropout_in_model

    state = PartialState(cpu=True)
    tok = _tokenizer(model_dir)
    c, r = tok(TEXTS), tok([t[::-1] for t in TEXTS])
    ds = Dataset.from_dict({"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
                            "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]})
    torch.manual_seed(0)  # the score head
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    disable_dropout_in_model(model)
    args = _trainer_args(out, state.num_processes, RewardConfig, gradient_checkpointing=False, max_length=64,
                         remove_unused_columns=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # padded forwards on both sides (the packed forward is skipped under FSDP2; compare like with like)
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, padding_free=False)
    _train_and_write(trainer, out, state.num_processes, state.process_index)


def run_dpo(model_dir: str, out: Path, *options: str) -> None:
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from rlft import DPOTrainer
    from rlft.trainer.utils import disable_dropout_in_model

    state = PartialState(cpu=True)
    tok = _tokenizer(model_dir)
    ds = Dataset.from_dict({"prompt": [t[:12] for t in TEXTS], "chosen": [t[12:] for t in TEXTS],
                            "rejected": [t[12:][::-1] for t in TEXTS]})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout_in_model(model)
    args = _trainer_args(out, state.num_processes, remove_unused_columns=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=model, args=args, processing_class=tok, train_dataset=ds, max_length=32, max_prompt_length=16)
    _train_and_write(trainer, out, state.num_processes, state.process_index)


def run_isft(model_dir: str, out: Path, *options: str) -> None:
    """IterativeSFTTrainer: 3 `step(input_ids=...)` calls on a global batch of 4 rows (each process its share)."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from rlft import IterativeSFTTrainer
    from rlft.trainer import _sharding
    from rlft.trainer.utils import disable_dropout_in_model

    state = PartialState(cpu=True)
    world, rank = state.num_processes, state.process_index
    tok = _tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout_in_model(model)
    # "linear": the default decaying schedule (see the xfail in test_sharded.py); else a constant learning rate
    args = _trainer_args(out, world, lr_scheduler_type="linear" if "linear" in options else "constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = IterativeSFTTrainer(model, args=args, tokenizer=tok)
        per = 4 // world
        g = torch.Generator().manual_seed(0)
        for _ in range(STEPS):  # equal lengths: each process's token mean is then its share of the global mean
            rows = [torch.randint(5, 900, (10,), generator=g) for _ in range(4)]
            mine = rows[rank * per:(rank + 1) * per]
            trainer.step(input_ids=mine, attention_mask=[torch.ones_like(r) for r in mine], labels=mine)
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    info = {"world": world, "loss": 0.0, "sharding": _sharding.sharding_summary(trainer.accelerator),
            "sharded_params": sum(type(p).__name__ == "DTensor" for p in model.parameters())}
    params = full_params(model)
    _write(out, rank, params, info)


def run_hang(model_dir: str, out: Path, *options: str) -> None:
    """Process 1 exits after one step; process 0 enters the next step and must raise, not hang."""
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    rank = PartialState(cpu=True).process_index
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4, accelerator_kwargs={"cpu": True}, seed=0),
                         AutoModelForCausalLMWithValueHead.from_pretrained(model_dir), None, tok)
    q, r, s = _global_batch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.step(q[rank * 4:(rank + 1) * 4], r[rank * 4:(rank + 1) * 4], s[rank * 4:(rank + 1) * 4])
        if rank == 1 and "stuck" in options:
            time.sleep(10 * FAULT_TIMEOUT_S)  # alive but never reaching the next collective
        if rank == 1:
            os._exit(3)  # killed mid-run: no goodbye to the process group
        t = time.time()
        try:
            trainer.step(q[:4], r[:4], s[:4])
        except Exception as err:  # noqa: BLE001  (what the survivor sees, whatever its type)
            (out / "survivor.json").write_text(json.dumps({"error": f"{type(err).__name__}: {err}"[:2000], "seconds": time.time() - t}))
            os._exit(1)


def _zero3_full_params(model) -> dict:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}


def _deepspeed_optimizer_state(model, optimizer) -> dict:
    """Every parameter's fp32 master copy and Adam moments, whole, from a DeepSpeed ZeRO engine's optimizer
    (``name``, ``name/exp_avg``, ``name/exp_avg_sq``), and Adam's step count of each of its states (``step``).
    A collective: call on every process."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    base = optimizer
    while hasattr(base, "optimizer"):  # accelerate's wrapper, DeepSpeed's ZeRO optimizer, then torch's Adam
        if hasattr(base, "_lazy_init_hp_params_optimizer_state"):
            # ZeRO-1/2 links each parameter to its moments at the first step; after DeepSpeed's own (non-universal)
            # load that is the next step, so the loaded moments are linked here to be read
            base._lazy_init_hp_params_optimizer_state()
        base = base.optimizer
    # one state per flat partition: as many as the processes and ZeRO's groups make, all at the same step
    steps = sorted({float(state["step"]) for state in base.state.values() if "step" in state})
    out = {"step": torch.tensor(steps)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        out[name] = safe_get_full_fp32_param(param).detach().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{name}/{key}"] = safe_get_full_optimizer_state(param, key).detach().cpu().clone()
    return out


def _local_bytes(model, optimizer) -> dict:
    """Bytes this process holds of the model's parameters and of the optimizer state (its shards under FSDP)."""
    def nbytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    state = getattr(optimizer, "optimizer", optimizer).state
    return {"params_kb": sum(nbytes(p) for p in model.parameters()) / 1024,
            "optimizer_kb": sum(nbytes(v) for s in state.values() for v in s.values() if torch.is_tensor(v) and v.dim()) / 1024}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write(out: Path, rank: int, params: dict, info: dict) -> None:
    import torch.distributed as dist

    out.mkdir(parents=True, exist_ok=True)
    if dist.is_available() and dist.is_initialized():  # each process's own numbers, written by the main one
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, {k: info.get(k) for k in ("rss_mb", "params_kb", "optimizer_kb", "all_gathers_in_generate", "generated_lengths")})
        info["per_process"] = per_rank
    if rank == 0:
        from safetensors.torch import save_file

        save_file(params, str(out / "params.safetensors"))
        (out / "stats.json").write_text(json.dumps(info))


def main() -> None:
    mode, model_dir, out, options = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    zero = [o for o in options if o.startswith("zero")]
    if zero:  # "zero2" / "zero3": DeepSpeed instead of FSDP2
        use_deepspeed_on_cpu(int(zero[0][-1]))
        run_ppo(model_dir, out, *options)
        _finish()
        return
    # SFT also names FSDP in its TrainingArguments (so transformers takes its FSDP paths); the plugin is the same
    if "offload" in options:  # FSDP2's CPUOffloadPolicy; unpinned: pinned memory needs an accelerator (GPUs pin)
        from torch.distributed.fsdp import CPUOffloadPolicy

        plugin = fsdp2_plugin(cpu_offload=CPUOffloadPolicy(pin_memory=False))
    else:
        plugin = fsdp2_plugin()
    if "unsharded" not in options:  # "unsharded": plain accelerate (the one-process baseline of a measurement)
        use_fsdp2_on_cpu(plugin, timeout_s=FAULT_TIMEOUT_S if mode == "hang" else None)
    {"ppo": run_ppo, "sft": run_sft, "reward": run_reward, "dpo": run_dpo, "isft": run_isft, "hang": run_hang}[mode](model_dir, out, *options)
    _finish()


def _finish() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: gloo's threads sometimes abort there ("terminate called
    # without an active exception", SIGABRT) after everything has finished and been written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

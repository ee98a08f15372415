"""One measured run: one workload, one implementation, one fresh process; prints one JSON line.

    python benchmarks/workloads/worker.py --impl rlft --workload dpo --fixtures DIR [--profile]

Launched by `benchmarks/compare.py` with the interpreter of the implementation's own virtual
environment (rlft's, or a TRL peer's). Runs ``warmup`` untimed steps, then ``steps`` timed
ones, and reports wall and CPU time of the timed steps, other processes' CPU share over them
(contention), model tokens and FLOPs, peak memory and optionally a profile breakdown.

Tokens: for Trainer workloads, the real (non-padding) tokens of each training batch
(`Context.watch`); for PPO and best-of-n, the query + response tokens of the step. Model
FLOPs: ``flops_per_param_token * N`` per batch token for Trainer workloads (6N training, 8N
with a reference forward); for PPO and best-of-n, a forward pre-hook on the model's backbone
adds 6N per real token of every forward under autograd and 2N per token of every forward
without (rollout, reference, each generation step). N = the matmul parameters the forward
uses (`fixtures.matmul_params`). Both libraries are counted by the same code.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads import fixtures, measure, spec  # noqa: E402

RESULT_PREFIX = "RESULT "

#: Profile categories: an aten op goes to the first category one of whose names it contains.
OP_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::addmv", "aten::mv",
                "mkldnn::_linear_pointwise")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("softmax / log-softmax / CE over V", ("softmax", "logsumexp", "nll_loss", "cross_entropy")),
    ("optimizer", ("_foreach", "adam", "aten::_fused")),
    ("embedding / gather / index", ("embedding", "gather", "index", "scatter", "take_along")),
    ("copies / casts / cat / pad", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::cat", "aten::clone", "aten::contiguous", "pad", "aten::fill_", "aten::zero_")),
)


class Context:
    """What an implementation builds its workload from, and the step clock it reports to."""

    def __init__(self, root: str, arch: str, workload: spec.Workload, device: str, bf16: bool = False):
        self.root, self.arch, self.workload, self.device, self.bf16 = root, arch, workload, device, bf16
        self.tokenizer = fixtures.load_tokenizer(root)
        self.data = fixtures.load_data(root)
        self.counts = {"grad_tokens": 0, "nograd_tokens": 0, "flops": 0.0, "batch_tokens": 0}
        self.marks: list[dict] = []
        self.on_mark = None  # profiler hook

    # -- models
    def preload(self) -> None:
        """Load the models the workload takes before memory is measured.

        Loading costs differ between transformers versions (5.x holds about 100 MiB more RSS
        after loading a 5M-parameter model than 4.46 does); the peak-memory figure is about
        what the *library* adds: reference copies, gradients, optimizer state, activations.
        """
        self._loaded = [self._load(self.workload.model_kind) for _ in range(self.workload.models)]

    def model(self, kind: str | None = None):
        """A fresh copy of the fixture model (``kind`` defaults to the workload's), on the device, counted."""
        kind = kind or self.workload.model_kind
        loaded = getattr(self, "_loaded", [])
        if loaded and kind == self.workload.model_kind:
            return loaded.pop(0)
        return self._load(kind)

    def _load(self, kind: str):
        import torch

        if self.workload.model == "smollm2":
            model, self.tokenizer = fixtures.load_smollm2(attn="sdpa")
            self.data = {"prompts": fixtures.demo_prompts(self.tokenizer)}
        else:
            model = fixtures.load_model(self.root, self.arch, kind, attn="sdpa")
        if self.device == "cuda":
            # Trainer workloads keep fp32 weights under bf16 autocast; the PPO and best-of-n loops
            # have no autocast, so their models run in bf16.
            dtype = torch.bfloat16 if self.workload.flops_per_param_token is None else torch.float32
            model = model.to(device="cuda", dtype=dtype)
        n = fixtures.matmul_params(model, with_lm_head=kind == "causal")
        model.base_model.register_forward_pre_hook(self._counter(n), with_kwargs=True)
        self.n_params = n
        return model

    def _counter(self, n_matmul: int):
        import torch

        counts = self.counts

        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            emb = kwargs.get("inputs_embeds")
            mask = kwargs.get("attention_mask")
            shape = tuple(ids.shape) if ids is not None else tuple(emb.shape[:2]) if emb is not None else None
            if shape is None:
                return
            q = shape[-1]
            if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == shape[0]:
                tokens = int(mask[:, -q:].sum())  # a decoding step's mask covers the cache too
            else:
                tokens = int(shape[0] * q) if len(shape) == 2 else int(q)
            if torch.is_grad_enabled():
                counts["grad_tokens"] += tokens
                counts["flops"] += spec.TRAIN_FLOPS_PER_PARAM * n_matmul * tokens
            else:
                counts["nograd_tokens"] += tokens
                counts["flops"] += spec.FORWARD_FLOPS_PER_PARAM * n_matmul * tokens

        return hook

    # -- clock
    def mark(self, tokens: int | None = None) -> None:
        """Call at the end of every step; ``tokens``: the step's throughput tokens (default: training tokens)."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        busy, _ = measure.machine_busy_jiffies()
        self.marks.append({
            "t": time.perf_counter(), "cpu": measure.process_cpu_seconds(), "busy": busy, "load": os.getloadavg()[0],
            "tokens": tokens, **self.counts,
        })
        if self.on_mark is not None:
            self.on_mark(len(self.marks))

    def watch(self, trainer) -> None:
        """Count the real tokens of every training batch ``trainer`` consumes (any key layout).

        Sums the ``*attention_mask*`` tensors of the batch, except the prompt's (contained in
        the chosen/rejected sequences of DPO batches); a batch without one counts its input ids.
        """
        import torch

        inner = trainer.training_step
        counts = self.counts

        def training_step(model, inputs, *args, **kwargs):
            masks = [v for k, v in inputs.items() if "attention_mask" in k and not k.startswith("prompt") and isinstance(v, torch.Tensor)]
            if masks:
                counts["batch_tokens"] += int(sum(m.sum() for m in masks))
            else:
                counts["batch_tokens"] += int(inputs["input_ids"].numel())
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = training_step

    def trainer_callback(self):
        """A transformers TrainerCallback that marks the end of each optimizer step."""
        from transformers import TrainerCallback

        ctx = self

        class Mark(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ctx.mark()

        return Mark()

    def training_arguments(self, cls, output_dir: str, **extra):
        """Trainer arguments shared by both libraries (``cls``: TrainingArguments or a TRL config class)."""
        import torch

        w = self.workload
        if not w.documented_defaults:
            # Same compute/memory trade-off on both sides (TRL's configs default to checkpointing on,
            # rlft's RewardConfig too, as TRL 0.7.10's); at this size recomputation buys nothing.
            # The *_defaults workloads leave it to each library's documented default instead.
            extra.setdefault("gradient_checkpointing", False)
        return cls(
            output_dir=output_dir, per_device_train_batch_size=w.batch_size, max_steps=w.warmup + w.steps,
            learning_rate=spec.LEARNING_RATE, logging_steps=10**6, save_strategy="no", report_to="none",
            use_cpu=not torch.cuda.is_available(), seed=fixtures.SEED, data_seed=fixtures.SEED, disable_tqdm=True,
            dataloader_num_workers=0,
            # Same precision on both sides: TRL's configs default to bf16 autocast even on CPU, rlft's
            # (transformers') to fp32. fp32 on CPU unless --bf16; bf16 autocast on CUDA.
            bf16=self.device == "cuda" or self.bf16, **extra,
        )

    def pairs(self) -> dict:
        """The workload's preference pairs as texts: prompt / chosen / rejected (answers without the prompt)."""
        return self.data["pairs_long"] if self.workload.data == "long" else self.data["pairs"]

    def texts(self) -> list[str]:
        """The workload's SFT documents."""
        return self.data["texts_long"] if self.workload.data == "long" else self.data["texts"]


def _region(marks: list[dict], first: int, last: int, ncpu: int, hz: int, flops_per_token: float | None) -> dict:
    a, b = marks[first], marks[last]
    wall = b["t"] - a["t"]
    own = b["cpu"] - a["cpu"]
    machine = (b["busy"] - a["busy"]) / hz
    step_times = [marks[i + 1]["t"] - marks[i]["t"] for i in range(first, last)]
    explicit = [m["tokens"] for m in marks[first + 1 : last + 1]]
    tokens = sum(explicit) if all(t is not None for t in explicit) else b["batch_tokens"] - a["batch_tokens"]
    flops = b["flops"] - a["flops"] if flops_per_token is None else flops_per_token * tokens
    return {
        "wall_s": wall,
        "step_s": step_times,
        "steps_per_s": (last - first) / wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "grad_tokens": b["grad_tokens"] - a["grad_tokens"],
        "nograd_tokens": b["nograd_tokens"] - a["nograd_tokens"],
        "model_flops": flops,
        "flops_per_s": flops / wall,
        "cpu_s": own,
        "cpu_util": own / max(wall * ncpu, 1e-9),
        "foreign_cpu": max(0.0, machine - own) / max(wall * ncpu, 1e-9),
        "loadavg_1m": [a["load"], b["load"]],
    }


def _profile_breakdown(prof, wall: float) -> dict:
    totals: dict[str, float] = {}
    ops: list[tuple[str, float]] = []
    op_total = 0.0
    for evt in prof.key_averages():
        if not evt.key.startswith(("aten::", "mkldnn::")):  # mkldnn::: rlft's oneDNN linears
            continue
        t = evt.self_cpu_time_total / 1e6
        op_total += t
        ops.append((evt.key, t))
        cat = next((c for c, names in OP_CATEGORIES if any(n in evt.key for n in names)), "other ops (elementwise, ...)")
        totals[cat] = totals.get(cat, 0.0) + t
    totals["python / framework (outside ops)"] = max(0.0, wall - op_total)
    share = {k: v / wall for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    top = [(k, t / wall) for k, t in sorted(ops, key=lambda kv: -kv[1])[:8]]
    return {"categories": share, "top_ops": top}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=("rlft", "trl"))
    parser.add_argument("--workload", required=True, choices=sorted(spec.WORKLOADS))
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--arch", default="gpt2", choices=fixtures.ARCHS + fixtures.TINY_ARCHS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="torch.profiler over the timed steps (slows them)")
    parser.add_argument("--cprofile", default=None, metavar="FILE",
                        help="cProfile the timed steps (Python-level: collation, trainer loop) into FILE (pstats)")
    parser.add_argument("--bf16", action="store_true", help="Trainer workloads under bf16 autocast on CPU too")
    parser.add_argument("--peak", action="store_true", help="also measure the matmul peak in this process")
    opts = parser.parse_args(argv)

    import torch

    torch.set_num_threads(opts.threads)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = spec.WORKLOADS[opts.workload]
    overrides = {k: v for k, v in (("warmup", opts.warmup), ("steps", opts.steps)) if v is not None}
    workload = spec.Workload(**{**base.to_dict(), **overrides})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.impl == "rlft":
        from workloads import impl_rlft as impl
    else:
        from workloads import impl_trl as impl
    import transformers

    ctx = Context(opts.fixtures, workload.arch or opts.arch, workload, device, bf16=opts.bf16)
    prof = None
    if opts.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else []))

        def on_mark(n):
            if n == workload.warmup:
                prof.start()
            elif n == workload.warmup + workload.steps:
                prof.stop()

        ctx.on_mark = on_mark
    if opts.cprofile:
        import cProfile

        cprof = cProfile.Profile()

        def on_mark_c(n):
            if n == workload.warmup:
                cprof.enable()
            elif n == workload.warmup + workload.steps:
                cprof.disable()
                cprof.dump_stats(opts.cprofile)

        ctx.on_mark = on_mark_c
    ctx.preload()
    gc.collect()
    measure.malloc_trim()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    measure.reset_peak_rss()
    rss_base = measure.rss_bytes()
    t0 = time.perf_counter()
    impl.run(ctx)
    total = time.perf_counter() - t0
    if len(ctx.marks) < workload.warmup + workload.steps:
        raise RuntimeError(f"{opts.impl}/{opts.workload}: {len(ctx.marks)} steps marked, expected {workload.warmup + workload.steps}")
    per_token = None if workload.flops_per_param_token is None else workload.flops_per_param_token * ctx.n_params
    region = _region(ctx.marks, workload.warmup - 1, workload.warmup + workload.steps - 1, os.cpu_count() or 1,
                     os.sysconf("SC_CLK_TCK"), per_token)
    result = {
        "impl": opts.impl,
        "library": impl.library_version(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "workload": opts.workload,
        "arch": ctx.arch,
        "device": device,
        "threads": opts.threads,
        "n_matmul_params": ctx.n_params,
        "total_s": total,
        "peak_rss_mib": measure.peak_rss_bytes() / 2**20,
        "peak_rss_delta_mib": (measure.peak_rss_bytes() - rss_base) / 2**20,
        **region,
    }
    if device == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if prof is not None:
        result["profile"] = _profile_breakdown(prof, region["wall_s"])
    if opts.peak:
        result["matmul_peak"] = measure.matmul_peak_flops(device)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

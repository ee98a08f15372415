"""DPO benchmark: training steps per second and peak memory on a fixed offline workload.

    python benchmarks/dpo_bench.py                    # rlft, live reference and precomputed reference
    python benchmarks/dpo_bench.py --impl rlft --steps 20 --json out.json

The workload is fixed: the tiny byte-level BPE tokenizer trained on rlft's shipped
corpus, a randomly initialised GPT-2 (seed 0) and preference pairs cut from the
corpus (prompt = a line's first words; chosen = the rest of that line; rejected =
the rest of another line). Nothing is downloaded.

Peer implementations plug into ``IMPLEMENTATIONS``: a function
``build(workload, model, tokenizer, dataset, args, precompute) -> trainer``
returning an object with ``.train()``. TRL's ``DPOTrainer`` is registered as
``"trl"`` and is used only when ``trl`` is importable (it is never a dependency).

Memory on CPU is measured with `rlft.utils.memory.peak_rss_delta` (a spawned child
process; the rise of peak RSS over the state after model and data are built), on
CUDA with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Workload:
    """The fixed benchmark workload (change only to define a new, named workload)."""

    n_pairs: int = 64
    prompt_words: int = 8
    batch_size: int = 4
    steps: int = 10
    max_length: int = 96
    max_prompt_length: int = 32
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    seed: int = 0
    extra: dict = field(default_factory=dict)


def make_pairs(workload: Workload) -> dict[str, list[str]]:
    """Deterministic preference pairs from the shipped corpus."""
    from rlft.testing.tiny import corpus_lines

    rng = random.Random(workload.seed)
    lines = [l.split() for l in corpus_lines() if len(l.split()) > workload.prompt_words + 4]
    rng.shuffle(lines)
    pairs = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(workload.n_pairs):
        words, other = lines[i], lines[(i + 1) % len(lines)]
        pairs["prompt"].append(" ".join(words[: workload.prompt_words]))
        pairs["chosen"].append(" " + " ".join(words[workload.prompt_words :]))
        pairs["rejected"].append(" " + " ".join(other[workload.prompt_words :]))
    return pairs


def build_inputs(workload: Workload):
    """(model, tokenizer, dataset) of the workload; the tokenizer is cached in a temp folder."""
    from datasets import Dataset
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from rlft.testing import tiny

    tok_dir = os.path.join(tempfile.gettempdir(), "rlft-bench-tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tiny.build_tokenizer(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=workload.n_embd, n_layer=workload.n_layer, n_head=workload.n_head,
        n_positions=max(256, workload.max_length), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(workload.seed)
    model = GPT2LMHeadModel(config)
    return model, tokenizer, Dataset.from_dict(make_pairs(workload))


def _training_args(workload: Workload, output_dir: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=workload.batch_size, max_steps=workload.steps,
        learning_rate=1e-4, report_to=[], use_cpu=not torch.cuda.is_available(), logging_steps=10**9,
        save_strategy="no", remove_unused_columns=False, seed=workload.seed, disable_tqdm=True,
    )


# ------------------------------------------------------------------ implementations
def build_rlft(workload, model, tokenizer, dataset, args, precompute):
    from rlft import DPOTrainer

    return DPOTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=dataset,
                      max_length=workload.max_length, max_prompt_length=workload.max_prompt_length,
                      precompute_ref_log_probs=precompute)


def build_trl(workload, model, tokenizer, dataset, args, precompute):  # pragma: no cover - needs trl
    import trl

    kwargs = dict(model=model, args=args, train_dataset=dataset, max_length=workload.max_length,
                  max_prompt_length=workload.max_prompt_length, precompute_ref_log_probs=precompute)
    # TRL 0.7 takes tokenizer=, recent TRL processing_class=.
    try:
        return trl.DPOTrainer(tokenizer=tokenizer, **kwargs)
    except TypeError:
        return trl.DPOTrainer(processing_class=tokenizer, **kwargs)


IMPLEMENTATIONS = {"rlft": build_rlft, "trl": build_trl}


# ------------------------------------------------------------------ measurements
class _StepTimer:
    """A TrainerCallback recording wall time at each step end (first step = warm-up, not timed)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self):
                self.times = []

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter())

        return Timer()


def time_steps(impl: str, workload: Workload, precompute: bool) -> dict:
    model, tokenizer, dataset = build_inputs(workload)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = IMPLEMENTATIONS[impl](workload, model, tokenizer, dataset, _training_args(workload, out), precompute)
        timer = _StepTimer()
        trainer.add_callback(timer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    steps = len(timer.times) - 1
    result = {"steps_per_s": steps / (timer.times[-1] - timer.times[0]) if steps > 0 else float("nan"), "train_s": total}
    if torch.cuda.is_available():
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


# Module-level so that peak_rss_delta's spawned child can import them.
_MEM_IMPL = os.environ.get("RLFT_BENCH_IMPL", "rlft")


def _mem_setup():
    return build_inputs(Workload(**json.loads(os.environ.get("RLFT_BENCH_WORKLOAD", "{}"))))


def _train(state, precompute: bool):
    model, tokenizer, dataset = state
    workload = Workload(**json.loads(os.environ.get("RLFT_BENCH_WORKLOAD", "{}")))
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = IMPLEMENTATIONS[os.environ.get("RLFT_BENCH_IMPL", "rlft")](
            workload, model, tokenizer, dataset, _training_args(workload, out), precompute)
        trainer.train()


def _train_live(state):
    _train(state, False)


def _train_precompute(state):
    _train(state, True)


def peak_memory(impl: str, workload: Workload, precompute: bool) -> int:
    """Peak-RSS rise (bytes) of building the trainer and training, in a fresh child process."""
    from rlft.utils.memory import peak_rss_delta

    os.environ["RLFT_BENCH_IMPL"] = impl
    os.environ["RLFT_BENCH_WORKLOAD"] = json.dumps(asdict(workload))
    return peak_rss_delta(_train_precompute if precompute else _train_live, setup=_mem_setup, timeout=900)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="rlft", choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--steps", type=int, default=Workload.steps)
    parser.add_argument("--no-memory", action="store_true", help="skip the (slower) peak-memory runs")
    parser.add_argument("--json", help="write the results here")
    opts = parser.parse_args(argv)
    workload = Workload(steps=opts.steps)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    n_params = sum(p.numel() for p in build_inputs(workload)[0].parameters())
    results = {"impl": opts.impl, "workload": asdict(workload), "n_params": n_params, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for name, precompute in (("live_reference", False), ("precomputed_reference", True)):
        results[name] = time_steps(opts.impl, workload, precompute)
        if not opts.no_memory and not torch.cuda.is_available():
            results[name]["peak_rss_delta_bytes"] = peak_memory(opts.impl, workload, precompute)
        print(f"{name:>22}: {json.dumps(results[name])}", flush=True)
    if "peak_rss_delta_bytes" in results["live_reference"]:
        saved = results["live_reference"]["peak_rss_delta_bytes"] - results["precomputed_reference"]["peak_rss_delta_bytes"]
        results["precompute_memory_saved_bytes"] = saved
        print(f"precompute_ref_log_probs saved {saved / 2**20:.1f} MiB of peak RSS "
              f"(reference copy = {4 * n_params / 2**20:.1f} MiB of fp32 weights)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

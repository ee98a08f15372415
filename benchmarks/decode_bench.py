"""Time rlft's ``generate`` on the benchmark workloads' shapes, before and after, in one run.

Each case runs `rlft.utils.sampling_generate.generate` (the function every rlft trainer samples with)
on the fixture models of ``benchmarks/compare.py`` with its workloads' shapes: the same left-padded
prompts, rows and new tokens (EOS suppressed until then, pure sampling). The variants alternate
(ABAB...) so slow drift of the machine hits both alike; each is seeded the same way, so the tokens
of the two can be compared too.

Variants:
- ``torch``: the path before `rlft.utils.decode`: transformers' sampling loop, torch's linear layers
  (``RLFT_DECODE_LOOP=transformers RLFT_DECODE_LINEARS=torch``).
- ``packed``: transformers' loop, fp32 linears with oneDNN-packed weights during the call.
- ``default``: what rlft does now: packed linears and `rlft.utils.decode.lean_decode`.
- ``compiled`` (``--compile``): torch's linears with transformers' static cache and ``torch.compile`` of the
  model's forward (transformers' ``compile_config``); its compile time shows in the first call.

``--profile`` prints where one ``torch`` and one ``packed`` call spend their time: matrix products
(addmm / mm / linear) against everything else (attention, sampling, small ops, Python).

    python benchmarks/decode_bench.py                       # grpo, ppo, best_of_n shapes
    python benchmarks/decode_bench.py --cases demo_ppo      # SmolLM2-135M (needs `rlft demo`'s checkpoint)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from workloads import critic_free as cf
from workloads import fixtures, spec

#: case -> (model, prompt rows, samples per prompt, new tokens)
CASES = {
    "grpo": ("gpt2", cf.GROUP_PROMPTS, cf.GROUP_K, cf.GROUP_NEW_TOKENS),
    "ppo": ("gpt2", spec.PPO_PROMPTS, 1, spec.PPO_NEW_TOKENS),
    "best_of_n": ("gpt2", spec.BON_QUERIES, spec.BON_SAMPLE_SIZE, spec.BON_NEW_TOKENS),
    "demo_ppo": ("smollm2", spec.DEMO_BATCH, 1, spec.DEMO_NEW_TOKENS),
}
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "mkldnn::_linear_pointwise", "aten::bmm")


def _inputs(case: str, fixtures_dir: str):
    """(model, input_ids, attention_mask, generation kwargs) of one case."""
    from rlft.trainer._helpers import pad_with_mask

    arch, n_prompts, k, new = CASES[case]
    if arch == "smollm2":
        model, tok = fixtures.load_smollm2()
        prompts = fixtures.demo_prompts(tok)[:n_prompts]
    else:
        model, tok = fixtures.load_model(fixtures_dir, arch), fixtures.load_tokenizer(fixtures_dir)
        prompts = fixtures.load_data(fixtures_dir)["prompts"][:n_prompts]
    model.eval()
    queries = [torch.tensor(p, dtype=torch.long) for p in prompts for _ in range(k)]  # each prompt k times
    input_ids, attention_mask = pad_with_mask(queries, tok.eos_token_id, "left")
    gen = spec.ppo_generation_kwargs(tok.eos_token_id, new)
    return model, input_ids, attention_mask, gen


def _variant_call(name: str, model, input_ids, attention_mask, gen):
    from rlft.utils.sampling_generate import generate

    extra = {}
    if name == "compiled":  # transformers' own route: a static cache and its compiled forward, also on CPU
        from transformers import CompileConfig

        compile_config = CompileConfig(mode="default", fullgraph=False)
        compile_config._compile_all_devices = True
        extra = {"cache_implementation": "static", "compile_config": compile_config}

    # packed weights are new tensors every call: a compiled forward would recompile on each, so not with compile
    env = {"RLFT_DECODE_LINEARS": "packed" if name in ("packed", "default") else "torch",
           "RLFT_DECODE_LOOP": "lean" if name == "default" else "transformers"}

    def call():
        os.environ.update(env)
        return generate(model, input_ids=input_ids, attention_mask=attention_mask, **gen, **extra)

    return call


def _matmul_share(call) -> tuple[float, float]:
    """(ms in matrix products, ms in all ops) of one call, from torch's profiler (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e3
    return mm, total


def run_case(case: str, variants: list[str], repeats: int, fixtures_dir: str, profile: bool) -> dict:
    model, input_ids, attention_mask, gen = _inputs(case, fixtures_dir)
    calls = {v: _variant_call(v, model, input_ids, attention_mask, gen) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, float] = {}
    tokens: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for v in variants:  # warm-up (and compile) once each, seeded, to compare the tokens
            torch.manual_seed(0)
            start = time.perf_counter()
            tokens[v] = calls[v]()
            first[v] = time.perf_counter() - start
        for _ in range(repeats):
            for v in variants:
                torch.manual_seed(1)
                start = time.perf_counter()
                calls[v]()
                times[v].append(time.perf_counter() - start)
        shares = {v: _matmul_share(calls[v]) for v in variants if v != "compiled"} if profile else {}
    for name in ("RLFT_DECODE_LINEARS", "RLFT_DECODE_LOOP"):
        os.environ.pop(name, None)
    rows, width = input_ids.shape
    new = gen["max_new_tokens"]
    out = {"case": case, "rows": rows, "prompt_width": width, "new_tokens": new, "variants": {}}
    for v in variants:
        med = statistics.median(times[v])
        out["variants"][v] = {"median_s": med, "min_s": min(times[v]), "first_call_s": first[v],
                              "ms_per_token_step": 1e3 * med / new, "same_tokens_as_first": torch.equal(tokens[v], tokens[variants[0]])}
        if v in shares:
            out["variants"][v]["profile_matmul_ms"], out["variants"][v]["profile_total_ms"] = shares[v]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="grpo,ppo,best_of_n", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant (slow to compile)")
    parser.add_argument("--profile", action="store_true", help="print the matmul share of one call per variant")
    parser.add_argument("--fixtures", default=None, help="fixture folder (default: a fresh temporary one)")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    variants = ["torch", "packed", "default"] + (["compiled"] if args.compile else [])
    tmp = None
    if args.fixtures is None:
        tmp = tempfile.TemporaryDirectory()
        args.fixtures = tmp.name
    fixtures.build_all(args.fixtures)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print("| case | rows x (prompt + new) | variant | median s | ms / token step | first call s | speed-up | same tokens | profile: matmul / all ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        res = run_case(case, variants, args.repeats, args.fixtures, args.profile)
        base = res["variants"][variants[0]]["median_s"]
        for v, r in res["variants"].items():
            prof = f"{r['profile_matmul_ms']:.0f} / {r['profile_total_ms']:.0f}" if "profile_total_ms" in r else ""
            print(f"| {case} | {res['rows']} x ({res['prompt_width']} + {res['new_tokens']}) | {v} | {r['median_s']:.3f} | "
                  f"{r['ms_per_token_step']:.2f} | {r['first_call_s']:.2f} | {base / r['median_s']:.2f}x | "
                  f"{r['same_tokens_as_first']} | {prof} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

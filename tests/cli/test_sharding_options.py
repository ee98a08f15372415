"""``--fsdp`` / ``--deepspeed`` / ``--accelerate_config`` on the command line (rlft/cli/_shard.py): how they
are read, the one-line errors of wrong combinations and missing files, and the refusal to train
unsharded when sharding was asked for. The 2-process runs are in tests/reliability/test_cli_sharded.py."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from rlft.cli import COMMANDS, main
from rlft.cli._args import parse_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "configs" / "accelerate"


def parse(command: str, *argv: str):
    module = importlib.import_module(COMMANDS[command].module)
    defaults = module.CLI_DEFAULTS() if callable(module.CLI_DEFAULTS) else module.CLI_DEFAULTS
    return parse_command(command, module.arguments(), ["--tiny", *argv], cli_defaults=defaults, tiny_preset=module.TINY_PRESET)


def test_fsdp_alone_is_full_shard_fsdp2(tmp_path):
    args, _config = parse("ppo", "--fsdp", "--output_dir", str(tmp_path / "p"))
    assert args.fsdp is True and args.fsdp_config == {"version": 2, "reshard_after_forward": True}
    args, _ = parse("ppo", "--fsdp", "full_shard offload", "--output_dir", str(tmp_path / "p"))
    assert args.fsdp_config == {"version": 2, "reshard_after_forward": True, "cpu_offload": True}
    args, _ = parse("ppo", "--fsdp", "shard_grad_op", "--fsdp_config", '{"fsdp_state_dict_type": "FULL_STATE_DICT"}',
                    "--output_dir", str(tmp_path / "p"))
    assert args.fsdp_config == {"version": 2, "reshard_after_forward": False, "state_dict_type": "FULL_STATE_DICT"}
    # the Trainer commands: transformers' own option, given to TrainingArguments already resolved
    _, _, training = parse("sft", "--fsdp", "--output_dir", str(tmp_path / "s"))
    assert training.fsdp and training.fsdp_plugin_args["fsdp_version"] == 2
    assert training.fsdp_plugin_args["reshard_after_forward"] is True
    args, _, _ = parse("sft", "--output_dir", str(tmp_path / "s"))  # nothing asked: nothing set
    assert args.accelerate_config is None


def test_accelerate_config_files_become_the_options(tmp_path):
    _, _, training = parse("sft", "--accelerate_config", str(EXAMPLES / "fsdp2.yaml"), "--output_dir", str(tmp_path / "s"))
    assert training.fsdp_plugin_args["fsdp_version"] == 2
    assert training.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert training.fsdp_plugin_args["state_dict_type"] == "SHARDED_STATE_DICT"
    assert training.bf16  # the file's mixed_precision
    args, config = parse("ppo", "--accelerate_config", str(EXAMPLES / "fsdp2.yaml"), "--output_dir", str(tmp_path / "p"))
    assert args.fsdp is True and args.fsdp_config["transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert args.fsdp_config["cpu_offload"] is False  # accelerate's fsdp_offload_params
    assert config.accelerator_kwargs["mixed_precision"] == "bf16"
    pytest.importorskip("deepspeed")
    args, _ = parse("ppo", "--accelerate_config", str(EXAMPLES / "zero3.yaml"), "--output_dir", str(tmp_path / "p"))
    assert args.deepspeed == "examples/configs/accelerate/ds_zero3.json" and not args.fsdp


@pytest.fixture
def bad_inputs(tmp_path):
    multi_gpu = tmp_path / "ddp.yaml"
    multi_gpu.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2}\nmegatron_lm_config: {}\n")
    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n")
    bad_json = tmp_path / "ds.json"
    bad_json.write_text("{stage: 3")
    fsdp2 = str(EXAMPLES / "fsdp2.yaml")
    return {
        "fsdp and deepspeed": (["ppo", "--fsdp", "--deepspeed", str(EXAMPLES / "ds_zero3.json")], "--fsdp and --deepspeed both choose the sharding; keep one"),
        "fsdp and deepspeed (sft)": (["sft", "--fsdp", "--deepspeed", str(EXAMPLES / "ds_zero3.json")], "keep one"),
        "accelerate config and fsdp": (["dpo", "--accelerate_config", fsdp2, "--fsdp"], "both choose the sharding; keep one of them"),
        "missing accelerate config": (["reward", "--accelerate_config", "nope.yaml"], "no such file; write one with `accelerate config`"),
        "missing deepspeed file": (["ppo", "--deepspeed", "nope.json"], "--deepspeed nope.json: no such file; examples/configs/accelerate/ds_zero3.json"),
        "bad deepspeed json": (["ppo", "--deepspeed", str(bad_json)], "not valid JSON"),
        "ddp file": (["sft", "--accelerate_config", str(multi_gpu)], "distributed_type is MULTI_GPU, which shards nothing"),
        "unread keys": (["ppo", "--accelerate_config", str(extra)], "rlft does not read ['megatron_lm_config']"),
        "fsdp1": (["ppo", "--accelerate_config", str(fsdp1)], "rlft's sharded paths are FSDP2's; set version 2"),
        "bad word": (["ppo", "--fsdp", "full_shard turbo"], "unknown word(s) ['turbo']; use full_shard"),
        "two strategies": (["ppo", "--fsdp", "full_shard shard_grad_op"], "contradict each other"),
        "config without fsdp": (["ppo", "--fsdp_config", '{"version": 2}'], "--fsdp_config is set but --fsdp is not"),
        "unknown fsdp_config key": (["ppo", "--fsdp", "--fsdp_config", '{"sharding": 1}'], "--fsdp_config: unknown key(s) ['sharding']"),
        "shared layers": (["ppo", "--fsdp", "--num_shared_layers", "1"], "--num_shared_layers cannot be combined with sharding"),
    }


def test_wrong_combinations_are_one_line_errors(bad_inputs, tmp_path, capsys):
    for name, (argv, expected) in bad_inputs.items():
        out = tmp_path / f"run-{name.replace(' ', '-')}"
        code = main([argv[0], "--tiny", *argv[1:], "--output_dir", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert expected in err, (name, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"rlft {argv[0]}: error: "), (name, err)
        assert not out.exists(), name


@pytest.mark.parametrize("command", ["ppo", "sft"])
def test_sharding_that_a_single_process_cannot_give_is_refused(command, tmp_path, capsys):
    """One process: accelerate would train unsharded without a word; the command says so and how to launch."""
    out = tmp_path / "run"
    code = main([command, "--tiny", "--fsdp", "--output_dir", str(out), "--no_plots"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, err
    assert "FSDP2 was asked for but accelerate runs none (one process): start several processes: accelerate launch" in err
    assert not out.exists()  # nothing trained: the run directory is gone again


def test_ppo_plugin_wraps_the_models_blocks(model_path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.cli._shard import PPOShardingOptions, ppo_accelerator_kwargs

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    kwargs = ppo_accelerator_kwargs(PPOShardingOptions(fsdp=True, fsdp_config={"version": 2, "cpu_offload": True}), model)
    plugin = kwargs["fsdp_plugin"]
    assert isinstance(plugin, FullyShardedDataParallelPlugin) and plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["GPT2Block"]  # the value-head wrapper has none: the LM's blocks
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)  # PPO checkpoints reshard on load
    assert ppo_accelerator_kwargs(PPOShardingOptions(), model) == {}


def test_each_process_draws_its_own_prompts():
    import random

    from rlft.cli.ppo import _pick_prompts

    assert _pick_prompts(20, 4, 123, 0, 1) == random.Random(123).sample(range(20), 4)  # one process: as before
    two = [_pick_prompts(20, 4, 123, rank, 2) for rank in range(2)]
    assert not set(two[0]) & set(two[1]) and two == [_pick_prompts(20, 4, 123, r, 2) for r in range(2)]
    few = [_pick_prompts(5, 4, 123, rank, 2) for rank in range(2)]  # not enough for distinct prompts: each its own draw
    assert few[0] != few[1] and all(len(set(f)) == 4 for f in few)


def test_non_main_process_writes_nothing(tmp_path, monkeypatch):
    from rlft.cli._run import RunOptions, _FollowerRunDir, open_run

    monkeypatch.setenv("RANK", "1")
    run = open_run(str(tmp_path / "run"), RunOptions(), "sft", {"a": 1})
    assert isinstance(run, _FollowerRunDir)
    run.log_metrics(1, {"loss": 1.0})
    run.save_samples("before", [{"x": 1}])
    run.write_model_card("t", "b")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("RANK", "0")
    run = open_run(str(tmp_path / "run"), RunOptions(), "sft", {"a": 1, "accelerate_config": "x.yaml"})
    assert (tmp_path / "run" / "config.yaml").is_file() and "accelerate_config: null" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.dumps(run.read_metrics()) == "[]"

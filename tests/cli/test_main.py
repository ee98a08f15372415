"""`rlft` entry point: help for every command and option, errors, and how option values are layered."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlft.cli import COMMANDS, main
from rlft.cli._args import FILLED_FIELDS, INTERNAL_FIELDS, CLIError, field_docstrings, options_from_signature, parse_command


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "reward", "dpo", "ppo", "bon", "ddpo", "demo"):
        assert re.search(rf"^  {name}\s+\S", out, re.M), name
    assert main([]) == 2  # a command is required
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_help_runs_as_installed():
    exe = shutil.which("rlft", path=os.path.dirname(sys.executable)) or shutil.which("rlft")
    if exe is None:
        pytest.skip("the rlft console script is not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in COMMANDS)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.startswith("rlft ")


@pytest.mark.parametrize("command", ["ppo", "sft", "reward", "dpo", "bon", "ddpo"])
def test_command_help_has_every_field_with_a_description(command, capsys):
    import importlib

    from rlft.cli._args import build_parser

    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    module = importlib.import_module(COMMANDS[command].module)
    dataclass_types = module.arguments()
    hidden = INTERNAL_FIELDS | set(FILLED_FIELDS) if command == "ppo" else INTERNAL_FIELDS
    fields = [f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init and f.name not in hidden]
    missing = [name for name in fields if not re.search(rf"^  --{name}\b", out, re.M)]
    assert fields and not missing, f"not in rlft {command} --help: {missing}"
    assert not [name for name in hidden if re.search(rf"^  --{name}\b", out, re.M)]  # derived fields are not options
    assert "--config FILE" in out
    helps = {a.dest: a.help for a in build_parser(command, dataclass_types, "")._actions}
    undocumented = [name for name in fields if not helps.get(name)]
    assert not undocumented, f"options of rlft {command} without a description: {undocumented}"


def test_demo_help(capsys):
    pytest.importorskip("rlft.demo")
    assert main(["demo", "--help"]) == 0
    assert "--output_dir" in capsys.readouterr().out


def test_field_docstrings_reads_the_text_under_each_field():
    from rlft.trainer.ppo_config import PPOConfig

    docs = field_docstrings(PPOConfig)
    assert docs["learning_rate"] == "Adam learning rate."
    assert docs["kl_penalty"].startswith("Per-token KL estimator")


def test_options_from_the_trainer_signature():
    from rlft.trainer.dpo_trainer import DPOTrainer

    options = options_from_signature("O", DPOTrainer.__init__, exclude={"padding_value"}, doc=DPOTrainer.__doc__)
    fields = {f.name: f for f in dataclasses.fields(options)}
    assert fields["beta"].default == 0.1 and "KL" in fields["beta"].metadata["help"]
    assert set(fields) >= {"loss_type", "label_smoothing", "max_length", "precompute_ref_log_probs", "ref_adapter_name"}
    assert not set(fields) & {"model", "args", "tokenizer", "callbacks", "padding_value", "train_dataset", "optimizers"}


# ---------------------------------------------------------------------- layering
@dataclasses.dataclass
class Script:
    output_dir: str = None
    """run dir"""
    tiny: bool = False
    """tiny"""
    resume: bool = False
    """resume"""
    a: int = 1
    """a"""
    b: str = "x"
    """b"""
    c: float = 0.5
    """c"""
    kwargs: dict = dataclasses.field(default_factory=dict)
    """a dict"""

    def __post_init__(self):
        if self.a < 0:
            raise ValueError("Script.a must be >= 0")


def parse(argv, **kw):
    return parse_command("test", [Script], argv, cli_defaults=kw.get("cli"), tiny_preset=kw.get("tiny"))[0]


def test_layers_defaults_tiny_saved_config_file_then_flags(tmp_path):
    assert parse(["--output_dir", "o"]).a == 1
    assert parse(["--output_dir", "o"], cli={"a": 2}).a == 2
    assert parse(["--output_dir", "o", "--tiny"], cli={"a": 2}, tiny={"a": 3, "b": "t"}).a == 3
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(run), "a": 4, "b": "saved", "c": 0.1}))
    resumed = parse(["--output_dir", str(run), "--resume", "--tiny"], tiny={"a": 3})
    assert (resumed.a, resumed.b, resumed.resume) == (4, "saved", True)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"a": 5, "kwargs": {"k": [1]}}))
    from_file = parse(["--output_dir", str(run), "--resume", "--config", str(cfg)])
    assert (from_file.a, from_file.b, from_file.kwargs) == (5, "saved", {"k": [1]})
    flags = parse(["--output_dir", str(run), "--resume", "--config", str(cfg), "--a", "6", "--kwargs", '{"z": 2}'])
    assert (flags.a, flags.c, flags.kwargs) == (6, 0.1, {"z": 2})
    # no output_dir anywhere: a fresh one under runs/
    assert re.match(r"runs[/\\]test-\d{8}-\d{6}$", parse([]).output_dir)


def test_layering_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("aa: 1\nzzz: 2\n")
    with pytest.raises(CLIError, match=r"unknown option\(s\) 'aa' \(did you mean 'a'\?\), 'zzz'"):
        parse(["--config", str(bad)])
    with pytest.raises(CLIError, match="no such file"):
        parse(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(CLIError, match="expected a mapping"):
        parse(["--config", str(tmp_path / "list.yaml")])
    with pytest.raises(CLIError, match="--resume needs --output_dir"):
        parse(["--resume"])
    with pytest.raises(CLIError, match="holds no config.yaml"):
        parse(["--resume", "--output_dir", str(tmp_path)])
    with pytest.raises(CLIError, match="Script.a must be >= 0"):  # __post_init__'s error, one line, naming the field
        parse(["--a", "-1"])  # (a negative number after its option parses as the value)
    with pytest.raises(CLIError, match="expected a JSON object"):
        parse(["--kwargs", "not json"])
    with pytest.raises(CLIError, match=r"unknown option --aa \(did you mean --a\?\)"):
        parse(["--aa", "1"])
    assert parse(["--c", "-1e-3"]).c == -1e-3 and parse(["--c=-.5"]).c == -0.5


def test_usage_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["ppo", "--model_name_or_path", str(tmp_path / "nope"), "--dataset", "tiny", "--reward", "length",
                 "--output_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlft ppo: error: --model_name_or_path") and "Traceback" not in err
    assert main(["sft", "--max_steps", "x"]) == 2


@pytest.mark.parametrize("command", ["ppo", "sft", "reward", "dpo", "bon", "ddpo"])
def test_saved_config_loads_back_to_the_same_values(command, tmp_path):
    """config.yaml as written for a run parses back (with --config) into the same values."""
    import importlib

    from rlft.cli._args import merged_config
    from rlft.reporting import RunDir

    module = importlib.import_module(COMMANDS[command].module)
    defaults = module.CLI_DEFAULTS() if callable(module.CLI_DEFAULTS) else module.CLI_DEFAULTS
    parsed = parse_command(command, module.arguments(), ["--tiny", "--output_dir", str(tmp_path / "run")],
                           cli_defaults=defaults, tiny_preset=module.TINY_PRESET)
    path = RunDir(tmp_path / "run").save_config(merged_config(*parsed))
    again = parse_command(command, module.arguments(), ["--config", str(path)])
    first, second = merged_config(*parsed), merged_config(*again)
    differ = {k: (first[k], second[k]) for k in first if str(first[k]) != str(second[k])}
    assert not differ


def test_example_configs_parse():
    """Every examples/configs/<command>_*.yaml is a valid config of its command."""
    import importlib

    from rlft.cli._args import merged_config

    folder = Path(__file__).resolve().parents[2] / "examples" / "configs"
    files = sorted(folder.glob("*.yaml"))
    assert {p.name.split("_")[0] for p in files} >= {"ppo", "sft", "reward", "dpo", "bon", "ddpo"}
    for path in files:
        command = path.name.split("_")[0]
        module = importlib.import_module(COMMANDS[command].module)
        parsed = parse_command(command, module.arguments(), ["--config", str(path), "--output_dir", "unused"])
        values = merged_config(*parsed)
        for key, value in yaml.safe_load(path.read_text()).items():
            assert values[key] == (pytest.approx(value) if isinstance(value, float) else value), (path.name, key)

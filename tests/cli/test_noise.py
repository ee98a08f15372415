"""Third-party warnings that rlft itself caused are gone from a command's output (issue 20, section 5)."""

from __future__ import annotations

import pytest

from rlft.cli import main

NOISE = ("PAD/BOS/EOS", "loss_type=None", "is_gradient_checkpointing", "No dataset is provided", "LOAD REPORT", "pin_memory")


@pytest.mark.parametrize("argv", [
    ["sft", "--tiny", "--use_peft", "--use_cpu", "false"],
    ["ppo", "--tiny", "--use_peft"],
    ["reward", "--tiny"],
])
def test_no_noise_rlft_causes(argv, tmp_path, capfd):
    pytest.importorskip("peft")
    assert main([*argv, "--output_dir", str(tmp_path / "run"), "--plots", "false"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    assert not [n for n in NOISE if n in text], text

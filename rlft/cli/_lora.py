"""LoRA options of the training commands (sft, reward, dpo, ppo) and of ``rlft demo``: one place
that turns rank, alpha, dropout and target modules into a ``peft.LoraConfig``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ._args import CLIError

#: peft's own per-architecture choice: every linear layer of the blocks, not the output head.
ALL_LINEAR = "all-linear"
#: Architectures whose linear layers are transformers' ``Conv1D`` (weights stored transposed).
CONV1D_MODEL_TYPES = ("gpt2",)


@dataclass
class LoraOptions:
    """Train a LoRA adapter instead of every weight (peft)."""

    use_peft: bool = False
    """Train a LoRA adapter (needs peft) instead of every weight; model/ then holds the adapter (and PPO's value head)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0: none; with PPO, dropout makes the first minibatch's ratio differ from 1)."""
    lora_target_modules: str = ALL_LINEAR
    """'all-linear' (every linear layer of the blocks, chosen per architecture by peft) or a comma list such as q_proj,v_proj."""


def target_modules(spec: str):
    """'all-linear' as is, or the comma list as a list of module names."""
    if spec.strip() == ALL_LINEAR:
        return ALL_LINEAR
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise CLIError(f"--lora_target_modules {spec!r}: give '{ALL_LINEAR}' or a comma list of module names (q_proj,v_proj).")
    return names


def make_lora_config(r: int, alpha: float, dropout: float, targets: str, task_type: str, model_path: str | None = None):
    """A ``peft.LoraConfig``; ``model_path`` (a model folder) sets ``fan_in_fan_out`` for Conv1D architectures (GPT-2)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise CLIError('LoRA needs the peft package: pip install "rlft[peft]" (or pip install peft).') from None
    model_type = None
    if model_path and (Path(model_path) / "config.json").is_file():
        model_type = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(targets), task_type=task_type,
        fan_in_fan_out=model_type in CONV1D_MODEL_TYPES,
    )


def lora_config(options: LoraOptions, task_type: str, model_path: str | None = None):
    """The LoraConfig of ``options`` (None without --use_peft). ``task_type``: CAUSAL_LM, SEQ_2_SEQ_LM or SEQ_CLS."""
    if not options.use_peft:
        return None
    return make_lora_config(options.lora_r, options.lora_alpha, options.lora_dropout, options.lora_target_modules,
                            task_type, model_path)

"""Logging and the model card of `PPOTrainer` (TRL 0.7's `log_stats` and `create_model_card`), as a mixin."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..core import convert_to_scalar


class PPOLoggingMixin:
    """Needs ``self.accelerator``, ``self.config``, ``self.model``, ``self.current_device``,
    ``self.current_step``, ``self.kl_ctl`` and ``self.has_value_head`` (set by `PPOTrainer`)."""

    def log_stats(self, stats: dict, batch: dict, rewards: list, columns_to_log: list = ["query", "response"]):  # noqa: B006 (TRL's signature)
        """Send ``stats`` and a table of samples with their rewards to the configured tracker.

        ``rewards`` and the ``columns_to_log`` of ``batch`` are this process's; the reward stats and
        the table cover the samples of every process. Returns the logged dict.
        """
        if not isinstance(rewards, Tensor):
            rewards = torch.tensor([float(r) for r in rewards])
        rewards = self.accelerator.gather(rewards.float().to(self.current_device).flatten())
        missing = [c for c in columns_to_log if c not in batch]
        if missing:
            raise ValueError(f"log_stats: batch has no column(s) {missing}; it has {sorted(batch)}.")
        logs = {k: (v.float() if isinstance(v, Tensor) and v.dtype == torch.bfloat16 else v) for k, v in stats.items()}
        logs["env/reward_mean"] = rewards.mean().item()
        logs["env/reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
        logs["env/reward_dist"] = rewards.cpu().numpy()
        if self.config.log_with is None:
            return logs
        # Every process's samples, in the order of the gathered rewards (as TRL); a collective call.
        from accelerate.utils import gather_object

        columns = [gather_object(list(batch[c])) for c in columns_to_log]
        if not self.accelerator.is_main_process:
            return logs
        rows = [list(r) + [float(x)] for r, x in zip(zip(*columns), rewards.cpu().tolist())]
        if self.config.log_with == "wandb":
            import wandb

            logs["game_log"] = wandb.Table(columns=[*columns_to_log, "reward"], rows=rows)
            self.accelerator.log(logs)
        else:  # tensorboard takes scalars only; the samples go in as a text table
            scalars = {k: v for k, v in convert_to_scalar(logs).items() if isinstance(v, (int, float))}
            self.accelerator.log(scalars, step=self.current_step)
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            header = " | ".join([*columns_to_log, "reward"])
            table = "\n".join([header, " | ".join("---" for _ in range(len(columns_to_log) + 1))]
                              + [" | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) for row in rows])
            tracker.add_text("game_log", table, global_step=self.current_step)
        return logs

    def create_model_card(self, path: str, model_name: Optional[str] = "TRL Model") -> None:
        """Write a model card (README.md) describing the PPO training into ``path``."""
        cfg = self.config
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        base = getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "") or "unknown"
        value_head_line = ("- Value head: saved in `value_head.safetensors` (needed only to continue PPO training)"
                           if self.has_value_head else f"- Advantage estimator: {cfg.advantage_estimator} (critic-free, no value head)")
        rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in cfg.to_dict().items())
        card = f"""---
library_name: rlft
tags:
- rlft
- ppo
- reinforcement-learning
- rlhf
---

# {model_name}

A language model fine-tuned with PPO (reinforcement learning from a reward signal) using
[rlft](https://pypi.org/project/rlft/), a drop-in for the TRL 0.7 API.

- Base model: `{base}`
- Task: {cfg.task_name or "not recorded"}; query dataset: {cfg.query_dataset or "not recorded"}; reward model: {cfg.reward_model or "not recorded"}
- PPO steps done: {self.current_step}; final KL coefficient: {self.kl_ctl.value:.4g}
{value_head_line}

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path.name}")
tokenizer = AutoTokenizer.from_pretrained("{path.name}")
```

To continue training with the value head:

```python
from rlft import AutoModelForCausalLMWithValueHead

model = AutoModelForCausalLMWithValueHead.from_pretrained("{path.name}")
```

## Training configuration

| field | value |
|---|---|
{rows}
"""
        (path / "README.md").write_text(card, encoding="utf-8")

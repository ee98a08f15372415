"""PPOTrainer.log_stats(stats, batch, rewards, columns_to_log) with a tracker attached.

Neither wandb nor tensorboard is a dependency, so fakes stand in for them: a ``wandb`` module
and a ``torch.utils.tensorboard.SummaryWriter``, injected through ``sys.modules``. accelerate's
own WandBTracker / TensorBoardTracker wrap them, so everything between ``log_stats`` and the
tracker (``Accelerator.init_trackers``, ``Accelerator.log``, ``get_tracker``) is the real code.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import accelerate.tracking  # imported before any fake module exists: accelerate probes for trackers at import
import accelerate.utils
import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import set_seed

#: Step stats every logged dict carries, under TRL's names.
STEP_KEYS = (
    "objective/kl", "objective/kl_dist", "objective/kl_coef", "objective/entropy", "ppo/mean_scores",
    "ppo/std_scores", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/approxkl",
    "ppo/policy/clipfrac", "ppo/returns/mean", "ppo/val/vpred", "tokens/responses_len_mean",
    "ppo/learning_rate", "time/ppo/total",
)
REWARDS = [0.5, -1.25, 2.0, 0.75]


def _allow_tracker(monkeypatch, name: str) -> None:
    """Make rlft and accelerate treat ``name`` as installed (the fake module provides it)."""
    from accelerate.utils import LoggerType

    monkeypatch.setattr(f"rlft.trainer.ppo_config.is_{name}_available", lambda: True)
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [LoggerType(name)])


def _fake_wandb(monkeypatch) -> list:
    """A ``wandb`` module whose runs record ``log`` calls; returns the list of runs started."""
    runs: list = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Table:
        def __init__(self, columns=None, rows=None, data=None):
            self.columns, self.rows = columns, rows if rows is not None else data

    class Run:
        def __init__(self, **init_kwargs):
            self.init_kwargs, self.logged = init_kwargs, []

        def log(self, data, step=None, **kwargs):
            self.logged.append((step, dict(data)))

        def finish(self):
            pass

    def init(**kwargs):
        module.run = Run(**kwargs)
        runs.append(module.run)
        return module.run

    config_values: dict = {}
    module.Table, module.init, module.run = Table, init, None
    module.config = types.SimpleNamespace(values=config_values, update=lambda values, **kw: config_values.update(values))
    module.log = lambda data, step=None, **kw: module.run.log(data, step=step, **kw)
    monkeypatch.setitem(sys.modules, "wandb", module)
    _allow_tracker(monkeypatch, "wandb")
    return runs


def _fake_tensorboard(monkeypatch) -> list:
    """A ``torch.utils.tensorboard`` whose writers record scalars and texts; returns the writers made."""
    writers: list = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.__spec__ = importlib.machinery.ModuleSpec("torch.utils.tensorboard", None)

    class SummaryWriter:
        def __init__(self, log_dir=None, **kwargs):
            self.log_dir, self.scalars, self.texts, self.hparams = log_dir, [], [], []
            writers.append(self)

        def add_scalar(self, tag, value, global_step=None, **kw):
            self.scalars.append((tag, value, global_step))

        def add_scalars(self, tag, values, global_step=None, **kw):
            self.scalars.append((tag, dict(values), global_step))

        def add_text(self, tag, text, global_step=None, **kw):
            self.texts.append((tag, text, global_step))

        def add_hparams(self, hparams, metric_dict, **kw):
            self.hparams.append(hparams)

        def flush(self):
            pass

        def close(self):
            pass

    module.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(torch.utils, "tensorboard", module, raising=False)
    _allow_tracker(monkeypatch, "tensorboard")
    return writers


def _trainer_and_step(model_path, tokenizer, **config):
    """A PPOTrainer on the tiny gpt2, one step on 4 fixed samples; returns (trainer, stats, batch)."""
    set_seed(0)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, **config), model, None, tokenizer)
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(5, 900, (n,), generator=g) for n in (3, 5, 2, 4)]
    responses = [torch.randint(5, 900, (n,), generator=g) for n in (4, 2, 5, 3)]
    stats = trainer.step(queries, responses, [torch.tensor(r) for r in REWARDS])
    batch = {
        "query": [tokenizer.decode(q) for q in queries],
        "response": [tokenizer.decode(r) for r in responses],
        "label": ["a", "b", "c", "d"],  # an extra column, logged only when asked for
    }
    return trainer, stats, batch


def _assert_reward_stats(logged: dict) -> None:
    assert logged["env/reward_mean"] == pytest.approx(np.mean(REWARDS))
    assert logged["env/reward_std"] == pytest.approx(np.std(REWARDS, ddof=1))  # torch.std: unbiased, as TRL
    np.testing.assert_allclose(logged["env/reward_dist"], REWARDS)


def test_log_stats_sends_stats_rewards_and_game_log_to_wandb(model_path, tokenizer, monkeypatch):
    runs = _fake_wandb(monkeypatch)
    trainer, stats, batch = _trainer_and_step(model_path, tokenizer, log_with="wandb", tracker_project_name="proj",
                                              tracker_kwargs={"wandb": {"name": "run-1"}})
    (run,) = runs
    assert run.init_kwargs["project"] == "proj" and run.init_kwargs["name"] == "run-1"
    assert "trl_ppo_trainer_config" in sys.modules["wandb"].config.values
    assert run.logged == []  # step itself logs nothing

    rewards = [torch.tensor(r) for r in REWARDS]  # TRL's usage: the list of score tensors given to step
    trainer.log_stats(stats, batch, rewards)
    (step, logged), = run.logged
    assert step is None  # wandb keeps its own step counter, as in TRL
    for key in STEP_KEYS:
        assert key in logged, key
        np.testing.assert_array_equal(logged[key], stats[key], err_msg=key)
    _assert_reward_stats(logged)
    table = logged["game_log"]
    assert table.columns == ["query", "response", "reward"]
    assert table.rows == [[q, r, x] for q, r, x in zip(batch["query"], batch["response"], REWARDS)]

    # other columns on request; rewards as one tensor
    trainer.log_stats(stats, batch, torch.tensor(REWARDS), columns_to_log=["query", "label"])
    table = run.logged[-1][1]["game_log"]
    assert table.columns == ["query", "label", "reward"]
    assert table.rows == [[q, lab, x] for q, lab, x in zip(batch["query"], batch["label"], REWARDS)]
    with pytest.raises(ValueError, match="no column"):
        trainer.log_stats(stats, batch, REWARDS, columns_to_log=["query", "missing"])


def test_log_stats_sends_scalars_and_a_text_table_to_tensorboard(model_path, tokenizer, monkeypatch, tmp_path):
    writers = _fake_tensorboard(monkeypatch)
    trainer, stats, batch = _trainer_and_step(model_path, tokenizer, log_with="tensorboard",
                                              project_kwargs={"logging_dir": str(tmp_path)})
    (writer,) = writers
    assert writer.hparams  # the config went in at init
    trainer.log_stats(stats, batch, REWARDS)
    scalars = {tag: (value, step) for tag, value, step in writer.scalars}
    assert {step for _, step in scalars.values()} == {trainer.current_step} == {1}
    for key in STEP_KEYS:
        if np.ndim(stats[key]) == 0:
            assert scalars[key][0] == pytest.approx(float(stats[key])), key
        else:  # tensorboard takes no vectors (TRL logs them to wandb as histograms)
            assert key not in scalars, key
    assert scalars["env/reward_mean"][0] == pytest.approx(np.mean(REWARDS))
    assert scalars["env/reward_std"][0] == pytest.approx(np.std(REWARDS, ddof=1))
    (tag, text, step), = writer.texts
    assert tag == "game_log" and step == 1
    lines = text.split("\n")
    assert lines[0] == "query | response | reward"
    clean = lambda s: s.replace("|", "/").replace("\n", " ")  # noqa: E731
    assert lines[2:] == [f"{clean(q)} | {clean(r)} | {x}" for q, r, x in zip(batch["query"], batch["response"], REWARDS)]


def test_log_stats_without_tracker_returns_the_logs(model_path, tokenizer):
    trainer, stats, batch = _trainer_and_step(model_path, tokenizer)
    assert trainer.accelerator.trackers == []
    logs = trainer.log_stats(stats, batch, REWARDS)
    assert set(STEP_KEYS) <= set(logs) and "game_log" not in logs
    _assert_reward_stats(logs)


def test_log_stats_tables_the_samples_of_every_process(model_path, tokenizer, monkeypatch):
    """With several processes the rewards are gathered, and so are the logged columns (as TRL), row by row."""
    runs = _fake_wandb(monkeypatch)
    trainer, stats, batch = _trainer_and_step(model_path, tokenizer, log_with="wandb")
    # a second process with the same queries, "(2)" responses and rewards + 10
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.cat([t, t + 10]))
    gathered = []

    def gather_object(values):
        gathered.append(list(values))
        return list(values) + [v if v in batch["query"] else f"{v} (2)" for v in values]

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    logs = trainer.log_stats(stats, batch, REWARDS)
    assert gathered == [batch["query"], batch["response"]]
    all_rewards = REWARDS + [r + 10 for r in REWARDS]
    assert logs["env/reward_mean"] == pytest.approx(np.mean(all_rewards))
    rows = runs[0].logged[-1][1]["game_log"].rows
    assert rows == [[q, r, x] for q, r, x in zip(batch["query"] * 2, batch["response"] + [f"{r} (2)" for r in batch["response"]], all_rewards)]

"""TRL 0.7.10 usage that used to fail with PPOTrainer / PPOConfig (issue 18, gaps 1, 3, 4, 7, 14, 15)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer


def _model(model_path):
    return AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))


# ---------------------------------------------------------------- gap 1: datasets of non-dict items
@pytest.mark.parametrize("kind", ["strings", "tuples", "tensors", "ragged_tensors", "dicts"])
def test_default_collation_of_each_item_type(model_path, pad_tokenizer, kind):
    items = {
        "strings": [f"review {i}" for i in range(8)],
        "tuples": [(f"q{i}", i) for i in range(8)],
        "tensors": [torch.tensor([i, i + 1]) for i in range(8)],
        "ragged_tensors": [torch.arange(i + 1) for i in range(8)],
        "dicts": [{"query": f"q{i}", "input_ids": torch.arange(i + 1)} for i in range(8)],
    }[kind]
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2), _model(model_path), None, pad_tokenizer, dataset=items)
    batch = next(iter(trainer.dataloader))
    if kind == "strings":
        assert isinstance(batch, list) and len(batch) == 4 and all(isinstance(x, str) for x in batch)
    elif kind == "tuples":  # torch's default collation transposes: (4 strings, a tensor of 4 ints)
        assert len(batch) == 2 and len(batch[0]) == 4 and batch[1].shape == (4,)
    elif kind == "tensors":
        assert isinstance(batch, torch.Tensor) and batch.shape == (4, 2)
    elif kind == "ragged_tensors":  # cannot stack: a list of the tensors
        assert isinstance(batch, list) and len(batch) == 4
    else:
        assert set(batch) == {"query", "input_ids"} and len(batch["input_ids"]) == 4


# ---------------------------------------------------------------- gap 3: prepare_model_inputs
def test_prepare_model_inputs(model_path, pad_tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), _model(model_path), None, pad_tokenizer)
    q = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    r = [torch.tensor([9, 10]), torch.tensor([11, 12, 13])]
    inputs = trainer.prepare_model_inputs(q, r)
    pad = pad_tokenizer.pad_token_id
    assert inputs["input_ids"].tolist() == [[5, 6, 7, 9, 10, pad], [pad, pad, 8, 11, 12, 13]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # the model's logits for a sample do not depend on the padding around it
    with torch.no_grad():
        out = trainer.model(**inputs)[0]
        alone = trainer.model(input_ids=torch.tensor([[8, 11, 12, 13]]))[0]
    torch.testing.assert_close(out[1, 2:], alone[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gap 4: gradients stay after step
def test_gradients_stay_after_step_like_trl(model_path, pad_tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1), _model(model_path), None, pad_tokenizer)
    q = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    r = [torch.tensor([9, 10]), torch.tensor([11, 12, 13])]
    trainer.step(q, r, [1.0, 0.0])
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


# ---------------------------------------------------------------- gap 7: warnings and checks as TRL
def test_no_dataset_warns(model_path, pad_tokenizer):
    with pytest.warns(UserWarning, match="No dataset is provided"):
        PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), _model(model_path), None, pad_tokenizer)


def test_batch_larger_than_dataset_builds_an_empty_dataloader(model_path, pad_tokenizer):
    with pytest.warns(UserWarning, match="fewer than PPOConfig.batch_size=8"):
        trainer = PPOTrainer(PPOConfig(batch_size=8, mini_batch_size=2), _model(model_path), None, pad_tokenizer,
                             dataset=[{"query": "a"}] * 3)
    assert list(trainer.dataloader) == []


def test_two_dimensional_scores_are_refused(model_path, pad_tokenizer):
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2), _model(model_path), None, pad_tokenizer)
    q = [torch.tensor([5, 6]), torch.tensor([8, 9])]
    r = [torch.tensor([9, 10]), torch.tensor([11, 12])]
    with pytest.raises(ValueError, match=r"score 0 must be a scalar .* shape \(1, 1\)"):
        trainer.step(q, r, [torch.tensor([[1.0]]), torch.tensor([[0.0]])])
    trainer.step(q, r, [torch.tensor([1.0]), torch.tensor(0.0)])  # one-element 1-D and 0-d are fine


# ---------------------------------------------------------------- gap 14: total_ppo_epochs
def test_total_ppo_epochs():
    assert PPOConfig(steps=20000, batch_size=256).total_ppo_epochs == 79  # ceil(20000 / 256)
    assert PPOConfig(steps=10, batch_size=5, mini_batch_size=5).total_ppo_epochs == 2


# ---------------------------------------------------------------- gap 15: JSON dict fields on a command line
def test_dict_fields_accept_json():
    cfg = PPOConfig(tracker_kwargs='{"wandb": {"name": "run-1"}}', accelerator_kwargs=None)
    assert cfg.tracker_kwargs == {"wandb": {"name": "run-1"}} and cfg.accelerator_kwargs == {}
    with pytest.raises(ValueError, match="tracker_kwargs must be a dict or a JSON object"):
        PPOConfig(tracker_kwargs="{not json")


def test_tyro_command_line_parses_json_dicts(tmp_path):
    pytest.importorskip("tyro")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import json, tyro
        from dataclasses import dataclass, field
        from rlft import PPOConfig

        @dataclass
        class ScriptArguments:
            ppo_config: PPOConfig = field(default_factory=lambda: PPOConfig(batch_size=8, mini_batch_size=8))

        args = tyro.cli(ScriptArguments)
        print(json.dumps([args.ppo_config.tracker_kwargs, args.ppo_config.learning_rate]))
    """))
    out = subprocess.run(
        [sys.executable, str(script), "--ppo_config.tracker_kwargs", '{"wandb": {"entity": "me"}}',
         "--ppo_config.learning_rate", "1e-4"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [{"wandb": {"entity": "me"}}, 1e-4]

import dataclasses
import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, EvalPrediction, TrainingArguments

from rlft import _compat
from rlft.data.reward import RewardDataCollatorWithPadding, compute_accuracy
from rlft.functional.reward import pairwise_reward_loss
from rlft.trainer.reward_config import RewardConfig
from rlft.trainer.reward_trainer import RewardTrainer

SEED = Path("/work/shared/seeds/001_011443abf8095fda.txt")


def _seed_signature(header: str) -> list[tuple[str, str | None]]:
    lines = SEED.read_text(encoding="utf-8").splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == header)
    sig = next(line for line in lines[i:] if line.startswith("( "))
    return [(n, d) for n, _t, d in re.findall(r"(\w+): (\w+)(?: = (.*?))?(?= \w+: |\s*\)$)", sig.strip()[2:])]


def _pairs(tok, n=8, margin=False):
    good = ["the value is returned.", "return a new list.", "the file is closed."]
    bad = ["zq xv", "qq zz qq", "xx"]
    rows = []
    for i in range(n):
        c, r = tok(good[i % 3]), tok(bad[i % 3])
        row = {
            "input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
            "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"],
        }
        if margin:
            row["margin"] = 0.5
        rows.append(row)
    return Dataset.from_list(rows)


def _model(model_path, arch="gpt2"):
    m = AutoModelForSequenceClassification.from_pretrained(model_path(arch), num_labels=1)
    return m


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=3,
                per_device_train_batch_size=4, learning_rate=1e-2, save_strategy="no", logging_steps=1,
                gradient_checkpointing=False)
    base.update(kw)
    return RewardConfig(**base)


# ---------------------------------------------------------------- math

def test_pairwise_loss_by_hand():
    # diff = 1 - 0 = 1: -log sigmoid(1) = log(1 + e^-1) = 0.31326
    loss, stats = pairwise_reward_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]))
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)
    # with margin 1: diff 0 -> log 2
    loss, _ = pairwise_reward_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(np.log(2), abs=1e-6)
    assert stats["accuracy"].item() == 1.0


def test_pairwise_loss_matches_naive():
    g = torch.Generator().manual_seed(0)
    c, r, m = torch.randn(16, 1, generator=g), torch.randn(16, 1, generator=g), torch.rand(16, generator=g)
    loss, _ = pairwise_reward_loss(c, r, m)
    naive = -torch.log(1 / (1 + torch.exp(-(c[:, 0] - r[:, 0] - m)))).mean()
    torch.testing.assert_close(loss, naive)


def test_pairwise_loss_rejects_vector_rewards():
    with pytest.raises(ValueError, match="one scalar"):
        pairwise_reward_loss(torch.zeros(2, 3), torch.zeros(2, 3))


def test_compute_accuracy_tie_is_wrong():
    preds = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert compute_accuracy(EvalPrediction(predictions=preds, label_ids=np.zeros(3)))["accuracy"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- config and compat

def test_reward_config_defaults_and_seed_names(tmp_path):
    cfg = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    assert cfg.gradient_checkpointing is True and cfg.max_length is None
    params = inspect.signature(RewardConfig).parameters
    old = set(_compat.TRAINING_ARGUMENT_RENAMES) | set(_compat.TRAINING_ARGUMENT_CONVERSIONS) | set(_compat.TRAINING_ARGUMENT_REMOVED)
    for name, _default in _seed_signature("### `class trl.RewardConfig`"):
        assert name in params or name in old, name
    assert params["max_length"].default is None and params["gradient_checkpointing"].default is True


def test_compat_tables_match_installed_transformers():
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for old, new in _compat.TRAINING_ARGUMENT_RENAMES.items():
        assert old not in fields and new in fields, (old, new)
    for old in list(_compat.TRAINING_ARGUMENT_CONVERSIONS) + list(_compat.TRAINING_ARGUMENT_REMOVED):
        assert old not in fields, old
    for old, convert in _compat.TRAINING_ARGUMENT_CONVERSIONS.items():
        for new in convert(True) or convert(1):
            assert new in fields, (old, new)
    # every documented TRL 0.7 field is either still there or handled
    handled = fields | set(_compat.TRAINING_ARGUMENT_RENAMES) | set(_compat.TRAINING_ARGUMENT_CONVERSIONS) | set(_compat.TRAINING_ARGUMENT_REMOVED) | {"max_length"}
    assert {n for n, _ in _seed_signature("### `class trl.RewardConfig`")} <= handled


def test_old_spellings_map_with_warning(tmp_path):
    _compat._warned.clear()
    with pytest.warns(FutureWarning, match="evaluation_strategy"):
        cfg = RewardConfig(output_dir=str(tmp_path), report_to=[], no_cuda=True, evaluation_strategy="steps",
                           eval_steps=3, warmup_ratio=0.1, overwrite_output_dir=True, include_inputs_for_metrics=True)
    assert cfg.eval_strategy == "steps" and cfg.use_cpu and cfg.warmup_steps == 0.1
    assert cfg.include_for_metrics == ["inputs"]
    with pytest.raises(TypeError, match="both"):
        RewardConfig(output_dir=str(tmp_path), evaluation_strategy="no", eval_strategy="no")


def test_reward_trainer_signature_matches_seed():
    params = inspect.signature(RewardTrainer.__init__).parameters
    for name, default in _seed_signature("### `class trl.RewardTrainer`"):
        assert name in params, name
        if default == "None":
            assert params[name].default is None, name
    assert params["optimizers"].default == (None, None)


# ---------------------------------------------------------------- collator and data errors

def test_collator_pads_and_keeps_margin(pad_tokenizer):
    ds = _pairs(pad_tokenizer, 2, margin=True)
    batch = RewardDataCollatorWithPadding(pad_tokenizer)([ds[0], ds[1]])
    assert batch["input_ids_chosen"].shape[0] == 2 and batch["margin"].tolist() == [0.5, 0.5]
    assert batch["attention_mask_rejected"].sum(1).tolist() == [len(ds[0]["input_ids_rejected"]), len(ds[1]["input_ids_rejected"])]


def test_missing_columns_error(tmp_path, pad_tokenizer, model_path):
    ds = Dataset.from_dict({"chosen": ["a"], "rejected": ["b"]})
    with pytest.raises(ValueError, match=r"lacks the columns \['input_ids_chosen'.*found \['chosen', 'rejected'\]"):
        RewardTrainer(model=_model(model_path), args=_config(tmp_path), train_dataset=ds, processing_class=pad_tokenizer)


def test_no_pad_token_error(tmp_path, tokenizer, model_path):
    with pytest.raises(ValueError, match="pad token"):
        RewardTrainer(model=_model(model_path), args=_config(tmp_path), train_dataset=_pairs(tokenizer), tokenizer=tokenizer)


def test_max_length_filter_is_reported(tmp_path, pad_tokenizer, model_path):
    ds = _pairs(pad_tokenizer, 6)
    limit = min(len(x) for x in ds["input_ids_chosen"])  # drops the pairs with a longer chosen side
    with pytest.warns(UserWarning, match="dropped"):
        t = RewardTrainer(model=_model(model_path), args=_config(tmp_path, max_length=limit), train_dataset=ds, processing_class=pad_tokenizer)
    assert t.num_dropped_too_long["train"] > 0
    assert all(len(x) <= limit for x in t.train_dataset["input_ids_chosen"])
    with pytest.raises(ValueError, match="disagree"):
        RewardTrainer(model=_model(model_path), args=_config(tmp_path, max_length=5), max_length=6, train_dataset=ds, processing_class=pad_tokenizer)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("margin", [False, True])
def test_train_changes_all_params_and_learns(tmp_path, pad_tokenizer, model_path, margin):
    torch.manual_seed(0)
    model = _model(model_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ds = _pairs(pad_tokenizer, 8, margin=margin)
    trainer = RewardTrainer(model=model, args=_config(tmp_path, max_steps=12), train_dataset=ds, eval_dataset=ds,
                            tokenizer=pad_tokenizer)
    first = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for n, p in trainer.model.named_parameters():
        # The final LayerNorm bias shifts chosen and rejected rewards by the same amount, and the
        # pairwise loss only sees their difference, so its gradient is exactly zero.
        if n in before and n != "transformer.ln_f.bias":
            assert not torch.equal(before[n], p.detach()), f"{n} did not change"
    assert after["eval_loss"] < first["eval_loss"]
    assert after["eval_accuracy"] == 1.0
    trainer.save_model(str(tmp_path / "rm"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    batch = RewardDataCollatorWithPadding(pad_tokenizer)([ds[0]])
    with torch.no_grad():
        a = trainer.model.eval()(input_ids=batch["input_ids_chosen"]).logits
        b = reloaded.eval()(input_ids=batch["input_ids_chosen"]).logits
    torch.testing.assert_close(a, b)


def test_gradient_checkpointing_default_and_peft(tmp_path, pad_tokenizer, model_path):
    from peft import LoraConfig

    model = _model(model_path, "llama")
    cfg = _config(tmp_path, gradient_checkpointing=True, max_steps=2)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=_pairs(pad_tokenizer, 4), processing_class=pad_tokenizer,
                            peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in lora)
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if n in lora and not torch.equal(lora[n], p.detach())]
    assert any("lora_B" in n for n in changed)

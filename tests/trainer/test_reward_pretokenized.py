"""RewardTrainer on pre-tokenised pairs of mixed lengths, as a TRL 0.7 user writes them.

The loss and gradients against a slow per-pair reference (each sequence alone, no padding at
all), padding that cannot change them, the per-model packing decision that is not re-derived
every step, and dropout: kept as the model has it (TRL 0.7.10), or switched off on request.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

import rlft.trainer.reward_trainer as reward_module
from rlft.data.reward import RewardDataCollatorWithPadding
from rlft.trainer.reward_config import RewardConfig
from rlft.trainer.reward_trainer import RewardTrainer

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)


def _rows(tok, n=8, seed=0, margin=False) -> list[dict]:
    """Pairs sharing a prompt of 3-8 tokens, answers of 2-14 tokens (random ids, no special tokens)."""
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    vocab = [t for t in range(len(tok)) if t not in special]
    rows = []
    for i in range(n):
        prompt = rng.choices(vocab, k=rng.randint(3, 8))
        chosen = prompt + rng.choices(vocab, k=rng.randint(2, 14))
        rejected = prompt + rng.choices(vocab, k=rng.randint(2, 14))
        row = {"input_ids_chosen": chosen, "attention_mask_chosen": [1] * len(chosen),
               "input_ids_rejected": rejected, "attention_mask_rejected": [1] * len(rejected)}
        if margin:
            row["margin"] = 0.3 * (i % 3)
        rows.append(row)
    return rows


def _model(model_path, tok, **config):
    model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1, attn_implementation="sdpa", **config)
    model.config.pad_token_id = tok.pad_token_id
    return model


def _trainer(tmp_path, model, tok, rows, **config) -> RewardTrainer:
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                        save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def _reference_loss(model, rows) -> torch.Tensor:
    """Slow reference: every sequence scored alone (batch of one, no padding), then the TRL 0.7 pair loss."""
    def score(ids):
        return model(input_ids=torch.tensor([ids])).logits[0, 0]

    terms = [
        -torch.nn.functional.logsigmoid(score(r["input_ids_chosen"]) - score(r["input_ids_rejected"]) - r.get("margin", 0.0))
        for r in rows
    ]
    return torch.stack(terms).mean()


def _loss_and_grads(model, fn):
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("margin", [False, True])
@pytest.mark.parametrize("padding_free", [True, False])
def test_loss_and_grads_match_per_pair_reference(tmp_path, model_path, pad_tokenizer, padding_free, margin):
    rows = _rows(pad_tokenizer, margin=margin)
    trainer = _trainer(tmp_path, _model(model_path, pad_tokenizer, **NO_DROPOUT), pad_tokenizer, rows)
    trainer.padding_free = padding_free
    model = trainer.model
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    assert trainer._can_pack(model) == padding_free

    loss, grads = _loss_and_grads(model, lambda: trainer.compute_loss(model, batch))
    ref_loss, ref_grads = _loss_and_grads(model, lambda: _reference_loss(model, rows))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("padding_free", [True, False])
def test_padding_does_not_change_the_loss(tmp_path, model_path, pad_tokenizer, padding_free):
    rows = _rows(pad_tokenizer, seed=1)
    trainer = _trainer(tmp_path, _model(model_path, pad_tokenizer, **NO_DROPOUT), pad_tokenizer, rows)
    trainer.padding_free = padding_free
    collators = [
        RewardDataCollatorWithPadding(pad_tokenizer),  # the batch's longest sequence
        RewardDataCollatorWithPadding(pad_tokenizer, pad_to_multiple_of=32),
        RewardDataCollatorWithPadding(pad_tokenizer, padding="max_length", max_length=48),
    ]
    widths, losses = [], []
    with torch.no_grad():
        for collate in collators:
            batch = trainer._prepare_inputs(collate(rows))
            widths.append(batch["input_ids_chosen"].shape[1])
            losses.append(trainer.compute_loss(trainer.model, batch))
    assert len(set(widths)) == 3  # three different paddings really ran
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], atol=1e-6, rtol=1e-5)


def test_packing_decision_is_made_once_per_model(tmp_path, model_path, pad_tokenizer, monkeypatch):
    """The per-step path does not unwrap the model again (accelerate's unwrap looks up installed
    packages on every call: about 1.5 ms each, a tenth of a tiny model's step)."""
    rows = _rows(pad_tokenizer)
    trainer = _trainer(tmp_path, _model(model_path, pad_tokenizer, **NO_DROPOUT), pad_tokenizer, rows)
    calls = {"unwrap": 0, "base": 0}
    unwrap, base = trainer.accelerator.unwrap_model, reward_module.unwrap_base_model

    def counting_unwrap(*a, **k):
        calls["unwrap"] += 1
        return unwrap(*a, **k)

    def counting_base(*a, **k):
        calls["base"] += 1
        return base(*a, **k)

    monkeypatch.setattr(trainer.accelerator, "unwrap_model", counting_unwrap)
    monkeypatch.setattr(reward_module, "unwrap_base_model", counting_base)
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    with torch.no_grad():
        first = trainer.compute_loss(trainer.model, batch)  # probes the model once
        after_probe = dict(calls)
        for _ in range(3):
            torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), first)
    assert calls == after_probe, f"per-step unwrapping: {after_probe} after the probe, {calls} after three more steps"
    assert after_probe["unwrap"] == 1 and after_probe["base"] == 1
    assert trainer._can_pack(trainer.model)


def _dropout_rates(model) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def test_dropout_kept_by_default_and_switched_off_on_request(tmp_path, model_path, pad_tokenizer):
    rows = _rows(pad_tokenizer, n=4)
    kept = _trainer(tmp_path, _model(model_path, pad_tokenizer), pad_tokenizer, rows)  # GPT-2's default dropout 0.1
    off = _trainer(tmp_path, _model(model_path, pad_tokenizer), pad_tokenizer, rows, disable_dropout=True)
    assert RewardConfig(output_dir=str(tmp_path), report_to=[]).disable_dropout is False
    assert _dropout_rates(kept.model) == {0.1} and _dropout_rates(off.model) == {0.0}

    def train_mode_losses(trainer):
        trainer.model.train()
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        with torch.no_grad():
            losses = [trainer.compute_loss(trainer.model, batch) for _ in range(2)]
            trainer.model.eval()
            losses.append(trainer.compute_loss(trainer.model, batch))
        return losses

    torch.manual_seed(0)
    a, b, evaluated = train_mode_losses(kept)
    assert not torch.allclose(a, b)  # dropout draws differ between two training forwards (TRL 0.7.10 behaviour)
    a, b, evaluated = train_mode_losses(off)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, evaluated)  # training forward = deterministic evaluation forward


def test_disable_dropout_applies_to_model_init(tmp_path, model_path, pad_tokenizer):
    rows = _rows(pad_tokenizer, n=4)
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                        save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, disable_dropout=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model_init=lambda: _model(model_path, pad_tokenizer), args=args,
                                train_dataset=Dataset.from_list(rows), processing_class=pad_tokenizer)
    assert _dropout_rates(trainer.model) == {0.0}

"""SFTTrainer's padding-free batches against the padded batches they stand in for."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from rlft.trainer.sft_trainer import SFTTrainer

TEXTS = [
    "the value is returned to the caller when the function ends.",
    "return a new list.",
    "the file is closed after the last line of the data was read and checked.",
    "no.",
    "a string of words.",
    "create a new object from the list of names given to it.",
]


def _trainer(tmp_path, model, tokenizer, **kw) -> SFTTrainer:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1,
                             per_device_train_batch_size=6, save_strategy="no", disable_tqdm=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}), processing_class=tokenizer,
                          dataset_text_field="text", max_seq_length=32, **kw)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _loss_and_grads(trainer, batch, num_items):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, "count"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_loss_and_grads_match_padded(tmp_path, model_path, pad_tokenizer, arch, num_items):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch), attn_implementation="sdpa")
    for m in model.modules():  # dropout would make the two forwards differ
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    trainer = _trainer(tmp_path, model, pad_tokenizer)
    batch = _batch(trainer)
    assert not batch["attention_mask"].all()  # a padded batch
    n = (batch["labels"][:, 1:] != -100).sum() if num_items == "count" else None
    assert trainer._can_pack(trainer.model, batch)
    packed = trainer._packed_inputs(trainer.model, batch)
    assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]

    fast_loss, fast_grads = _loss_and_grads(trainer, batch, n)
    trainer.padding_free = False  # the straightforward padded forward
    slow_loss, slow_grads = _loss_and_grads(trainer, batch, n)
    torch.testing.assert_close(fast_loss, slow_loss, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_not_packed_with_neftune_or_left_padding_or_extra_keys(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, AutoModelForCausalLM.from_pretrained(model_path("gpt2")), pad_tokenizer)
    batch = _batch(trainer)
    assert trainer._can_pack(trainer.model, batch)
    assert not trainer._can_pack(trainer.model, {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])})
    left = {k: v.flip(1) for k, v in batch.items()}
    assert not trainer._can_pack(trainer.model, left)
    trainer.neftune_noise_alpha = 5.0
    assert not trainer._can_pack(trainer.model, batch)


def test_training_runs_padding_free(tmp_path, model_path, pad_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    shapes = []
    model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    trainer = _trainer(tmp_path, model, pad_tokenizer)
    trainer.train()
    assert shapes and shapes[-1][0] < len(TEXTS)  # fewer rows than examples went through the model

"""Batching invariance: mini-batch 1 x gradient accumulation 4 makes the same update as mini-batch 4 x
accumulation 1 (the global batch and the optimizer step are the same; only the layout differs).

Plain SGD, not Adam: Adam's first step is about lr * sign(gradient), so it would hide a gradient that
is off by a constant factor (e.g. summed instead of averaged over the accumulation steps).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.trainer import disable_dropout_in_model

#: float32 sums in another order: relative to the largest parameter change.
REL_TOL = 1e-4


def changes(model, before: dict) -> dict:
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}


def assert_same_update(a: dict, b: dict):
    assert a.keys() == b.keys()
    scale = max(float(d.abs().max()) for d in a.values())
    assert scale > 1e-6, "the step changed nothing: the comparison would be empty"
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= REL_TOL * scale, (worst, scale)


def ppo_update(model_path, tokenizer, mini_batch_size, accumulation, queries, responses, scores, ppo_epochs):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)  # same value-head init in both layouts
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    disable_dropout_in_model(model)  # dropout masks would differ between the layouts
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = PPOConfig(batch_size=4, mini_batch_size=mini_batch_size, gradient_accumulation_steps=accumulation,
                       ppo_epochs=ppo_epochs, learning_rate=0.05, seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no dataset
        trainer = PPOTrainer(config, model, None, tokenizer, optimizer=optimizer)
    trainer.step(list(queries), list(responses), list(scores))
    return changes(trainer.model, before)


@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_ppo_micro_batch_1_x_accumulation_4_equals_batch_4(model_path, tokenizer, ppo_epochs):
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(5, 900, (n,), generator=g) for n in (3, 6, 2, 5)]  # ragged: left padding differs
    # Equal response lengths: PPO's loss is a token mean per mini-batch (as TRL), so only then are a
    # mean over 4 one-sample means and one mean over 4 samples the same number.
    responses = [torch.randint(5, 900, (4,), generator=g) for _ in range(4)]
    scores = [torch.tensor(s) for s in (1.0, -0.5, 0.25, 2.0)]
    split = ppo_update(model_path, tokenizer, 1, 4, queries, responses, scores, ppo_epochs)
    whole = ppo_update(model_path, tokenizer, 4, 1, queries, responses, scores, ppo_epochs)
    assert_same_update(split, whole)


TEXTS = ["the value is returned to the caller.", "return a new list of the items.",
         "the file is closed when the block ends, even after an error.", "raise an error"]


def sft_update(model_path, tokenizer, tmp_path, batch, accumulation):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from rlft import SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    disable_dropout_in_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path / f"{batch}x{accumulation}"), report_to="none", use_cpu=True,
                             per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=1,
                             optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", save_strategy="no",
                             disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                         dataset_text_field="text", max_seq_length=64, tokenizer=tokenizer)
    trainer.train()
    return changes(trainer.model, before)


def test_sft_micro_batch_1_x_accumulation_4_equals_batch_4(model_path, pad_tokenizer, tmp_path):
    """Ragged examples: transformers 5 normalises the accumulated loss by the tokens of the whole
    accumulation window, so the update is the token mean over all 4 examples either way."""
    split = sft_update(model_path, pad_tokenizer, tmp_path, 1, 4)
    whole = sft_update(model_path, pad_tokenizer, tmp_path, 4, 1)
    assert_same_update(split, whole)

"""DPOTrainer's padding-free forward against the padded `concatenated_forward` it stands in for."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from rlft import DPOTrainer

PROMPTS = ["What is the meaning of", "Return the value of the object in", "Create a", "The default is"]
CHOSEN = [" the argument given to the function", " the first item", " object from the list of all names", " to"]
REJECTED = [" nothing", " when a type is not a string or a path", " is not a string", " if the path exists on disk"]


def _trainer(tmp_path, model, tokenizer, **kw) -> DPOTrainer:
    data = Dataset.from_dict({"prompt": PROMPTS * 2, "chosen": CHOSEN * 2, "rejected": REJECTED * 2})
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to=[],
                             use_cpu=True, save_strategy="no", remove_unused_columns=False, seed=0, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=data, max_length=48,
                          max_prompt_length=16, **kw)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_forward_matches_padded_forward(tmp_path, model_path, pad_tokenizer, arch, loss_type):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch))
    trainer = _trainer(tmp_path, model, pad_tokenizer, loss_type=loss_type)
    batch = _batch(trainer)
    assert trainer._can_pack(trainer.model)

    trainer.model.zero_grad()
    fast = trainer._packed_forward(trainer.model, batch)
    assert fast is not None
    (fast[0].sum() - 2 * fast[1].sum()).backward()
    fast_grads = _grads(trainer.model)

    trainer.model.zero_grad()
    chosen, rejected, chosen_logits, rejected_logits = trainer.concatenated_forward(trainer.model, batch)  # the straightforward one
    (chosen.sum() - 2 * rejected.sum()).backward()
    slow_grads = _grads(trainer.model)

    torch.testing.assert_close(fast[0], chosen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast[1], rejected, atol=1e-4, rtol=1e-4)
    assert fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-4, rtol=1e-3, msg=name)
    # the mean response logit, computed from the padded logits at the labelled positions
    trainer.padding_free = False
    _, _, slow_chosen_logit, slow_rejected_logit = trainer._sequence_logps(trainer.model, batch)
    torch.testing.assert_close(fast[2], slow_chosen_logit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast[3], slow_rejected_logit, atol=1e-4, rtol=1e-4)


def test_loss_and_metrics_are_the_same_either_way(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, AutoModelForCausalLM.from_pretrained(model_path("gpt2")), pad_tokenizer)
    batch = _batch(trainer)
    with torch.no_grad():
        loss_fast, metrics_fast = trainer.get_batch_loss_metrics(trainer.model, batch)
        trainer.padding_free = False
        loss_slow, metrics_slow = trainer.get_batch_loss_metrics(trainer.model, batch)
    torch.testing.assert_close(loss_fast, loss_slow, atol=1e-5, rtol=1e-5)
    assert metrics_fast.keys() == metrics_slow.keys()
    for key in metrics_slow:
        assert metrics_fast[key] == pytest.approx(metrics_slow[key], abs=1e-4), key


def test_packed_path_is_taken_with_fewer_rows(tmp_path, model_path, pad_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    trainer = _trainer(tmp_path, model, pad_tokenizer)
    batch = _batch(trainer)
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        trainer.get_batch_loss_metrics(trainer.model, batch)
    handle.remove()
    # policy and reference forwards (the reference is a copy, so only the policy's hook fires) on packed rows
    assert rows and all(r < 2 * batch["chosen_input_ids"].shape[0] for r in rows)


def test_subclass_overriding_concatenated_forward_is_honoured(tmp_path, model_path, pad_tokenizer):
    calls = []

    class Custom(DPOTrainer):
        def concatenated_forward(self, model, batch):
            calls.append(1)
            return super().concatenated_forward(model, batch)

    data = Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    args = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=1, report_to=[],
                             use_cpu=True, save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Custom(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), processing_class=pad_tokenizer,
                         args=args, train_dataset=data, max_length=48, max_prompt_length=16)
    assert not trainer._can_pack(trainer.model)
    with torch.no_grad():
        trainer.get_batch_loss_metrics(trainer.model, _batch(trainer))
    assert len(calls) == 2  # policy and reference

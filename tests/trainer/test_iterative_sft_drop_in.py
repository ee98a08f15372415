"""IterativeSFTTrainer as TRL 0.7.10 scripts use it (issue 18: items 3, 4 and 10)."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from rlft import IterativeSFTTrainer

TEXTS = ["the value is returned.", "return a new list.", "the file is closed."]


def _trainer(tmp_path, model_path, tokenizer, **kw):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=3,
                             learning_rate=1e-2, save_strategy="no", logging_steps=1, disable_tqdm=True)
    return IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=args, tokenizer=tokenizer, **kw)


def _rows(tokenizer):
    return [torch.tensor(tokenizer(t)["input_ids"]) for t in TEXTS]


# ---------------------------------------------------------------- item 3: prepare_model_inputs
def test_prepare_model_inputs_pads_truncates_and_masks(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, model_path, pad_tokenizer, max_length=4, truncation_mode="keep_end")
    rows = _rows(pad_tokenizer)
    out = trainer.prepare_model_inputs(rows, [torch.ones_like(r) for r in rows], [r.clone() for r in rows])
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    # reference: each row's last 4 tokens, right-padded with the pad id / 0 / -100
    width = max(min(len(r), 4) for r in rows)
    for i, r in enumerate(rows):
        kept = r[-4:]
        n = len(kept)
        assert out["input_ids"][i, :n].tolist() == kept.tolist()
        assert out["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert out["labels"][i].tolist() == kept.tolist() + [-100] * (width - n)
        assert (out["input_ids"][i, n:] == pad_tokenizer.pad_token_id).all()
    assert out["input_ids"].device == trainer.accelerator.device
    # defaults: mask of ones, labels = ids
    default = trainer.prepare_model_inputs(rows)
    torch.testing.assert_close(default["attention_mask"], out["attention_mask"])
    torch.testing.assert_close(default["labels"], out["labels"])


# ---------------------------------------------------------------- item 10: any sequence where TRL took a list
def _column_inputs(tokenizer):
    ds = Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"] for t in TEXTS], "text": TEXTS})
    return ds


@pytest.mark.parametrize("form", ["list", "tuple", "column", "torch_column", "tensor_2d"])
def test_step_accepts_any_sequence_of_token_rows(tmp_path, model_path, pad_tokenizer, form):
    rows = _rows(pad_tokenizer)
    if form == "tensor_2d":
        width = min(len(r) for r in rows)
        rows = [r[:width] for r in rows]
    ds = Dataset.from_dict({"input_ids": [r.tolist() for r in rows]})
    given = {
        "list": list(rows),
        "tuple": tuple(rows),
        "column": ds["input_ids"],  # a datasets Column of int lists
        "torch_column": ds.with_format("torch")["input_ids"],
        "tensor_2d": torch.stack(rows) if form == "tensor_2d" else None,
    }[form]
    trainer = _trainer(tmp_path, model_path, pad_tokenizer)
    reference = _trainer(tmp_path, model_path, pad_tokenizer)
    torch.manual_seed(0)
    got = trainer.step(input_ids=given)
    torch.manual_seed(0)
    expected = reference.step(input_ids=list(rows))
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_step_accepts_a_text_column(tmp_path, model_path, pad_tokenizer):
    ds = Dataset.from_dict({"text": TEXTS})
    trainer = _trainer(tmp_path, model_path, pad_tokenizer)
    reference = _trainer(tmp_path, model_path, pad_tokenizer)
    torch.manual_seed(0)
    got = trainer.step(texts=ds["text"])
    torch.manual_seed(0)
    assert got["loss"] == pytest.approx(reference.step(texts=TEXTS)["loss"], rel=1e-6)


def test_step_rejects_what_is_not_a_sequence_of_rows(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, model_path, pad_tokenizer)
    with pytest.raises(TypeError, match="2-D"):
        trainer.step(input_ids=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="sequence"):
        trainer.step(texts="one string, not a list")
    with pytest.raises(TypeError, match="sequence"):
        trainer.step(input_ids={"a": 1})


# ---------------------------------------------------------------- item 4: gradients after step
def test_gradients_of_the_last_update_stay_after_step(tmp_path, model_path, pad_tokenizer):
    """TRL 0.7's tests read ``param.grad`` after ``step()`` (``assert param.grad is not None``).

    rlft keeps the gradients of the last optimiser step: with plain SGD, each parameter moved by
    exactly -lr * the gradient left in ``.grad``.
    """
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=3,
                             save_strategy="no", disable_tqdm=True, max_grad_norm=0.0)
    trainer = IterativeSFTTrainer(model, args=args, tokenizer=pad_tokenizer, optimizers=(optimizer, None))
    trainer.step(texts=TEXTS)  # one earlier step: its gradients must not leak into the next
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.step(texts=TEXTS[::-1])
    for name, param in trainer.model.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.detach(), before[name] - lr * param.grad, atol=1e-6, rtol=1e-5)


def test_accumulation_cycles_start_from_zero_gradients(tmp_path, model_path, pad_tokenizer):
    """Two steps of one minibatch each leave the same .grad as a fresh trainer's single step on that batch."""
    args = lambda: TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True,  # noqa: E731
                                     per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True, learning_rate=0.0)
    a = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=args(), tokenizer=pad_tokenizer)
    b = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=args(), tokenizer=pad_tokenizer)
    a.step(texts=TEXTS[:1])
    torch.manual_seed(0)  # the same dropout masks for the compared steps
    a.step(texts=TEXTS[1:2])
    torch.manual_seed(0)
    b.step(texts=TEXTS[1:2])
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)

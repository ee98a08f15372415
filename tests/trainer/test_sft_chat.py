"""SFTTrainer on conversational and instruction datasets, and completion-only training on ChatML turns."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, TrainingArguments

from rlft import DataCollatorForCompletionOnlyLM, SFTTrainer, setup_chat_format

SYSTEM = "Be brief."
Q1, A1 = "open the file", "the file is open."
Q2, A2 = "and close it", "the file is closed."
TWO_TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "content": A2},
]
ONE_TURN = [{"role": "user", "content": "return a list"}, {"role": "assistant", "content": "a new list of the items."}]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=2, per_device_train_batch_size=2,
                learning_rate=1e-2, save_strategy="no", logging_steps=1, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture
def chat(model_path, tokenizer):
    """A tiny llama and tokenizer set up for ChatML."""
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    return setup_chat_format(model, tokenizer)


def test_conversational_dataset_is_rendered_with_the_template(tmp_path, chat):
    model, tok = chat
    ds = Dataset.from_dict({"messages": [TWO_TURNS, ONE_TURN]})
    trainer = SFTTrainer(model=model, args=_args(tmp_path), train_dataset=ds, eval_dataset=ds, processing_class=tok,
                         max_seq_length=128)
    for i, turns in enumerate([TWO_TURNS, ONE_TURN]):
        expected = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)
        assert trainer.train_dataset[i]["input_ids"] == tok(expected, add_special_tokens=False)["input_ids"]
        assert tok.decode(trainer.eval_dataset[i]["input_ids"]) == expected
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_instruction_dataset_becomes_user_and_assistant_turns(tmp_path, chat):
    model, tok = chat
    ds = Dataset.from_dict({"prompt": [Q1, Q2], "completion": [A1, A2]})
    trainer = SFTTrainer(model=model, args=_args(tmp_path), train_dataset=ds, processing_class=tok, max_seq_length=64)
    assert tok.decode(trainer.train_dataset[1]["input_ids"]) == (
        f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n"
    )


def test_packing_conversations(tmp_path, chat):
    model, tok = chat
    ds = Dataset.from_dict({"messages": [TWO_TURNS, ONE_TURN] * 4})
    trainer = SFTTrainer(model=model, args=_args(tmp_path), train_dataset=ds, processing_class=tok, max_seq_length=16,
                         packing=True)
    first = tok(
        "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in TWO_TURNS), add_special_tokens=False
    )["input_ids"]
    assert trainer.train_dataset[0]["input_ids"] == first[:16]


def test_no_chat_template_error_names_setup_chat_format(tmp_path, model_path, pad_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with pytest.raises(ValueError, match="setup_chat_format"):
        SFTTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_dict({"messages": [ONE_TURN]}),
                   processing_class=pad_tokenizer, max_seq_length=32)


def test_unrecognised_dataset_error_lists_the_options(tmp_path, chat):
    model, tok = chat
    with pytest.raises(ValueError, match="not tokenised, conversational .* or instruction-shaped"):
        SFTTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_dict({"body": ["x"]}),
                   processing_class=tok, max_seq_length=32)


def test_chat_text_gets_no_second_bos(tmp_path, chat):
    """A tokenizer that prepends BOS itself must not add it before the template's own tokens."""
    model, tok = chat
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    conv = Dataset.from_dict({"messages": [ONE_TURN]})
    kw = dict(model=model, args=_args(tmp_path), processing_class=tok, max_seq_length=64)
    ids = SFTTrainer(train_dataset=conv, **kw).train_dataset[0]["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    forced = SFTTrainer(train_dataset=conv, dataset_kwargs={"add_special_tokens": True}, **kw).train_dataset[0]["input_ids"]
    assert forced == [bos] + ids
    plain = SFTTrainer(train_dataset=Dataset.from_dict({"text": ["a list"]}), dataset_text_field="text", **kw)
    assert plain.train_dataset[0]["input_ids"][0] == bos  # plain text keeps the tokenizer's default


def test_completion_only_collator_trains_on_assistant_turns_only(tmp_path, chat):
    model, tok = chat
    ds = Dataset.from_dict({"messages": [TWO_TURNS, ONE_TURN]})
    collator = DataCollatorForCompletionOnlyLM(
        response_template="<|im_start|>assistant\n", instruction_template="<|im_start|>user\n", tokenizer=tok
    )
    trainer = SFTTrainer(model=model, args=_args(tmp_path), train_dataset=ds, processing_class=tok, max_seq_length=128,
                         data_collator=collator)
    batch = collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    end = "<|im_end|>\n"
    for i, expected in enumerate([A1 + end + A2 + end, ONE_TURN[1]["content"] + end]):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        trained = labels != -100
        assert torch.equal(labels[trained], ids[trained])  # kept labels are the inputs themselves
        assert tok.decode(ids[trained]) == expected
        # and they sit exactly on the assistant contents: every other position is masked
        text_ids = tok(expected.split(end)[0], add_special_tokens=False)["input_ids"]
        first = trained.nonzero()[0].item()
        assert ids[first : first + len(text_ids)].tolist() == text_ids
    # the batch's padding (second row is shorter) is masked too
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == -100).all()

    # the trainer's loss is the mean token loss over exactly those positions
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        manual = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                   shift_labels.reshape(-1), ignore_index=-100)
        loss = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items()})
    torch.testing.assert_close(loss, manual)
    trainer.train()

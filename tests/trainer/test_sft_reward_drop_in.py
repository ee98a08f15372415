"""SFTTrainer and RewardTrainer as TRL 0.7.10 scripts use them (issue 18: items 5, 19, the declared
``padding_free`` option and the one peft-wrapping behaviour)."""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainingArguments

from rlft.data.reward import RewardDataCollatorWithPadding
from rlft.trainer.reward_config import RewardConfig
from rlft.trainer.reward_trainer import RewardTrainer
from rlft.trainer.sft_trainer import SFTTrainer

TEXTS = ["the value is returned to the caller.", "return a new list.", "the file is closed.", "no."]


def _sft(tmp_path, model_path, tokenizer, **kw):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1,
                             per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=args,
                      train_dataset=Dataset.from_dict({"text": TEXTS}), processing_class=tokenizer,
                      dataset_text_field="text", **kw)


# ---------------------------------------------------------------- item 19: max_seq_length=None
@pytest.mark.parametrize("model_max_length, expected", [(300, 300), (512, 512), (int(1e30), 1024)])
def test_sft_default_max_seq_length_is_min_of_tokenizer_limit_and_1024(tmp_path, model_path, pad_tokenizer,
                                                                       model_max_length, expected):
    pad_tokenizer.model_max_length = model_max_length
    with pytest.warns(UserWarning, match=f"max_seq_length not set; using {expected} tokens"):
        trainer = _sft(tmp_path, model_path, pad_tokenizer)
    assert trainer.max_seq_length == expected


# ---------------------------------------------------------------- padding_free is a declared option
def test_padding_free_is_a_constructor_option(tmp_path, model_path, pad_tokenizer):
    import inspect

    from rlft.trainer.dpo_trainer import DPOTrainer

    for cls in (SFTTrainer, RewardTrainer, DPOTrainer):
        param = inspect.signature(cls.__init__).parameters["padding_free"]
        assert param.kind is param.KEYWORD_ONLY and param.default is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on = _sft(tmp_path, model_path, pad_tokenizer, max_seq_length=32)
        off = _sft(tmp_path, model_path, pad_tokenizer, max_seq_length=32, padding_free=False)
    batch = on._prepare_inputs(next(iter(on.get_train_dataloader())))
    assert not batch["attention_mask"].all()
    assert on._can_pack(on.model, batch) and not off._can_pack(off.model, batch)


def test_per_model_check_is_probed_once_per_model_object():
    from rlft.trainer._helpers import PerModelCheck

    calls = []
    check = PerModelCheck(lambda m: calls.append(m) or isinstance(m, torch.nn.Linear))
    a, b = torch.nn.Linear(2, 2), torch.nn.ReLU()
    assert check(a) and check(a) and not check(b)
    assert calls == [a, b]
    del calls[:]
    del a
    import gc

    gc.collect()
    assert len(check._answers) == 1  # the freed model's answer went with it


# ---------------------------------------------------------------- item 5: margin as a one-element list
def _pairs(tokenizer, margins):
    rows = []
    for i, margin in enumerate(margins):
        c, r = tokenizer(TEXTS[i % 4] + tokenizer.eos_token), tokenizer("zq xv zz" + tokenizer.eos_token)
        rows.append({"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
                     "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"], "margin": margin})
    return rows


def test_collator_takes_margins_as_numbers_or_one_element_lists(pad_tokenizer):
    collator = RewardDataCollatorWithPadding(pad_tokenizer)
    as_lists = collator(_pairs(pad_tokenizer, [[0.5], [1.0], [0.0], [2.0]]))["margin"]
    as_floats = collator(_pairs(pad_tokenizer, [0.5, 1.0, 0.0, 2.0]))["margin"]
    assert as_lists.shape == (4,)
    torch.testing.assert_close(as_lists, as_floats)
    mixed = collator(_pairs(pad_tokenizer, [torch.tensor([0.5]), (1.0,), 0, 2]))["margin"]
    torch.testing.assert_close(mixed, as_floats)
    with pytest.raises(ValueError, match="example 1 has a margin with 2 values"):
        collator(_pairs(pad_tokenizer, [[0.5], [1.0, 2.0]]))


def test_reward_trainer_trains_on_list_margins(tmp_path, model_path, pad_tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1)
    model.config.pad_token_id = pad_tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1,
                        per_device_train_batch_size=4, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model=model, args=args, processing_class=pad_tokenizer,
                                train_dataset=Dataset.from_list(_pairs(pad_tokenizer, [[0.5], [1.0], [0.0], [2.0]])))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    # reference: the Llama 2 margin loss written out
    diff = (out["rewards_chosen"] - out["rewards_rejected"]).reshape(-1) - batch["margin"]
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(diff).mean())
    assert trainer.train().training_loss > 0


# ---------------------------------------------------------------- one peft behaviour: an adapted model is merged
peft = pytest.importorskip("peft")


def test_sft_and_reward_merge_an_existing_adapter_like_dpo(tmp_path, model_path, pad_tokenizer):
    lora = lambda r, task: peft.LoraConfig(r=r, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type=task)  # noqa: E731
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), lora(4, "CAUSAL_LM"))
    ids = torch.tensor([[5, 17, 99, 300]])
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()
        expected = adapted(input_ids=ids).logits
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1, save_strategy="no")
    with pytest.warns(UserWarning, match="merged into the base weights"):
        trainer = SFTTrainer(model=adapted, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                             processing_class=pad_tokenizer, dataset_text_field="text", max_seq_length=32,
                             peft_config=lora(2, "CAUSAL_LM"))
    assert trainer.model.peft_config["default"].r == 2
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)

    rm = peft.get_peft_model(AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1),
                             lora(4, "SEQ_CLS"))
    rm.config.pad_token_id = pad_tokenizer.pad_token_id
    with pytest.warns(UserWarning, match="merged into the base weights"):
        trainer = RewardTrainer(model=rm, args=RewardConfig(output_dir=str(tmp_path / "rm"), report_to=[], use_cpu=True),
                                processing_class=pad_tokenizer, peft_config=lora(2, "SEQ_CLS"),
                                train_dataset=Dataset.from_list(_pairs(pad_tokenizer, [0.0] * 4)))
    assert trainer.model.peft_config["default"].r == 2

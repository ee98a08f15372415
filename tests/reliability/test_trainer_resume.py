"""The Trainer-based trainers resume through transformers' own checkpointing: with our collators,
packing and reference models, training from checkpoint-2 to step 4 gives the parameters of an
uninterrupted 4-step run. MarkCheckpointCompleteCallback marks their checkpoints complete."""

import warnings

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TrainingArguments,
)

from rlft.utils.checkpoint import (
    COMPLETE_MARKER,
    MarkCheckpointCompleteCallback,
    is_complete,
    latest_checkpoint,
)

TEXTS = ["the value is returned to the caller.", "return a new list of the items.", "the file is closed.",
         "a new object from the list.", "the default is to use the file.", "if the path is not a string."]


def _args(out, **kw):
    base = {"output_dir": str(out), "report_to": [], "use_cpu": True, "max_steps": 4, "save_steps": 2, "save_strategy": "steps",
                "per_device_train_batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1, "disable_tqdm": True, "seed": 7,
                "remove_unused_columns": False}
    base.update(kw)
    return TrainingArguments(**base)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _resume_matches(make_trainer, tmp_path):
    """Uninterrupted run to step 4 (saving at 2 and 4) vs a fresh trainer resumed from checkpoint-2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = make_trainer(tmp_path / "run")
        straight.train()
        ckpt = tmp_path / "run" / "checkpoint-2"
        assert is_complete(ckpt) and (ckpt / COMPLETE_MARKER).exists()
        assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint-4"
        resumed = make_trainer(tmp_path / "run")
        resumed.train(resume_from_checkpoint=str(ckpt))
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff == 0.0, diff
    changed = [k for k in a if not torch.equal(a[k], _params(make_trainer(tmp_path / "fresh").model)[k])]
    assert changed  # the comparison is not between two untrained models
    return straight, resumed


@pytest.mark.parametrize("packing", [False, True])
def test_sft_resume(model_path, pad_tokenizer, tmp_path, packing):
    from rlft import SFTTrainer

    ds = Dataset.from_dict({"text": TEXTS * 2})

    def make(out):
        torch.manual_seed(0)
        return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(out),
                          train_dataset=ds, processing_class=pad_tokenizer, dataset_text_field="text",
                          max_seq_length=16, packing=packing, callbacks=[MarkCheckpointCompleteCallback()])

    _resume_matches(make, tmp_path)


def test_sft_completion_only_collator_resume(model_path, pad_tokenizer, tmp_path):
    from rlft import DataCollatorForCompletionOnlyLM, SFTTrainer

    ds = Dataset.from_dict({"text": [f"### Q: {t} ### A: {t[::-1]}" for t in TEXTS]})
    collator = DataCollatorForCompletionOnlyLM("### A:", tokenizer=pad_tokenizer)

    def make(out):
        torch.manual_seed(0)
        return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(out),
                          train_dataset=ds, processing_class=pad_tokenizer, dataset_text_field="text",
                          max_seq_length=48, data_collator=collator, callbacks=[MarkCheckpointCompleteCallback()])

    _resume_matches(make, tmp_path)


def test_reward_resume(model_path, pad_tokenizer, tmp_path):
    from rlft import RewardConfig, RewardTrainer

    c, r = pad_tokenizer(TEXTS), pad_tokenizer([t[::-1] for t in TEXTS])
    ds = Dataset.from_dict({"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
                            "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]})

    def make(out):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1)
        model.config.pad_token_id = pad_tokenizer.pad_token_id
        args = RewardConfig(**_args(out).to_dict() | {"gradient_checkpointing": False, "max_length": 64})
        return RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=pad_tokenizer,
                             callbacks=[MarkCheckpointCompleteCallback()])

    _resume_matches(make, tmp_path)


@pytest.mark.parametrize("reference", ["model", "precomputed", "peft"])
def test_dpo_resume_with_reference_models(model_path, pad_tokenizer, tmp_path, reference):
    from rlft import DPOTrainer

    ds = Dataset.from_dict({"prompt": [t[:12] for t in TEXTS], "chosen": [t[12:] for t in TEXTS],
                            "rejected": [t[12:][::-1] for t in TEXTS]})

    def make(out):
        torch.manual_seed(0)
        kw = {}
        model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
        if reference == "model":
            kw["ref_model"] = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
        elif reference == "precomputed":
            kw["precompute_ref_log_probs"] = True
        else:
            from peft import LoraConfig

            kw["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
        return DPOTrainer(model=model, args=_args(out), processing_class=pad_tokenizer, train_dataset=ds,
                          max_length=32, max_prompt_length=16, callbacks=[MarkCheckpointCompleteCallback()], **kw)

    _resume_matches(make, tmp_path)

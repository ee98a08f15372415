"""Property tests: the Trainer-based trainers given malformed datasets (missing columns, empty strings,
wrong types, examples longer than every limit) either raise a clear ValueError/TypeError that names
the problem, or (for data that is merely extreme) train without crashing."""

import math
import warnings

import pytest
import torch
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TrainingArguments,
)

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = " ".join(["the value of the file is returned"] * 60)  # ~400 tokens: past every limit below
#: What a clear error must mention (any one of these words).
CLEAR = ("column", "empty", "str", "type", "text", "chosen", "rejected", "prompt", "input_ids", "length")

#: column value replacements: name -> (value builder, whether the data is still valid)
MUTATIONS = {
    "ok": (lambda v: v, True),
    "empty string": (lambda v: "", False),
    "whitespace": (lambda v: "   ", None),  # tokenises to real tokens: a trainer may reject it or train on it
    "int": (lambda v: 7, False),
    "None": (lambda v: None, False),
    "list of str": (lambda v: [v, v], False),
    "very long": (lambda v: LONG, True),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """The trainers' output_dir: one pytest-managed folder (tempfile.mkdtemp() left one /tmp folder per example)."""
    return str(tmp_path_factory.mktemp("bad-datasets"))


def _args(output_dir, **kw):
    base = {"output_dir": output_dir, "report_to": [], "use_cpu": True, "max_steps": 1, "per_device_train_batch_size": 2,
                "learning_rate": 1e-3, "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "remove_unused_columns": False}
    base.update(kw)
    return TrainingArguments(**base)


def _mutated(rows: dict, column: str, mutation: str, drop: bool) -> Dataset:
    build, _ = MUTATIONS[mutation]
    rows = {k: list(v) for k, v in rows.items()}
    if drop:
        del rows[column]
    else:
        rows[column] = [build(v) for v in rows[column]]  # every row: one type per column, as arrow needs
    return Dataset.from_dict(rows)


def _check(make, valid):
    """Build and train one step: a clear error, or (valid data) a finite loss. ``valid=None``: either is fine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = make()
            out = trainer.train()
        except (ValueError, TypeError) as err:
            assert valid is not True, f"valid data was rejected: {err}"
            assert any(word in str(err).lower() for word in CLEAR), f"unclear error: {err}"
            return
    assert valid is not False, "malformed data trained without an error"
    assert math.isfinite(out.training_loss)


@SETTINGS
@given(column=st.sampled_from(["prompt", "chosen", "rejected"]), mutation=st.sampled_from(sorted(MUTATIONS)),
       drop=st.booleans())
def test_dpo_datasets(scratch, model_path, pad_tokenizer, column, mutation, drop):
    from rlft import DPOTrainer

    rows = {"prompt": ["What is", "Return the"], "chosen": [" the value", " a list"], "rejected": [" zq", " xx"]}
    ds = _mutated(rows, column, mutation, drop)
    valid = False if drop else MUTATIONS[mutation][1]
    if column == "prompt" and mutation in ("empty string", "whitespace") and not drop:
        valid = None  # an empty prompt is an unconditional preference pair: training on it is fine
    _check(lambda: DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(scratch),
                              processing_class=pad_tokenizer, train_dataset=ds, max_length=32, max_prompt_length=16),
           valid)


@SETTINGS
@given(mutation=st.sampled_from(sorted(MUTATIONS)), drop=st.booleans(), packing=st.booleans())
def test_sft_datasets(scratch, model_path, pad_tokenizer, mutation, drop, packing):
    from rlft import SFTTrainer

    ds = _mutated({"text": ["the value is returned.", "the file is closed."], "id": [1, 2]}, "text", mutation, drop)
    valid = False if drop else MUTATIONS[mutation][1]
    _check(lambda: SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(scratch),
                              train_dataset=ds, processing_class=pad_tokenizer, dataset_text_field="text",
                              max_seq_length=16, packing=packing),
           valid)


@SETTINGS
@given(column=st.sampled_from(["input_ids_chosen", "input_ids_rejected", "attention_mask_chosen"]),
       mutation=st.sampled_from(["ok", "empty list", "wrong type", "very long", "negative id"]), drop=st.booleans())
def test_reward_datasets(scratch, model_path, pad_tokenizer, column, mutation, drop):
    from rlft import RewardConfig, RewardTrainer

    c, r = pad_tokenizer(["the value is returned.", "a list"]), pad_tokenizer(["zq xv", "xx"])
    rows = {"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
            "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]}
    rows = {k: list(v) for k, v in rows.items()}
    if drop:
        del rows[column]
    elif mutation == "empty list":
        rows[column] = [[] for _ in rows[column]]
    elif mutation == "wrong type":
        rows[column] = ["text" for _ in rows[column]]
    elif mutation == "very long":
        rows[column] = [[5] * 400 for _ in rows[column]]
        twin = column.replace("input_ids", "attention_mask")
        if twin in rows:
            rows[twin] = [[1] * 400 for _ in rows[column]]
    elif mutation == "negative id":
        rows[column] = [[-3] + list(v[1:]) for v in rows[column]]
    valid = not drop and mutation == "ok"  # a "very long" mask next to short ids is a length mismatch
    cfg = RewardConfig(output_dir=scratch, report_to=[], use_cpu=True, max_steps=1, per_device_train_batch_size=2,
                       save_strategy="no", disable_tqdm=True, max_length=64, gradient_checkpointing=False)

    def make():
        model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1)
        model.config.pad_token_id = pad_tokenizer.pad_token_id
        return RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_dict(rows), processing_class=pad_tokenizer)

    if mutation == "very long" and not drop and column.startswith("input_ids"):  # all dropped by max_length
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="max_length|no example|empty"):
                make().train()
        return
    _check(make, valid)


@SETTINGS
@given(mutation=st.sampled_from(sorted(MUTATIONS)))
def test_iterative_sft_texts(scratch, model_path, pad_tokenizer, mutation):
    from rlft import IterativeSFTTrainer

    build, valid = MUTATIONS[mutation]
    texts = [build(t) for t in ["the value is returned.", "the file is closed."]]
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(scratch, max_steps=-1),
                                  tokenizer=pad_tokenizer, max_length=32)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = trainer.step(texts=texts)
        except (ValueError, TypeError) as err:
            assert valid is not True, f"valid data was rejected: {err}"
            assert any(word in str(err).lower() for word in CLEAR), f"unclear error: {err}"
            assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))
            return
    assert valid is not False, "malformed texts trained without an error"
    assert math.isfinite(float(out["loss"]))


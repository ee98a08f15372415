import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, TrainingArguments

from rlft import IterativeSFTTrainer  # the seed's `from trl import IterativeSFTTrainer`, renamed

SEED = Path("/work/shared/seeds/001_011443abf8095fda.txt")
TEXTS = ["the value is returned.", "return a new list.", "the file is closed."]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=3,
                learning_rate=1e-2, save_strategy="no", logging_steps=1, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def test_signature_matches_seed():
    lines = SEED.read_text(encoding="utf-8").splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == "### `class trl.IterativeSFTTrainer`")
    sig = next(line for line in lines[i:] if line.startswith("( "))
    params = inspect.signature(IterativeSFTTrainer.__init__).parameters
    names = [n for n, _t, _d in re.findall(r"(\w+): (\w+)(?: = (.*?))?(?= \w+: |\s*\)$)", sig.strip()[2:])]
    assert names == [p for p in params if p not in ("self", "processing_class")]
    assert params["truncation_mode"].default == "keep_end" and params["optimize_device_cache"].default is False
    step = inspect.signature(IterativeSFTTrainer.step).parameters
    assert list(step)[1:] == ["input_ids", "attention_mask", "labels", "texts", "texts_labels"]


def test_seed_usage_runs_unchanged(model_path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default TrainingArguments write under ./trainer_output
    model_name = model_path("gpt2")
    # --- the seed's example, verbatim apart from the import ---
    model = AutoModelForCausalLM.from_pretrained(model_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = IterativeSFTTrainer(
        model,
        tokenizer
    )
    enc = [tokenizer(t, return_tensors="pt") for t in TEXTS]
    input_ids = [e["input_ids"][0] for e in enc]
    attention_mask = [e["attention_mask"][0] for e in enc]
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask
    }
    trainer.step(**inputs)
    texts = TEXTS
    inputs = {
        "texts": texts
    }
    trainer.step(**inputs)
    # ---
    assert trainer.processing_class is tokenizer and trainer.state.global_step == 2


def test_causal_learns_and_changes_all_params(tmp_path, pad_tokenizer, model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("qwen2"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = IterativeSFTTrainer(model=model, args=_args(tmp_path), tokenizer=pad_tokenizer, max_length=16)
    losses = [trainer.step(texts=TEXTS)["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 1.0, losses
    for n, p in trainer.model.named_parameters():
        assert not torch.equal(before[n], p.detach()), f"{n} did not change"
    trainer.save_model(str(tmp_path / "it"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "it"))
    ids = pad_tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(ids).logits, reloaded.eval()(ids).logits)


@pytest.mark.parametrize("arch", ["t5", pytest.param("bart", marks=pytest.mark.slow)])
def test_seq2seq_with_text_labels_and_tensors(tmp_path, pad_tokenizer, model_path, arch):
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path(arch))
    trainer = IterativeSFTTrainer(model, args=_args(tmp_path), processing_class=pad_tokenizer, optimize_device_cache=True)
    losses = [trainer.step(texts=TEXTS, texts_labels=["yes", "no", "yes"])["loss"] for _ in range(3)]
    assert losses[-1] < losses[0]
    ids = [pad_tokenizer(t, return_tensors="pt")["input_ids"][0] for t in TEXTS]
    stats = trainer.step(input_ids=ids, labels=[torch.tensor([5, 6]), torch.tensor([7]), torch.tensor([8, 9, 10])])
    assert stats["num_minibatches"] == 1
    with pytest.raises(ValueError, match="seq2seq model needs labels"):
        trainer.step(texts=TEXTS)


def test_truncation_modes(tmp_path, pad_tokenizer, model_path):
    ids = [torch.arange(10, 20)]
    keep_end = IterativeSFTTrainer(model_path and AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(tmp_path),
                                   tokenizer=pad_tokenizer, max_length=4)
    assert keep_end._build_examples(ids, None, None, None, None)[0]["input_ids"].tolist() == [16, 17, 18, 19]
    keep_start = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(tmp_path),
                                     tokenizer=pad_tokenizer, max_length=4, truncation_mode="keep_start")
    assert keep_start._build_examples(ids, None, None, None, None)[0]["input_ids"].tolist() == [10, 11, 12, 13]
    with pytest.raises(ValueError, match="truncation_mode"):
        IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), tokenizer=pad_tokenizer, truncation_mode="middle")


def test_bad_inputs(tmp_path, pad_tokenizer, tokenizer, model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    t = IterativeSFTTrainer(model, args=_args(tmp_path), tokenizer=pad_tokenizer)
    ids = [torch.tensor([1, 2, 3])]
    with pytest.raises(ValueError, match="either input_ids"):
        t.step(input_ids=ids, texts=["a"])
    with pytest.raises(ValueError, match="either input_ids"):
        t.step()
    with pytest.raises(ValueError, match="attention_mask has 2 entries, expected 1"):
        t.step(input_ids=ids, attention_mask=[torch.ones(3), torch.ones(3)])
    with pytest.raises(TypeError, match="list of str"):
        t.step(texts=[1, 2])
    with pytest.raises(ValueError, match="texts_labels goes with texts"):
        t.step(input_ids=ids, texts_labels=["a"])
    with pytest.raises(ValueError, match="example 0 has input_ids"):
        t.step(input_ids=ids, labels=[torch.tensor([1, 2])])
    with pytest.raises(ValueError, match="pad token"):
        IterativeSFTTrainer(model, AutoTokenizer.from_pretrained(model_path("gpt2")))  # fresh: no pad token
    with pytest.raises(TypeError, match="both as args"):
        IterativeSFTTrainer(model, pad_tokenizer, tokenizer=pad_tokenizer)

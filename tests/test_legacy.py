"""Legacy mode: each transformers 4 spelling of TRL 0.7-era scripts fails on transformers 5 without it, runs
with it (translated as transformers 4 meant it), warns once, and everything is put back afterwards."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import rlft
from rlft import _compat, legacy


@pytest.fixture(autouse=True)
def legacy_off_and_fresh_warnings(monkeypatch):
    """Every test starts with legacy mode off and an empty warn-once registry, and leaves them as it found them."""
    monkeypatch.setattr(_compat, "_warned", set())
    was_on = legacy.is_legacy_mode_enabled()
    legacy.disable_legacy_mode()
    yield
    legacy.disable_legacy_mode()
    if was_on:
        legacy.enable_legacy_mode()


def training_args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), **kw)


def originals():
    from datasets import load as datasets_load
    from transformers import PreTrainedModel, Trainer, TrainingArguments
    from transformers.pipelines.text_classification import TextClassificationPipeline

    return (TrainingArguments.__dict__["__init__"], PreTrainedModel.__dict__["from_pretrained"],
            TextClassificationPipeline.__dict__["_sanitize_parameters"], Trainer.__dict__["__init__"],
            datasets_load.load_dataset_builder)


# ----------------------------------------------------------------------------- switching
def test_off_by_default_and_restored_exactly():
    before = originals()
    assert not rlft.is_legacy_mode_enabled()
    with rlft.legacy_mode():
        assert rlft.is_legacy_mode_enabled()
        during = originals()
        assert all(a is not b for a, b in zip(before, during))
        rlft.enable_legacy_mode()  # idempotent: no double wrapping
        assert originals() == during
        with rlft.legacy_mode(enabled=False):
            assert originals() == before
        assert rlft.is_legacy_mode_enabled()  # the inner block restored the outer state
        assert all(a is not b for a, b in zip(before, originals()))
    assert not rlft.is_legacy_mode_enabled()
    assert originals() == before
    rlft.disable_legacy_mode()  # a no-op when off


def run_python(code: str, **env):
    full_env = {k: v for k, v in os.environ.items() if k != legacy.ENV_VAR}
    full_env.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.slow  # three fresh interpreters importing transformers
def test_environment_variable_turns_it_on_at_import():
    code = ("import rlft, tempfile\nfrom transformers import TrainingArguments\n"
            "a = TrainingArguments(output_dir=tempfile.mkdtemp(), evaluation_strategy='steps', eval_steps=2)\n"
            "print(rlft.is_legacy_mode_enabled(), a.eval_strategy == 'steps')")
    on = run_python(code, RLFT_LEGACY="1")
    assert on.returncode == 0, on.stderr[-2000:]
    assert on.stdout.split() == ["True", "True"]
    off = run_python(code, RLFT_LEGACY="0")
    assert off.returncode != 0 and "evaluation_strategy" in off.stderr
    bad = run_python("import rlft", RLFT_LEGACY="maybe")
    assert bad.returncode != 0 and "RLFT_LEGACY='maybe'" in bad.stderr


def test_environment_values():
    assert legacy.legacy_mode_requested({}) is False
    assert legacy.legacy_mode_requested({"RLFT_LEGACY": " On "}) is True
    assert legacy.legacy_mode_requested({"RLFT_LEGACY": "false"}) is False
    with pytest.raises(ValueError, match="1/true/yes/on"):
        legacy.legacy_mode_requested({"RLFT_LEGACY": "2"})


# ----------------------------------------------------------------------------- TrainingArguments
@pytest.mark.parametrize("old, error, check", [
    (dict(evaluation_strategy="steps", eval_steps=5), TypeError, lambda a: a.eval_strategy == "steps"),
    (dict(group_by_length=True), TypeError, lambda a: a.train_sampling_strategy == "group_by_length"),
    (dict(optim="adamw_hf"), ValueError, lambda a: a.optim == "adamw_torch"),
    (dict(no_cuda=True, logging_dir="runs"), TypeError, lambda a: a.use_cpu),
], ids=["evaluation_strategy", "group_by_length", "adamw_hf", "no_cuda"])
def test_training_arguments_spellings(tmp_path, old, error, check):
    name = next(iter(old.values())) if "optim" in old else next(iter(old))
    with pytest.raises(error, match=name):
        training_args(tmp_path, **old)
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match=name):
            args = training_args(tmp_path, **old)
    assert check(args)


def test_report_to_none_means_all_installed_integrations(tmp_path, model_path):
    from transformers import AutoModelForCausalLM, Trainer
    from transformers.integrations import get_available_reporting_integrations

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with pytest.raises(ValueError, match="None is not supported"):
        Trainer(model=model, args=training_args(tmp_path, report_to=None))
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="report_to=None"):
            args = training_args(tmp_path, report_to=None)
        Trainer(model=model, args=args)
    assert args.report_to == get_available_reporting_integrations()  # transformers 4's meaning of None


def test_each_mapping_warns_once(tmp_path):
    with rlft.legacy_mode():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                training_args(tmp_path, evaluation_strategy="no", optim="adamw_hf")
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert sum("evaluation_strategy" in m for m in messages) == 1, messages
    assert sum("adamw_hf" in m for m in messages) == 1, messages


def test_old_and_new_spelling_together_is_an_error(tmp_path, model_path):
    from transformers import AutoModelForCausalLM

    with rlft.legacy_mode():
        with pytest.raises(TypeError, match="both"):
            training_args(tmp_path, evaluation_strategy="no", eval_strategy="no")
        with pytest.raises(TypeError, match="both 'use_auth_token'"):
            AutoModelForCausalLM.from_pretrained(model_path("gpt2"), use_auth_token=True, token=True)


# ----------------------------------------------------------------------------- from_pretrained
def test_from_pretrained_use_auth_token_and_flash_flag(model_path):
    from transformers import AutoModelForCausalLM

    from rlft import AutoModelForCausalLMWithValueHead

    path = model_path("gpt2")
    for old in (dict(use_auth_token=True), dict(use_flash_attention_2=False)):
        with pytest.raises(TypeError, match=list(old)[0]):
            AutoModelForCausalLM.from_pretrained(path, **old)
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="use_auth_token"):
            model = AutoModelForCausalLM.from_pretrained(path, use_auth_token=True)
        with pytest.warns(FutureWarning, match="use_flash_attention_2"):
            AutoModelForCausalLM.from_pretrained(path, use_flash_attention_2=False)
        AutoModelForCausalLMWithValueHead.from_pretrained(path, use_auth_token="hf_unused")  # reaches the same entry point
    reference = AutoModelForCausalLM.from_pretrained(path)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_from_pretrained_quantization_flags_become_a_quantization_config(model_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(TypeError, match="load_in_8bit"):
        AutoModelForCausalLM.from_pretrained(model_path("gpt2"), load_in_8bit=True)
    out = legacy.legacy_from_pretrained_kwargs({"load_in_4bit": True, "use_flash_attention_2": True, "use_auth_token": "t"}, "f")
    assert out["quantization_config"].load_in_4bit and not out["quantization_config"].load_in_8bit
    assert out["attn_implementation"] == "flash_attention_2" and out["token"] == "t"
    assert legacy.legacy_from_pretrained_kwargs({"load_in_8bit": False}, "f") == {}
    with pytest.raises(TypeError, match="quantization_config"):
        legacy.legacy_from_pretrained_kwargs({"load_in_8bit": True, "quantization_config": object()}, "f")


# ----------------------------------------------------------------------------- pipeline(return_all_scores=True)
@pytest.fixture
def classifier_path(tmp_path, pad_tokenizer):
    """A tiny two-label sentiment classifier saved offline, labels NEGATIVE (0) and POSITIVE (1)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(pad_tokenizer), num_labels=2,
                     id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                     pad_token_id=pad_tokenizer.eos_token_id, bos_token_id=pad_tokenizer.eos_token_id,
                     eos_token_id=pad_tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(str(tmp_path / "cls"))
    pad_tokenizer.save_pretrained(str(tmp_path / "cls"))
    return str(tmp_path / "cls")


def test_pipeline_return_all_scores_gives_every_label_in_label_order(classifier_path, pad_tokenizer):
    from transformers import AutoModelForSequenceClassification, pipeline

    texts = ["the file is closed.", "the value is returned to the caller."]
    sent_kwargs = {"return_all_scores": True, "function_to_apply": "none", "batch_size": 2}  # as TRL 0.7's ppo.py
    pipe = pipeline("sentiment-analysis", model=classifier_path, device="cpu")
    with pytest.raises(KeyError):  # transformers 5 ignores the flag and returns only the top label per text
        [output[1]["score"] for output in pipe(texts, **sent_kwargs)]
    model = AutoModelForSequenceClassification.from_pretrained(classifier_path).eval()
    with torch.no_grad():
        logits = [model(**pad_tokenizer(t, return_tensors="pt")).logits[0] for t in texts]  # independent forward
    assert logits[0][0] > logits[0][1] and logits[1][1] > logits[1][0]  # so sorting by score would reorder one of them
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="return_all_scores"):
            outputs = pipe(texts, **sent_kwargs)
        single = pipe(texts[0], **sent_kwargs)
        at_construction = pipeline("sentiment-analysis", model=classifier_path, device="cpu", return_all_scores=True)
        probabilities = at_construction(texts)
    for output, logit in zip(outputs, logits):
        assert [d["label"] for d in output] == ["NEGATIVE", "POSITIVE"]  # label order, not sorted by score
        assert output[1]["score"] == pytest.approx(logit[1].item(), abs=1e-5)
        assert output[0]["score"] == pytest.approx(logit[0].item(), abs=1e-5)
    # one string: a list holding its list of every label, as transformers 4
    assert len(single) == 1 and [d["label"] for d in single[0]] == ["NEGATIVE", "POSITIVE"]
    assert [d["score"] for d in single[0]] == pytest.approx(logits[0].tolist(), abs=1e-5)
    for output, logit in zip(probabilities, logits):
        assert [d["score"] for d in output] == pytest.approx(torch.softmax(logit, -1).tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- Trainer
def test_trainer_tokenizer_keyword(tmp_path, model_path, pad_tokenizer):
    from transformers import AutoModelForCausalLM, Trainer

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    args = training_args(tmp_path, report_to="none")
    with pytest.raises(TypeError, match="tokenizer"):
        Trainer(model=model, args=args, tokenizer=pad_tokenizer)
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="processing_class"):
            trainer = Trainer(model=model, args=args, tokenizer=pad_tokenizer)
    assert trainer.processing_class is pad_tokenizer


def test_transformers4_compute_loss_override_trains(tmp_path, model_path):
    """The StackLLaMA reward script's pattern: a Trainer subclass with compute_loss(model, inputs, return_outputs=False)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer

    class OldStyleTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False):
            out = model(input_ids=inputs["input_ids"], labels=inputs["input_ids"])
            return (out.loss, out) if return_outputs else out.loss

    data = Dataset.from_dict({"input_ids": [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]})

    def fit(**kw):
        model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
        args = training_args(tmp_path, report_to="none", max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                             gradient_accumulation_steps=2, save_strategy="no", disable_tqdm=True, **kw)
        trainer = OldStyleTrainer(model=model, args=args, train_dataset=data, data_collator=lambda rows: {
            "input_ids": torch.tensor([r["input_ids"] for r in rows])})
        trainer.train()
        return trainer

    with pytest.raises(TypeError, match="num_items_in_batch"):
        fit()
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="compute_loss"):
            trainer = fit()
    # transformers 4 averaged such a loss over the accumulation steps: the train loss is the mean of the two
    # micro-batches (about ln(1024) = 6.9 for a random 1k-vocabulary model), not their sum (about 13.9).
    assert trainer.loss_is_scaled_for_ga is False
    assert 5 < trainer.state.log_history[-1]["train_loss"] < 9


# ----------------------------------------------------------------------------- datasets
def test_load_dataset_use_auth_token(tmp_path):
    from datasets import load_dataset

    path = tmp_path / "data.json"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ("a", "b")) + "\n")
    with pytest.raises(TypeError, match="use_auth_token"):
        load_dataset("json", data_files=str(path), split="train", use_auth_token=True)
    with rlft.legacy_mode():
        with pytest.warns(FutureWarning, match="use_auth_token"):
            ds = load_dataset("json", data_files=str(path), split="train", use_auth_token=True)
    assert ds["text"] == ["a", "b"]


def test_every_patch_is_tested_here():
    """A new entry in legacy.PATCHES needs a test above (this lists the ones that have one)."""
    tested = {"transformers.TrainingArguments.__init__", "transformers.PreTrainedModel.from_pretrained",
              "transformers.pipelines.text_classification.TextClassificationPipeline._sanitize_parameters",
              "transformers.Trainer.__init__", "datasets.load.load_dataset_builder"}
    assert {p.name for p in legacy.PATCHES} == tested
    assert "num_items_in_batch" in inspect.signature(__import__("transformers").Trainer.compute_loss).parameters


# ----------------------------------------------------------------------------- a TRL 0.7-style script, unchanged but for the import
SCRIPT = '''
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, pipeline

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, SFTTrainer  # was: from trl import ...

model_dir, classifier_dir, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(model_dir, use_auth_token=True)
tokenizer.pad_token = tokenizer.eos_token

# supervised fine-tuning, transformers 4 style arguments
model = AutoModelForCausalLM.from_pretrained(model_dir, use_auth_token=True)
training_args = TrainingArguments(output_dir=out, evaluation_strategy="no", report_to=None, group_by_length=True,
                                  optim="adamw_hf", logging_dir=out + "/logs", no_cuda=True, max_steps=2,
                                  per_device_train_batch_size=2, save_strategy="no")
texts = ["the value is returned to the caller.", "return a new list of the items.", "the file is closed."]
trainer = SFTTrainer(model=model, args=training_args, train_dataset=Dataset.from_dict({"text": texts}),
                     dataset_text_field="text", max_seq_length=32, tokenizer=tokenizer)
trainer.train()

# PPO with a sentiment pipeline as the reward, as TRL 0.7's ppo.py scores its samples
config = PPOConfig(batch_size=2, mini_batch_size=1, learning_rate=1e-4)
ppo_trainer = PPOTrainer(config, AutoModelForCausalLMWithValueHead.from_pretrained(model_dir, use_auth_token=True),
                         None, tokenizer)
sentiment_pipe = pipeline("sentiment-analysis", model=classifier_dir, device="cpu")
sent_kwargs = {"return_all_scores": True, "function_to_apply": "none", "batch_size": 2}
queries = [tokenizer.encode(t, return_tensors="pt")[0] for t in ("the file", "return a")]
generation_kwargs = {"min_length": -1, "top_k": 0.0, "top_p": 1.0, "do_sample": True,
                     "pad_token_id": tokenizer.eos_token_id, "max_new_tokens": 4}
responses = ppo_trainer.generate(queries, return_prompt=False, **generation_kwargs)
batch_texts = [tokenizer.decode(q) + tokenizer.decode(r) for q, r in zip(queries, responses)]
rewards = [torch.tensor(output[1]["score"]) for output in sentiment_pipe(batch_texts, **sent_kwargs)]
stats = ppo_trainer.step(queries, responses, rewards)
print("SCRIPT-OK", len(rewards), "objective/kl" in stats)
'''


@pytest.mark.slow  # two fresh interpreters running SFT and a PPO step
def test_trl07_style_script_runs_with_legacy_mode_only(tmp_path, model_path, classifier_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    argv = [str(script), model_path("gpt2"), classifier_path, str(tmp_path / "out")]
    full_env = {k: v for k, v in os.environ.items() if k != legacy.ENV_VAR}

    def run(**env):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                              env={**full_env, "OMP_NUM_THREADS": "1", **env})

    without = run()
    assert without.returncode != 0 and "use_auth_token" in without.stderr
    with_legacy = run(RLFT_LEGACY="1")
    assert with_legacy.returncode == 0, with_legacy.stderr[-3000:]
    assert "SCRIPT-OK 2 True" in with_legacy.stdout

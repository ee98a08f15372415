import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from rlft.data.sft import ConstantLengthDataset, DataCollatorForCompletionOnlyLM
from rlft.trainer.sft_trainer import SFTTrainer

SEED = Path("/work/shared/seeds/001_011443abf8095fda.txt")
TEXTS = ["the value is returned to the caller.", "return a new list of the items.", "the file is closed."]


def _seed_signature(header):
    lines = SEED.read_text(encoding="utf-8").splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == header)
    sig = next(line for line in lines[i:] if line.startswith("( "))
    return re.findall(r"(\w+): (\w+)(?: = (.*?))?(?= \w+: |\s*\)$)", sig.strip()[2:])


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=3, per_device_train_batch_size=3,
                learning_rate=1e-2, save_strategy="no", logging_steps=1, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _ds(n=6):
    return Dataset.from_dict({"text": [TEXTS[i % 3] for i in range(n)]})


def test_signature_matches_seed():
    params = inspect.signature(SFTTrainer.__init__).parameters
    for name, _t, default in _seed_signature("### `class trl.SFTTrainer`"):
        assert name in params, name
        if default in ("None", "False", "1024", "3.6", "1000"):
            assert repr(params[name].default) == default, (name, params[name].default)
    assert params["optimizers"].default == (None, None)


def test_train_changes_all_params_learns_saves(tmp_path, pad_tokenizer, model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=_args(tmp_path, max_steps=6, learning_rate=2e-2), train_dataset=_ds(3),
                         eval_dataset=_ds(3), tokenizer=pad_tokenizer, dataset_text_field="text", max_seq_length=32)
    first = trainer.evaluate()["eval_loss"]
    trainer.train()
    last = trainer.evaluate()["eval_loss"]
    assert last < first - 0.5, (first, last)
    for n, p in trainer.model.named_parameters():
        assert not torch.equal(before[n], p.detach()), f"{n} did not change"
    trainer.save_model(str(tmp_path / "sft"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    ids = pad_tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(ids).logits, reloaded.eval()(ids).logits)


def test_model_as_path_with_init_kwargs_and_default_max_len(tmp_path, model_path):
    with pytest.warns(UserWarning, match="max_seq_length not set; using 512"):
        trainer = SFTTrainer(model=model_path("gpt2"), args=_args(tmp_path, max_steps=1), train_dataset=_ds(),
                             dataset_text_field="text", model_init_kwargs={"dtype": torch.float32})
    assert trainer.max_seq_length == 512 and trainer.processing_class.pad_token is not None
    trainer.train()
    with pytest.raises(ValueError, match="model_init_kwargs"):
        SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path("gpt2")), args=_args(tmp_path), train_dataset=_ds(),
                   dataset_text_field="text", max_seq_length=16, model_init_kwargs={"dtype": torch.float32})


def test_formatting_func_and_bad_datasets(tmp_path, pad_tokenizer, model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    kw = dict(model=model, args=_args(tmp_path, max_steps=1), processing_class=pad_tokenizer, max_seq_length=16)
    t = SFTTrainer(train_dataset=_ds(), formatting_func=lambda b: [f"Q: {x}" for x in b["text"]], **kw)
    assert pad_tokenizer.decode(t.train_dataset[0]["input_ids"]).startswith("Q:")
    with pytest.raises(ValueError, match=r"no column 'content'; its columns are \['text'\]"):
        SFTTrainer(train_dataset=_ds(), dataset_text_field="content", **kw)
    with pytest.raises(ValueError, match="pass dataset_text_field"):
        SFTTrainer(train_dataset=_ds(), **kw)
    with pytest.raises(TypeError, match="must return a list of str"):
        SFTTrainer(train_dataset=_ds(), formatting_func=lambda b: "one string", **kw)
    with pytest.raises(TypeError, match="unknown dataset_kwargs"):
        SFTTrainer(train_dataset=_ds(), dataset_text_field="text", dataset_kwargs={"bogus": 1}, **kw)


def test_eos_kept_in_labels_when_pad_is_eos(tmp_path, pad_tokenizer, model_path):
    ds = Dataset.from_dict({"text": [t + pad_tokenizer.eos_token for t in TEXTS]})
    trainer = SFTTrainer(model=model_path("gpt2"), args=_args(tmp_path), train_dataset=ds, dataset_text_field="text",
                         processing_class=pad_tokenizer, max_seq_length=32)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for row in range(3):
        n = int(batch["attention_mask"][row].sum())
        assert batch["labels"][row, n - 1].item() == pad_tokenizer.eos_token_id


@pytest.mark.parametrize("arch", ["llama", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_packing_keeps_examples_apart(tmp_path, pad_tokenizer, model_path, arch):
    tok = pad_tokenizer
    a, b = tok(TEXTS[0])["input_ids"], tok(TEXTS[1])["input_ids"]
    ds = Dataset.from_dict({"text": TEXTS[:2]})
    trainer = SFTTrainer(model=model_path(arch), args=_args(tmp_path), train_dataset=ds, dataset_text_field="text",
                         processing_class=tok, packing=True, max_seq_length=len(a) + len(b) + 2)
    assert len(trainer.train_dataset) == 1
    batch = trainer.data_collator([trainer.train_dataset[0]])
    model = trainer.model.eval()
    model.config.use_cache = False  # as Trainer sets it (args.use_cache=False)

    def per_token(ids, labels, **kw):
        logits = model(input_ids=ids, **kw).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="none")

    with torch.no_grad():
        packed = per_token(batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])
        alone_a = per_token(torch.tensor([a + [tok.eos_token_id]]), torch.tensor([a + [tok.eos_token_id]]))
        alone_b = per_token(torch.tensor([b + [tok.eos_token_id]]), torch.tensor([b + [tok.eos_token_id]]))
    torch.testing.assert_close(packed[: len(a)], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[len(a) + 1 :], alone_b, atol=1e-5, rtol=1e-4)
    assert packed[len(a)].item() == 0.0  # b's first token: ignored, nothing in b predicts it
    # plain concatenation is still available, and there b does see a
    plain = SFTTrainer(model=model_path(arch), args=_args(tmp_path), train_dataset=ds, dataset_text_field="text",
                       processing_class=tok, packing=True, max_seq_length=len(a) + len(b) + 2,
                       dataset_kwargs={"reset_position_ids": False})
    row = plain.train_dataset[0]
    assert "position_ids" not in row and row["labels"] == row["input_ids"]
    plain.train()


@pytest.mark.slow
def test_packing_trains_and_infinite(tmp_path, pad_tokenizer, model_path):
    ds = _ds(30)
    trainer = SFTTrainer(model=model_path("qwen2"), args=_args(tmp_path, max_steps=3), train_dataset=ds, dataset_text_field="text",
                         processing_class=pad_tokenizer, packing=True, max_seq_length=16, num_of_sequences=4, chars_per_token=3.6)
    trainer.train()
    inf = SFTTrainer(model=model_path("qwen2"), args=_args(tmp_path, max_steps=3), train_dataset=_ds(3), dataset_text_field="text",
                     processing_class=pad_tokenizer, packing=True, max_seq_length=8, infinite=True)
    assert isinstance(inf.train_dataset, ConstantLengthDataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inf.train()
    # a ConstantLengthDataset given directly is used as is
    cld = ConstantLengthDataset(pad_tokenizer, ds, dataset_text_field="text", seq_length=16)
    assert SFTTrainer(model=model_path("qwen2"), args=_args(tmp_path), train_dataset=cld, processing_class=pad_tokenizer,
                      max_seq_length=16).train_dataset is cld


def test_neftune_only_during_training(tmp_path, pad_tokenizer, model_path):
    from transformers import TrainerCallback

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    seen = []

    class Spy(TrainerCallback):  # registered after NEFTune's hook, so it sees the noisy output
        def on_train_begin(self, args, state, control, model=None, **kw):
            emb = model.get_input_embeddings()
            self.handle = emb.register_forward_hook(
                lambda m, i, o: seen.append((m.training, o.detach().clone(), m.weight[i[0]].detach().clone())))

        def on_train_end(self, args, state, control, **kw):
            self.handle.remove()

    trainer = SFTTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_ds(), dataset_text_field="text",
                         processing_class=pad_tokenizer, max_seq_length=16, neftune_noise_alpha=5.0, callbacks=[Spy()])
    emb = trainer.model.get_input_embeddings()
    trainer.train()
    noisy = [torch.equal(out, clean) for training, out, clean in seen if training]
    assert noisy and not any(noisy)  # every training forward got noise
    assert not emb._forward_hooks  # NEFTune's hook is gone after training
    ids = pad_tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    emb.train()
    torch.testing.assert_close(emb(ids), emb.weight[ids])  # embeddings unchanged after training ends
    trainer.save_model(str(tmp_path / "m"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).get_input_embeddings()
    torch.testing.assert_close(reloaded(ids), emb.weight[ids])


def test_peft_and_completion_only(tmp_path, pad_tokenizer, model_path):
    from peft import LoraConfig

    tok = pad_tokenizer
    ds = Dataset.from_dict({"text": [f"### Question: {t}\n### Answer: yes" + tok.eos_token for t in TEXTS]})
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)
    trainer = SFTTrainer(model=model_path("llama"), args=_args(tmp_path, max_steps=2), train_dataset=ds, dataset_text_field="text",
                         processing_class=tok, max_seq_length=64, data_collator=collator,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora)
    trainer.train()
    assert any(not torch.equal(lora[n], p.detach()) for n, p in trainer.model.named_parameters() if "lora_B" in n)

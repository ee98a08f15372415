"""DPOTrainer on tiny random models: API fidelity, training behaviour, references, tokenisation."""

from __future__ import annotations

import ast
import inspect
import math
import re
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, TrainerCallback, TrainingArguments

from rlft import DPOTrainer

SEED_DOC = Path("/work/shared/seeds/001_011443abf8095fda.txt")

PROMPTS = ["What is the meaning of", "Return the value of", "Create a new", "The default is"]
CHOSEN = [" the argument given", " the first item", " object from the list", " to use the file"]
REJECTED = [" nothing at all here", " when a type", " is not a string", " if the path"]


def _dataset(n: int = 8) -> Dataset:
    k = len(PROMPTS)
    return Dataset.from_dict(
        {"prompt": [PROMPTS[i % k] for i in range(n)], "chosen": [CHOSEN[i % k] for i in range(n)],
         "rejected": [REJECTED[i % k] for i in range(n)]}
    )


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=2,
        learning_rate=1e-3, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        remove_unused_columns=False, seed=0, disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(tmp_path, model, tokenizer, **kw) -> DPOTrainer:
    kw.setdefault("args", _args(tmp_path))
    kw.setdefault("train_dataset", _dataset())
    kw.setdefault("max_length", 48)
    kw.setdefault("max_prompt_length", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=model, processing_class=tokenizer, **kw)


def _causal(model_path, arch="gpt2"):
    return AutoModelForCausalLM.from_pretrained(model_path(arch))


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


# ---------------------------------------------------------------- API fidelity
def _seed_signature() -> list[tuple[str, object]]:
    text = SEED_DOC.read_text(encoding="utf-8")
    section = text[text.index("### `class trl.DPOTrainer`") :]
    line = next(l for l in section.splitlines() if l.startswith("( model"))
    params = re.findall(r"(\w+): \w+ = ('[^']*'|\([^)]*\)|\S+)", line)
    return [(name, ast.literal_eval(value)) for name, value in params]


@pytest.mark.skipif(not SEED_DOC.exists(), reason="TRL 0.7.10 doc seed not available")
def test_signature_matches_trl_0_7_10():
    documented = _seed_signature()
    assert len(documented) == 30
    params = inspect.signature(DPOTrainer.__init__).parameters
    ours = [(n, p.default) for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [n for n, _ in ours] == [n for n, _ in documented]
    for (name, default), (_, doc_default) in zip(ours, documented):
        assert default == doc_default, name
    assert repr(params["padding_value"].default) == "0"


def test_documented_methods_exist():
    for name in ("build_tokenized_answer", "compute_reference_log_probs", "concatenated_forward", "concatenated_inputs",
                 "dpo_loss", "evaluation_loop", "get_batch_logps", "get_batch_loss_metrics", "get_batch_samples",
                 "get_eval_dataloader", "get_train_dataloader", "log", "null_ref_context", "tokenize_row",
                 "compute_loss", "prediction_step"):
        assert callable(getattr(DPOTrainer, name)), name
    assert list(inspect.signature(DPOTrainer.dpo_loss).parameters) == [
        "self", "policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
        "reference_free"]


# ---------------------------------------------------------------- training behaviour
def test_every_trainable_parameter_changes_and_metrics_logged(tmp_path, model_path, pad_tokenizer):
    model = _causal(model_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = _trainer(tmp_path, model, pad_tokenizer)
    assert trainer.ref_model is not None and trainer.ref_model is not model
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    for name, p in trainer.model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"
    for name, p in trainer.ref_model.named_parameters():
        assert torch.equal(p, ref_before[name]), f"reference {name} changed"
    logged = trainer.state.log_history[0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/rejected", "logps/chosen", "logits/rejected", "logits/chosen"):
        assert key in logged, key
    # Step 1: policy == reference, so h = 0 and the sigmoid loss is log 2.
    assert logged["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logged["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_reward_margin_grows_on_repeated_pairs(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer, args=_args(tmp_path, max_steps=8),
                       eval_dataset=_dataset(4))
    start = trainer.evaluate()
    trainer.train()
    end = trainer.evaluate()
    assert "eval_rewards/margins" in end and "eval_logits/chosen" in end
    assert start["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert end["eval_rewards/margins"] > 0.5
    assert end["eval_rewards/accuracies"] == 1.0
    assert end["eval_loss"] < start["eval_loss"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "kto_pair"])
def test_each_loss_type_matches_the_functional_form(tmp_path, model_path, pad_tokenizer, loss_type):
    model = _causal(model_path)
    ref = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    torch.nn.init.normal_(ref.lm_head.weight, std=0.05)  # a reference that differs from the policy
    trainer = _trainer(tmp_path, model, pad_tokenizer, ref_model=ref, loss_type=loss_type, beta=0.3)
    batch = _first_batch(trainer)
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    pc, pr, _, _ = trainer.concatenated_forward(trainer.model, batch)
    rc, rr, _, _ = trainer.concatenated_forward(trainer.ref_model, batch)
    from rlft.functional.dpo import dpo_loss

    expected, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx((cr - rj).mean().item(), abs=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_ipo_uses_length_averaged_log_probs(tmp_path, model_path, pad_tokenizer):
    model = _causal(model_path)
    sig = _trainer(tmp_path, model, pad_tokenizer, loss_type="sigmoid")
    ipo = _trainer(tmp_path, model, pad_tokenizer, loss_type="ipo")
    batch = _first_batch(sig)
    summed, _, _, _ = sig.concatenated_forward(model, batch)
    averaged, _, _, _ = ipo.concatenated_forward(model, batch)
    n_tokens = (batch["chosen_labels"][:, 1:] != -100).sum(-1)
    assert torch.allclose(averaged, summed / n_tokens, atol=1e-5)


def test_reference_free_dpo_loss(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer)
    losses, _, _ = trainer.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([5.0]), torch.tensor([0.0]),
                                    reference_free=True)
    # h = -1 - (-3) = 2 -> -log sigma(0.1 * 2)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)


# ---------------------------------------------------------------- references
def test_precomputed_reference_matches_live_reference(tmp_path, model_path, pad_tokenizer):
    def ref():
        m = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
        with torch.no_grad():
            m.lm_head.weight.copy_(torch.randn(m.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
        return m

    args = _args(tmp_path, max_steps=1)
    live = _trainer(tmp_path, _causal(model_path), pad_tokenizer, ref_model=ref(), args=args)
    live.train()
    pre = _trainer(tmp_path, _causal(model_path), pad_tokenizer, ref_model=ref(), args=args, precompute_ref_log_probs=True,
                   eval_dataset=_dataset(4))
    pre.train()
    assert pre.ref_model is None  # released after precomputing
    assert "reference_chosen_logps" in pre.train_dataset.column_names
    assert "reference_rejected_logps" in pre.eval_dataset.column_names
    a, b = live.state.log_history[0], pre.state.log_history[0]
    assert abs(a["loss"] - math.log(2)) > 1e-3  # the reference really differs from the policy
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)
    assert pre.evaluate()["eval_loss"] > 0


def test_precompute_without_reference_uses_the_initial_policy(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer, precompute_ref_log_probs=True,
                       eval_dataset=_dataset(4), args=_args(tmp_path, max_steps=4))
    assert trainer.ref_model is None
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # The eval reference was taken before training too (TRL 0.7.10 took it after): margins moved.
    assert trainer.evaluate()["eval_rewards/margins"] > 0


def test_peft_model_uses_disabled_adapter_as_reference(tmp_path, model_path, pad_tokenizer):
    peft = pytest.importorskip("peft")
    model = _causal(model_path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)
    trainer = _trainer(tmp_path, model, pad_tokenizer, peft_config=config)
    assert trainer.is_peft_model and trainer.ref_model is None
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora)
    trainer.train()
    for n, p in trainer.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
        elif "lora_B" in n:
            assert not torch.equal(p, lora[n]), n
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    batch = _first_batch(trainer)
    with trainer.null_ref_context():
        ref_c, _, _, _ = trainer.concatenated_forward(trainer.model, batch)
    plain = _causal(model_path)
    plain_trainer = _trainer(tmp_path, plain, pad_tokenizer)
    plain_c, _, _, _ = plain_trainer.concatenated_forward(plain, batch)
    assert torch.allclose(ref_c, plain_c, atol=1e-5)  # adapter off = the base model


def test_peft_with_separate_reference_adapter(tmp_path, model_path, pad_tokenizer):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)
    model = peft.get_peft_model(_causal(model_path), config, adapter_name="policy")
    model.add_adapter("reference", config)
    model.set_adapter("policy")
    ref_weights = {n: p.detach().clone() for n, p in model.named_parameters() if ".reference." in n}
    trainer = _trainer(tmp_path, model, pad_tokenizer, model_adapter_name="policy", ref_adapter_name="reference")
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for n, p in trainer.model.named_parameters():
        if n in ref_weights:
            assert torch.equal(p, ref_weights[n]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in trainer.model.named_parameters() if "lora_B.policy" in n)
    assert trainer.model.active_adapter == "policy"
    with pytest.raises(ValueError, match="not an adapter"):
        _trainer(tmp_path, model, pad_tokenizer, ref_adapter_name="missing")


def test_same_object_as_reference_is_an_error(tmp_path, model_path, pad_tokenizer):
    model = _causal(model_path)
    with pytest.raises(ValueError, match="same object"):
        _trainer(tmp_path, model, pad_tokenizer, ref_model=model)


# ---------------------------------------------------------------- encoder-decoder
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_trains(tmp_path, model_path, pad_tokenizer, arch):
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path(arch))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(tmp_path, model, pad_tokenizer, max_target_length=16, args=_args(tmp_path, max_steps=3))
    assert trainer.is_encoder_decoder
    row = trainer.train_dataset[0]
    assert "chosen_labels" in row and "chosen_input_ids" not in row
    trainer.train()
    logs = trainer.state.log_history
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logs[2]["rewards/margins"] > 0
    changed = sum(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert changed == len(before)


# ---------------------------------------------------------------- tokenisation
def test_tokenize_row_layout_single_bos_single_eos(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer)
    eos = pad_tokenizer.eos_token  # also the BOS of the tiny (GPT-2 style) tokenizer
    row = trainer.tokenize_row({"prompt": eos + "Create a new", "chosen": " object" + eos, "rejected": " list"})
    bos_id, eos_id = pad_tokenizer.bos_token_id, pad_tokenizer.eos_token_id
    p = row["prompt_input_ids"]
    assert p[0] == bos_id and p[1] != bos_id  # the prompt already had one: not doubled
    for side in ("chosen", "rejected"):
        ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
        assert ids[: len(p)] == p
        assert labels[: len(p)] == [-100] * len(p) and labels[len(p) :] == ids[len(p) :]
        assert ids[-1] == eos_id and ids[-2] != eos_id  # exactly one EOS at the end
        assert row[f"{side}_attention_mask"] == [1] * len(ids)
    joined = pad_tokenizer.decode(row["chosen_input_ids"][len(p) :], skip_special_tokens=True)
    assert joined == " object"


def test_build_tokenized_answer_splits_at_merged_boundary(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer)
    prompt, answer = "The default is", "n't here"
    out = trainer.build_tokenized_answer(prompt, answer)
    full = pad_tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    assert out["prompt_input_ids"] + out["input_ids"] == full
    assert out["input_ids"] and len(out["attention_mask"]) == len(out["input_ids"])


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_truncation_is_explicit_and_counted(tmp_path, model_path, pad_tokenizer, mode):
    long_prompt = " ".join(["value"] * 40)
    long_answer = " ".join(["item"] * 40)
    ds = Dataset.from_dict({"prompt": [long_prompt, "Hi"], "chosen": [long_answer, " a"], "rejected": [" b", " c"]})
    with pytest.warns(UserWarning, match=r"1 of 2 prompts were truncated .* 1 chosen/rejected"):
        trainer = DPOTrainer(model=_causal(model_path), processing_class=pad_tokenizer, args=_args(tmp_path),
                             train_dataset=ds, max_length=24, max_prompt_length=8, truncation_mode=mode)
    assert trainer.truncation_counts["prompt"] == 1 and trainer.truncation_counts["response"] == 1
    row = trainer.train_dataset[0]
    assert len(row["prompt_input_ids"]) == 8
    assert len(row["chosen_input_ids"]) == 24 and len(row["rejected_input_ids"]) <= 24
    full_prompt = [pad_tokenizer.bos_token_id] + pad_tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    expected = full_prompt[-8:] if mode == "keep_end" else full_prompt[:8]
    assert row["prompt_input_ids"] == expected
    trainer.train()  # truncated rows still train


def test_bad_input_gives_clear_errors(tmp_path, model_path, pad_tokenizer):
    model = _causal(model_path)
    no_rejected = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "answer": ["c"]})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rejected'\]"):
        _trainer(tmp_path, model, pad_tokenizer, train_dataset=no_rejected)
    empty = Dataset.from_dict({"prompt": ["a"], "chosen": ["  "], "rejected": ["c"]})
    with pytest.raises(ValueError, match="empty 'chosen'"):
        _trainer(tmp_path, model, pad_tokenizer, train_dataset=empty)
    with pytest.raises(ValueError, match="max_prompt_length"):
        _trainer(tmp_path, model, pad_tokenizer, max_length=16, max_prompt_length=16)
    with pytest.raises(ValueError, match="choose one of sigmoid, hinge, ipo, kto_pair"):
        _trainer(tmp_path, model, pad_tokenizer, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        _trainer(tmp_path, model, pad_tokenizer, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="truncation_mode"):
        _trainer(tmp_path, model, pad_tokenizer, truncation_mode="middle")
    with pytest.raises(TypeError):
        _trainer(tmp_path, model, pad_tokenizer, not_an_argument=1)


def test_padding_value_defaults_to_the_model_pad_id(tmp_path, model_path, tokenizer):
    tokenizer.pad_token = "<pad>"
    pad_id = tokenizer.pad_token_id
    assert pad_id != 0
    trainer = _trainer(tmp_path, _causal(model_path), tokenizer)
    assert trainer.padding_value == pad_id and trainer.data_collator.pad_token_id == pad_id
    explicit = _trainer(tmp_path, _causal(model_path), tokenizer, padding_value=0)
    assert explicit.padding_value == 0  # an explicit 0 is respected
    batch = _first_batch(trainer)
    cat = trainer.concatenated_inputs(batch, padding_value=trainer.padding_value)
    ids, mask = cat["concatenated_input_ids"], cat["concatenated_attention_mask"]
    assert ids.shape[0] == 2 * batch["chosen_input_ids"].shape[0]
    assert (ids[mask == 0] == pad_id).all() and (mask == 0).any()


def test_tokenizer_keyword_is_mapped_to_processing_class(tmp_path, model_path, pad_tokenizer):
    with pytest.warns(FutureWarning, match="processing_class"):
        trainer = DPOTrainer(model=_causal(model_path), tokenizer=pad_tokenizer, args=_args(tmp_path),
                             train_dataset=_dataset(), max_length=48, max_prompt_length=16)
    assert trainer.processing_class is pad_tokenizer


# ---------------------------------------------------------------- generation
def test_get_batch_samples_and_generate_during_eval_without_tracker(tmp_path, model_path, pad_tokenizer):
    trainer = _trainer(tmp_path, _causal(model_path), pad_tokenizer, generate_during_eval=True, eval_dataset=_dataset(4),
                       max_length=24)
    batch = _first_batch(trainer)
    policy, reference = trainer.get_batch_samples(trainer.model, batch)
    assert len(policy) == len(reference) == 4 and all(isinstance(t, str) for t in policy)
    with pytest.warns(UserWarning, match="no tracker"):
        trainer.evaluate()


# A fake tracker stands in for wandb / tensorboard (neither is a dependency); the trainer is
# built with report_to=[] (so transformers makes no real callback) and then pointed at the fake.
def _fake_wandb(monkeypatch, started: bool = True) -> list[dict]:
    logged: list[dict] = []
    module = types.ModuleType("wandb")

    class Table:
        def __init__(self, columns, rows):
            self.columns, self.rows = columns, rows

    module.Table = Table
    module.run = object() if started else None
    module.log = lambda data, **kw: logged.append(data)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return logged


class _FakeTensorBoard(TrainerCallback):
    """Mimics transformers' TensorBoardCallback: a ``tb_writer`` created on first use."""

    def __init__(self):
        self.tb_writer = None
        self.texts: list[tuple[str, str, int]] = []

    def _init_summary_writer(self, args):
        self.tb_writer = types.SimpleNamespace(add_text=lambda tag, text, step: self.texts.append((tag, text, step)))


def _record_generate(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap ``model.generate`` to record (prompt ids, output ids) of every call."""
    calls, real = [], model.generate

    def generate(**kw):
        out = real(**kw)
        calls.append((kw["input_ids"].clone(), out.clone()))
        return out

    model.generate = generate
    return calls


def _sampling_trainer(tmp_path, model_path, tokenizer, report_to):
    # The reference is a different architecture, so its samples are its own.
    trainer = _trainer(tmp_path, _causal(model_path), tokenizer, ref_model=_causal(model_path, "llama"),
                       generate_during_eval=True, eval_dataset=_dataset(4), max_length=24)
    trainer.args.report_to = report_to
    return trainer, _record_generate(trainer.model), _record_generate(trainer.ref_model)


def _expected_rows(tokenizer, policy_calls, reference_calls):
    """[prompt, policy continuation, reference continuation] decoded from the recorded generate calls."""
    (prompts, policy_out), = policy_calls
    (ref_prompts, reference_out), = reference_calls
    assert torch.equal(prompts, ref_prompts)  # both models continued the same prompts
    width = prompts.shape[1]  # decoder-only: outputs are prompt + continuation
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return [[decode(prompts[i]), decode(policy_out[i, width:]), decode(reference_out[i, width:])] for i in range(len(prompts))]


def test_generate_during_eval_logs_a_wandb_table(tmp_path, model_path, pad_tokenizer, monkeypatch):
    logged = _fake_wandb(monkeypatch)
    trainer, policy_calls, reference_calls = _sampling_trainer(tmp_path, model_path, pad_tokenizer, ["wandb"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = trainer.evaluate()
    assert not [w for w in caught if "generate_during_eval" in str(w.message)]
    assert "eval_loss" in metrics
    assert len(logged) == 1 and list(logged[0]) == ["game_log"]
    table = logged[0]["game_log"]
    assert table.columns == ["Prompt", "Policy", "Ref Model"]
    assert table.rows == _expected_rows(pad_tokenizer, policy_calls, reference_calls)
    assert len(table.rows) == 4 and {row[0] for row in table.rows} <= set(PROMPTS)
    assert all(row[1] and row[2] for row in table.rows)  # both models generated something


def test_generate_during_eval_writes_tensorboard_text(tmp_path, model_path, pad_tokenizer):
    trainer, policy_calls, reference_calls = _sampling_trainer(tmp_path, model_path, pad_tokenizer, ["tensorboard"])
    board = _FakeTensorBoard()
    trainer.add_callback(board)
    trainer.evaluate()
    text_logs = [t for t in board.texts if t[0] == "eval/game_log"]
    assert len(text_logs) == 1 and text_logs[0][2] == trainer.state.global_step
    for prompt, policy, reference in _expected_rows(pad_tokenizer, policy_calls, reference_calls):
        assert f"**Prompt** {prompt}\n\n**Policy** {policy}\n\n**Ref Model** {reference}" in text_logs[0][1]


def test_generate_during_eval_without_tracker_warns_once_and_skips(tmp_path, model_path, pad_tokenizer, monkeypatch):
    trainer, policy_calls, reference_calls = _sampling_trainer(tmp_path, model_path, pad_tokenizer, [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.evaluate()
        trainer.evaluate()
    messages = [str(w.message) for w in caught if "generate_during_eval" in str(w.message)]
    assert len(messages) == 1 and "no tracker that takes text" in messages[0]
    assert policy_calls == [] and reference_calls == []  # nothing generated

    logged = _fake_wandb(monkeypatch, started=False)  # wandb chosen but its run not started yet
    trainer.args.report_to = ["wandb"]
    with pytest.warns(UserWarning, match="wandb run has not started"):
        trainer.evaluate()
    assert logged == []

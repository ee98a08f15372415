"""rlft.utils.decode.packed_linears: generation with oneDNN-packed fp32 weights against torch's own linears
(``RLFT_DECODE_LINEARS=torch``, the path before it), on the tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from rlft.trainer._helpers import pad_with_mask
from rlft.utils.decode import (
    DECODE_LINEARS_ENV,
    DECODE_LOOP_ENV,
    lean_decode_plan,
    packed_linears,
    packing_available,
)
from rlft.utils.sampling_generate import generate

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear")

#: Ragged prompts: batched generation left-pads them.
PROMPTS = ([5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15], [16, 17, 18, 19, 20, 21, 22], [23, 24])
#: fp32 products summed in another order: outputs agree to a few ulps of their magnitude.
FORWARD_ATOL = 1e-5
#: Pure sampling from the model's distribution.
SAMPLE = {"do_sample": True, "top_k": 0, "top_p": 1.0}


def _batch(pad_id, side="left"):
    return pad_with_mask([torch.tensor(p) for p in PROMPTS], pad_id, side)


def _generate(model, monkeypatch, linears, seed, **kwargs):
    monkeypatch.setenv(DECODE_LINEARS_ENV, linears)
    torch.manual_seed(seed)
    return generate(model, **kwargs)


def _counting_packed_calls(fn):
    """(fn(), how many oneDNN packed linear calls it made)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


def _patched(model):
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_under_packing_matches_torch_and_modules_are_restored(model_path, arch):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    ids, mask = _batch(0)
    with torch.no_grad():
        for m in model.modules():  # random init leaves biases at zero: give them values that count
            if getattr(m, "bias", None) is not None and m.bias.dim() == 1:
                m.bias.normal_(0.0, 0.5)
        want = model(input_ids=ids, attention_mask=mask).logits
        with packed_linears(model, rows=ids.shape[0]) as n:
            patched = _patched(model)
            got, calls = _counting_packed_calls(lambda: model(input_ids=ids, attention_mask=mask).logits)
    linears = sum(type(m).__name__ in ("Linear", "Conv1D") for m in model.modules())
    assert n == len(patched) == linears > 0  # every linear layer, the (tied) LM head included
    assert calls == linears  # each linear layer ran the packed kernel...
    torch.testing.assert_close(got, want, atol=FORWARD_ATOL, rtol=0)  # ...and gave the same products
    assert _patched(model) == []


def test_grad_autocast_and_errors_take_the_modules_own_forward(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    ids, mask = _batch(0)
    want = model(input_ids=ids, attention_mask=mask).logits
    with packed_linears(model):
        got, calls = _counting_packed_calls(lambda: model(input_ids=ids, attention_mask=mask).logits)
        assert calls == 0 and torch.equal(got, want)  # gradients on: torch's kernels, bit for bit
        got.sum().backward()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(input_ids=ids, attention_mask=mask).logits.dtype == torch.bfloat16
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None
    with pytest.raises(RuntimeError, match="boom"), packed_linears(model):
        raise RuntimeError("boom")
    assert _patched(model) == []


def test_the_env_switch_turns_packing_off_and_rejects_unknown_values(model_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    monkeypatch.setenv(DECODE_LINEARS_ENV, "torch")
    with packed_linears(model) as n:
        assert n == 0 and _patched(model) == []
    monkeypatch.setenv(DECODE_LINEARS_ENV, "fast")
    with pytest.raises(ValueError, match="'packed'.*'torch'"), packed_linears(model):
        pass


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("stop", ["max_new_tokens", "eos_and_min_length"])
def test_generate_draws_the_same_tokens_as_torch_linears(model_path, monkeypatch, arch, stop):
    """Same seed, same tokens: left-padded ragged prompts, EOS / min_new_tokens / pad as transformers applies them."""
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    eos = model.generation_config.eos_token_id
    ids, mask = _batch(eos)
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 12, "pad_token_id": eos, **SAMPLE}
    if stop == "eos_and_min_length":
        # a strong EOS logit bias makes rows stop at different steps once min_new_tokens allows it
        with torch.no_grad():
            bias = model.get_output_embeddings()
            if getattr(bias, "bias", None) is None:
                model.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(bias.weight.shape[0]))
            model.get_output_embeddings().bias[eos] = 5.0
        gen.update(min_new_tokens=3)
    for seed in range(3):
        want = _generate(model, monkeypatch, "torch", seed, **gen)
        got = _generate(model, monkeypatch, "packed", seed, **gen)
        assert torch.equal(got, want)
    if stop == "eos_and_min_length":
        new = want[:, ids.shape[1]:]
        ended = (new == eos).any(1)
        assert ended.any() and (new[:, :3] != eos).all()  # some rows stopped, none before min_new_tokens


def test_lora_policy_draws_the_same_tokens(model_path, monkeypatch):
    import peft

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                                      target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                      task_type="CAUSAL_LM")).eval()
    eos = base.generation_config.eos_token_id
    ids, mask = _batch(eos)
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 10, "pad_token_id": eos, **SAMPLE}
    with torch.no_grad(), packed_linears(model) as n:
        assert n > 0  # the LoRA base layers and the adapter matrices are packed too
    for seed in range(2):
        assert torch.equal(_generate(model, monkeypatch, "packed", seed, **gen), _generate(model, monkeypatch, "torch", seed, **gen))
    # the adapter is on while generating: with it disabled the tokens differ
    with model.disable_adapter():
        plain = _generate(model, monkeypatch, "packed", 0, **gen)
    assert not torch.equal(plain, _generate(model, monkeypatch, "packed", 0, **gen))


def test_encoder_decoder_draws_the_same_tokens(model_path, monkeypatch):
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path("t5")).eval()
    pad = model.generation_config.pad_token_id
    ids, mask = _batch(pad, side="right")
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 8, **SAMPLE}
    for seed in range(2):
        assert torch.equal(_generate(model, monkeypatch, "packed", seed, **gen), _generate(model, monkeypatch, "torch", seed, **gen))


def test_sampling_distribution_is_unchanged(model_path, monkeypatch):
    """The first token's empirical distribution over many draws matches the model's softmax (chi-square-like bound)."""
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    eos = model.generation_config.eos_token_id
    n = 4000
    ids = torch.tensor([PROMPTS[0]]).repeat(n, 1)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids[:1]).logits[0, -1], -1)  # (V,)
    drawn = _generate(model, monkeypatch, "packed", 0, input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                      top_k=0, top_p=1.0, max_new_tokens=1, pad_token_id=eos)[:, -1]
    freq = torch.bincount(drawn, minlength=probs.shape[0]).double() / n
    top = probs.argsort(descending=True)[:20]  # the tokens with enough mass to test
    sd = (probs[top].double() * (1 - probs[top].double()) / n).sqrt()
    assert ((freq[top] - probs[top].double()).abs() <= 5 * sd + 1e-3).all()


# ---------------------------------------------------------------- lean_decode against transformers' loop
def _run(model, monkeypatch, loop, seed, **kwargs):
    monkeypatch.setenv(DECODE_LOOP_ENV, loop)
    torch.manual_seed(seed)
    return generate(model, **kwargs)


def _same_as_transformers(model, monkeypatch, seeds=range(3), **kwargs):
    """Asserts that the lean loop takes the call and returns transformers' tokens for each seed; returns the last."""
    monkeypatch.setenv(DECODE_LOOP_ENV, "lean")
    assert lean_decode_plan(model, kwargs) is not None
    for seed in seeds:
        want = _run(model, monkeypatch, "transformers", seed, **kwargs)
        got = _run(model, monkeypatch, "lean", seed, **kwargs)
        assert got.shape == want.shape and torch.equal(got, want), (got, want)
    return got


def _eos_bias(model, eos, value=5.0):
    """A large EOS logit bias, so that rows stop at different steps."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        if getattr(head, "bias", None) is None:
            head.bias = torch.nn.Parameter(torch.zeros(head.weight.shape[0]))
        head.bias[eos] = value


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox", "opt"])
def test_lean_loop_draws_transformers_tokens(model_path, monkeypatch, arch):
    model = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    eos = model.generation_config.eos_token_id
    ids, mask = _batch(eos)
    _same_as_transformers(model, monkeypatch, input_ids=ids, attention_mask=mask, max_new_tokens=9, pad_token_id=eos, **SAMPLE)


@pytest.mark.parametrize("case", ["eos_min_new_tokens", "min_length", "warpers", "no_padding", "no_pad_id", "generation_config",
                                  "two_eos"])
def test_lean_loop_stopping_rules_and_settings_match_transformers(model_path, monkeypatch, case):
    from transformers import GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    eos = model.generation_config.eos_token_id
    ids, mask = _batch(eos)
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 12, "pad_token_id": eos, **SAMPLE}
    if case in ("eos_min_new_tokens", "min_length", "no_pad_id", "generation_config"):
        _eos_bias(model, eos)
    if case == "two_eos":  # a second stop token, likelier than the first: rows end on either
        _eos_bias(model, 7, value=4.0)
        gen.update(eos_token_id=[eos, 7], min_new_tokens=2)
    if case == "eos_min_new_tokens":
        gen["min_new_tokens"] = 3
    elif case == "min_length":
        gen["min_length"] = ids.shape[1] + 4  # counts the padded prompt columns, as transformers does
    elif case == "warpers":
        gen.update(temperature=0.7, top_k=40, top_p=0.9)
    elif case == "no_padding":
        ids = torch.tensor([PROMPTS[0]] * 3)
        gen.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    elif case == "no_pad_id":
        model.generation_config.pad_token_id = None
        del gen["pad_token_id"]  # transformers pads finished rows with the EOS then
        gen["min_new_tokens"] = 2
    elif case == "generation_config":
        gen = {"input_ids": ids, "attention_mask": mask,
               "generation_config": GenerationConfig(max_new_tokens=10, min_new_tokens=2, eos_token_id=eos, pad_token_id=eos, **SAMPLE)}
    got = _same_as_transformers(model, monkeypatch, **gen)
    new = got[:, ids.shape[1]:]
    if case == "two_eos":
        ended = (new == 7).any(1)
        assert ended.any() and (new[:, :2] != 7).all()
        first = (new == 7).int().argmax(1)
        for row, f in zip(new[ended], first[ended]):
            assert (row[f + 1:] == eos).all()  # padded with pad_token_id after a row's first stop token
    if case in ("eos_min_new_tokens", "min_length", "no_pad_id", "generation_config"):
        finished = (new == eos).any(1)
        assert finished.any() and (new[:, :2] != eos).all()  # some rows ended, none before the minimum
        first = (new == eos).int().argmax(1)
        for row, f in zip(new[finished], first[finished]):
            assert (row[f:] == eos).all()  # after a row's EOS: padding (the EOS id here)


def test_lean_loop_stops_when_every_row_has_finished(model_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    eos = model.generation_config.eos_token_id
    _eos_bias(model, eos, value=50.0)  # EOS almost surely at the first allowed step
    ids, mask = _batch(eos)
    got = _same_as_transformers(model, monkeypatch, input_ids=ids, attention_mask=mask, max_new_tokens=12,
                                min_new_tokens=2, pad_token_id=eos, **SAMPLE)
    assert got.shape[1] == ids.shape[1] + 3  # two forced tokens, then EOS everywhere, then stop


def test_lean_loop_for_lora_and_value_head_policies(model_path, monkeypatch):
    import peft

    from rlft import AutoModelForCausalLMWithValueHead

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                                     target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM"))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lora).eval()
    eos = base.generation_config.eos_token_id
    ids, mask = _batch(eos)
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 8, "pad_token_id": eos, **SAMPLE}
    with_adapter = _same_as_transformers(model, monkeypatch, seeds=[0], **gen)
    with lora.disable_adapter():
        without = _same_as_transformers(model, monkeypatch, seeds=[0], **gen)
    assert not torch.equal(with_adapter, without)  # the lean loop ran the adapter


@pytest.mark.parametrize("extra", [
    {"num_return_sequences": 2}, {"repetition_penalty": 1.2}, {"no_repeat_ngram_size": 2}, {"max_new_tokens": None},
    {"stop_strings": ["x"]}, {"output_scores": True, "return_dict_in_generate": True}, {"use_cache": False},
    {"bad_words_ids": [[7]]}, {"cache_implementation": "static"}, {"position_ids": None},
])
def test_settings_the_lean_loop_does_not_implement_go_to_transformers(model_path, monkeypatch, extra):
    from transformers import LogitsProcessorList

    monkeypatch.setenv(DECODE_LOOP_ENV, "lean")
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    ids, mask = _batch(0)
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 4, **SAMPLE}
    assert lean_decode_plan(model, gen) is not None
    assert lean_decode_plan(model, {**gen, **extra}) is None
    assert lean_decode_plan(model, {**gen, "logits_processor": LogitsProcessorList()}) is None
    assert lean_decode_plan(model, {"input_ids": ids, **SAMPLE, "max_new_tokens": 4}) is None  # no attention mask
    counted = []
    model.generate = lambda **kw: counted.append(kw) or type(model).generate(model, **kw)  # a wrapped generate runs
    assert lean_decode_plan(model, gen) is None
    generate(model, **gen)
    assert len(counted) == 1
    del model.generate
    model.gradient_checkpointing_enable()
    assert lean_decode_plan(model.train(), gen) is None  # its forward may drop the cache in training mode
    assert lean_decode_plan(model.eval(), gen) is not None
    t5 = AutoModelForSeq2SeqLM.from_pretrained(model_path("t5"))
    assert lean_decode_plan(t5, gen) is None
    monkeypatch.setenv(DECODE_LOOP_ENV, "transformers")
    assert lean_decode_plan(model, gen) is None
    monkeypatch.setenv(DECODE_LOOP_ENV, "fast")
    with pytest.raises(ValueError, match="'lean'.*'transformers'"):
        lean_decode_plan(model, gen)

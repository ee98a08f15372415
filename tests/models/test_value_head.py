import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from rlft import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from rlft.models.modeling_base import VALUE_HEAD_FILE
from rlft.testing.tiny import CAUSAL_ARCHS, SEQ2SEQ_ARCHS

IDS = torch.tensor([[5, 17, 99, 300, 12], [7, 8, 9, 10, 11]])


def _randomise_head(model):
    with torch.no_grad():
        model.v_head.summary.weight.normal_()
        model.v_head.summary.bias.fill_(0.37)


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_causal_forward_matches_underlying_model(model_path, arch):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path(arch)).eval()
    plain = AutoModelForCausalLM.from_pretrained(model_path(arch)).eval()
    logits, loss, value = model(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    assert loss is None
    assert value.shape == IDS.shape and value.dtype == torch.float32
    torch.testing.assert_close(logits, plain(input_ids=IDS).logits)
    # the value is the head applied to the final hidden state
    hidden = plain(input_ids=IDS, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(value, model.v_head.summary(hidden).squeeze(-1))


def test_return_past_key_values_and_labels(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    out = model(input_ids=IDS, return_past_key_values=True, labels=IDS)
    assert len(out) == 4 and out[3] is not None
    assert out[1] is not None and out[1].ndim == 0


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHS)
def test_seq2seq_forward(model_path, arch):
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(model_path(arch)).eval()
    plain = AutoModelForSeq2SeqLM.from_pretrained(model_path(arch)).eval()
    dec = IDS[:, :3]
    logits, _, value = model(input_ids=IDS, decoder_input_ids=dec)
    assert value.shape == dec.shape
    torch.testing.assert_close(logits, plain(input_ids=IDS, decoder_input_ids=dec).logits)
    gen = model.generate(input_ids=IDS, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(gen, plain.generate(input_ids=IDS, max_new_tokens=4, do_sample=False))


def test_generate_passes_through(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("llama"))
    plain = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    a = model.generate(input_ids=IDS[:1], max_new_tokens=5, do_sample=False)
    b = plain.generate(input_ids=IDS[:1], max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(a, b)


def test_supported_args_and_init_strategies(model_path):
    assert AutoModelForCausalLMWithValueHead.supported_args == (
        "summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
    torch.manual_seed(0)
    m = AutoModelForCausalLMWithValueHead.from_pretrained(
        model_path("gpt2"), v_head_init_strategy="normal", v_head_initializer_range=0.01, summary_dropout_prob=0.5)
    assert m.v_head.summary.bias.abs().sum() == 0
    assert 0.003 < m.v_head.summary.weight.std().item() < 0.03
    assert isinstance(m.v_head.dropout, torch.nn.Dropout) and m.v_head.dropout.p == 0.5
    with pytest.raises(ValueError, match="v_head_init_strategy"):
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), v_head_init_strategy="xavier")


def test_unknown_value_head_kwarg_rejected(model_path):
    with pytest.raises(TypeError, match="unknown value-head argument 'v_head_init_stratgy'"):
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), v_head_init_stratgy="normal")
    plain = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with pytest.raises(TypeError, match="unknown argument"):
        AutoModelForCausalLMWithValueHead(plain, dropout=0.1)


def test_model_instance_and_kwargs_split(model_path):
    plain = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    wrapped = AutoModelForCausalLMWithValueHead.from_pretrained(plain)
    assert wrapped.pretrained_model is plain
    # transformers kwargs reach transformers, value-head kwargs the head
    m = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), dtype=torch.bfloat16, summary_dropout_prob=0.1)
    assert next(m.pretrained_model.parameters()).dtype == torch.bfloat16
    assert m.v_head.dropout.p == 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_head_dtype_consistent(model_path, dtype):
    m = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), dtype=dtype)
    _, _, value = m(input_ids=IDS)
    assert value.dtype == torch.float32
    m.to(torch.bfloat16)
    _, _, value = m(input_ids=IDS)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_save_load_round_trip(model_path, tmp_path, arch):
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead
    model = cls.from_pretrained(model_path(arch))
    _randomise_head(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / VALUE_HEAD_FILE).exists()
    loaded = cls.from_pretrained(str(tmp_path))
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # plain transformers loads the language model without complaint about extra keys
    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    plain = auto.from_pretrained(str(tmp_path))
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, a[key], rtol=0, atol=0)


def test_sharded_checkpoint_round_trip(model_path, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    _randomise_head(model)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    torch.testing.assert_close(loaded.v_head.summary.weight, model.v_head.summary.weight, rtol=0, atol=0)


def test_loads_trl_style_checkpoint_with_head_inside_shards(model_path, tmp_path):
    """TRL 0.7 stored v_head.* inside the model's own (possibly sharded) weight files."""
    from safetensors.torch import load_file, save_file

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    _randomise_head(model)
    model.pretrained_model.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    last_shard = sorted(set(index["weight_map"].values()))[-1]
    tensors = load_file(str(tmp_path / last_shard))
    for k, v in model.v_head.state_dict().items():
        tensors[f"v_head.{k}"] = v.clone()
        index["weight_map"][f"v_head.{k}"] = last_shard
    save_file(tensors, str(tmp_path / last_shard), metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    torch.testing.assert_close(loaded.v_head.summary.weight, model.v_head.summary.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.v_head.summary.bias, model.v_head.summary.bias, rtol=0, atol=0)


def test_state_dict_includes_value_head(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    sd = model.state_dict()
    assert "v_head.summary.weight" in sd and "v_head.summary.bias" in sd
    assert any(k.startswith("transformer.") for k in sd)


def test_post_init_loads_head_and_rejects_bad_shapes(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    w = torch.randn_like(model.v_head.summary.weight)
    model.post_init({"v_head.summary.weight": w, "v_head.summary.bias": torch.tensor([2.0])})
    torch.testing.assert_close(model.v_head.summary.weight, w)
    with pytest.raises(ValueError, match="shape"):
        model.post_init({"v_head.summary.weight": torch.randn(1, 3), "v_head.summary.bias": torch.tensor([2.0])})
    with pytest.raises(ValueError, match="incomplete"):
        model.post_init({"v_head.summary.weight": w})


def test_corrupt_value_head_file_is_a_clear_error(model_path, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    model.save_pretrained(tmp_path)
    (tmp_path / VALUE_HEAD_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="damaged"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))


def test_push_to_hub_offline_is_clear(model_path, monkeypatch):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="save_pretrained"):
        model.push_to_hub("someone/model")


# ----------------------------------------------------------------------------- peft
peft = pytest.importorskip("peft")


def _lora():
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM")


def test_peft_config_wraps_and_round_trips(model_path, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config=_lora())
    assert model.is_peft_model
    _randomise_head(model)
    with torch.no_grad():  # make the adapter non-trivial
        for n, p in model.pretrained_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / VALUE_HEAD_FILE).exists()
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    assert loaded.is_peft_model
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    la, _, va = model(input_ids=IDS)
    lb, _, vb = loaded(input_ids=IDS)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(va, vb)


def test_peft_loaded_is_trainable_flag(model_path, tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config=_lora())
    model.save_pretrained(tmp_path)
    frozen = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    assert not any(p.requires_grad for n, p in frozen.pretrained_model.named_parameters() if "lora" in n)
    trainable = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path), is_trainable=True)
    assert any(p.requires_grad for n, p in trainable.pretrained_model.named_parameters() if "lora" in n)


def test_reward_adapter_switching(model_path, tmp_path):
    """One base model serves as policy (default adapter) and reward model (reward adapter + score head)."""
    from transformers import AutoModelForSequenceClassification

    base = model_path("gpt2")
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = 0
    rm = peft.get_peft_model(rm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="SEQ_CLS",
                                                 modules_to_save=["score"]))
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or "score" in n:
                p.normal_()
    rm.save_pretrained(tmp_path / "rm")
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(base, peft_config=_lora(), reward_adapter=str(tmp_path / "rm"))
    assert policy.supports_rm_adapter
    ids = torch.tensor([[5, 17, 99, 300]])
    scores = policy.compute_reward_score(input_ids=ids)
    expected = rm(input_ids=ids).logits  # (1, 1): the sequence-classification score of the last token
    torch.testing.assert_close(scores[0, -1], expected[0], atol=1e-5, rtol=1e-5)
    assert policy.pretrained_model.active_adapter == "default"

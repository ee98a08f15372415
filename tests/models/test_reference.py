import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, create_reference_model
from rlft.utils.memory import peak_rss_delta


@pytest.mark.parametrize("arch,pattern_prefix", [("gpt2", "transformer.h."), ("llama", "model.layers."),
                                                 ("gpt_neox", "gpt_neox.layers."), ("opt", "model.decoder.layers.")])
def test_shared_layers_are_the_same_objects(model_path, arch, pattern_prefix):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path(arch))
    ref = create_reference_model(model, num_shared_layers=1)
    assert not ref.training
    mp, rp = dict(model.named_parameters()), dict(ref.named_parameters())
    shared = [n for n in mp if mp[n] is rp[n]]
    assert shared, "nothing shared"
    assert any(n.startswith("pretrained_model." + pattern_prefix + "0.") for n in shared)
    assert not any(("." + pattern_prefix + "1.") in "." + n for n in shared)
    for n in shared:
        assert not mp[n].requires_grad
    # layer 1 and the value head stay trainable in the policy, and are copies in the reference
    tail = [n for n in mp if pattern_prefix + "1." in n]
    assert tail and all(mp[n].requires_grad and mp[n] is not rp[n] for n in tail)
    assert all(not p.requires_grad for p in ref.parameters())


def test_full_copy_is_frozen_and_gets_no_gradients(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    ref = create_reference_model(model)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p is q for p, q in zip(model.parameters(), ref.parameters()))
    ids = torch.tensor([[1, 2, 3, 4]])
    logits, _, value = model(input_ids=ids)
    rlogits, _, rvalue = ref(input_ids=ids)
    torch.testing.assert_close(logits, rlogits)
    (logits.sum() + value.sum()).backward()
    assert all(p.grad is None for p in ref.parameters())
    assert not rlogits.requires_grad


def test_explicit_pattern_and_bad_values(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    ref = create_reference_model(model, num_shared_layers=1, pattern="transformer.h.{layer}")
    assert ref.pretrained_model.transformer.h[0].attn.c_attn.weight is model.pretrained_model.transformer.h[0].attn.c_attn.weight
    with pytest.raises(ValueError, match="at most 1"):
        create_reference_model(model, num_shared_layers=2)
    with pytest.raises(ValueError, match="non-negative"):
        create_reference_model(model, num_shared_layers=-1)
    with pytest.raises(ValueError, match="could not find"):
        create_reference_model(model, num_shared_layers=1, pattern="nothing.here.{layer}")
    with pytest.raises(ValueError, match="{layer}"):
        create_reference_model(model, num_shared_layers=1, pattern="transformer.h")


# Memory: a GPT-2 of 12 x 256-wide blocks (~10M parameters, ~40 MB); sharing 11 blocks saves most of the copy.
def _big_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=256, n_layer=12, n_head=4, vocab_size=1024, n_positions=128, bos_token_id=0, eos_token_id=0)
    return AutoModelForCausalLMWithValueHead(GPT2LMHeadModel(cfg))


def _copy_full(model):
    create_reference_model(model)


def _copy_shared(model):
    create_reference_model(model, num_shared_layers=11)


def test_shared_reference_saves_memory():
    full = peak_rss_delta(_copy_full, _big_model)
    shared = peak_rss_delta(_copy_shared, _big_model)
    n_bytes = sum(p.numel() for p in _big_model().parameters()) * 4
    assert full >= 0.8 * n_bytes
    assert shared <= 0.3 * full, (shared, full)

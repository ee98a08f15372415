"""The one copy of each piece of trainer plumbing: unwrapping, padding, the pad id."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft import AutoModelForCausalLMWithValueHead
from rlft.trainer._helpers import pad_token_id_or_eos, pad_with_mask
from rlft.trainer._model_helpers import unwrap_base_model, unwrap_parallel


def test_pad_with_mask_against_a_loop():
    seqs = [torch.tensor([3, 4, 5]), torch.tensor([6]), torch.tensor([7, 8])]
    for side in ("left", "right"):
        ids, mask = pad_with_mask(seqs, 0, side)
        for i, s in enumerate(seqs):
            gap = 3 - len(s)
            expect_ids = [0] * gap + s.tolist() if side == "left" else s.tolist() + [0] * gap
            expect_mask = [0] * gap + [1] * len(s) if side == "left" else [1] * len(s) + [0] * gap
            assert ids[i].tolist() == expect_ids and mask[i].tolist() == expect_mask


def test_pad_token_id_or_eos():
    class Tok:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert pad_token_id_or_eos(Tok(3, 5)) == 3
    assert pad_token_id_or_eos(Tok(None, 5)) == 5
    assert pad_token_id_or_eos(Tok(0, 5)) == 0  # id 0 is a real pad id, not "missing"
    assert pad_token_id_or_eos(Tok(None, None)) is None and pad_token_id_or_eos(Tok(None, None), default=0) == 0


def test_unwrap_base_model_through_every_wrapper(model_path):
    plain = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    assert unwrap_base_model(plain) is plain
    wrapped = AutoModelForCausalLMWithValueHead(plain)
    assert unwrap_base_model(wrapped) is plain
    compiled = torch.compile(wrapped)  # an OptimizedModule around the wrapper, as accelerate may hold it
    assert unwrap_base_model(compiled) is plain

    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], task_type="CAUSAL_LM")
    adapted = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config=lora)
    base = unwrap_base_model(adapted)
    assert type(base).__name__ == "GPT2LMHeadModel" and base is adapted.pretrained_model.get_base_model()


def test_unwrap_parallel_as_accelerate_without_its_lookups(model_path, monkeypatch):
    import accelerate.utils

    plain = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    parallel = torch.nn.DataParallel(plain)  # a `.module` wrapper, as DDP / DeepSpeed / FSDP
    compiled = torch.compile(plain)
    for model in (plain, parallel, compiled):
        assert unwrap_parallel(model) is accelerate.utils.extract_model_from_parallel(model)
    assert unwrap_parallel(parallel) is plain and unwrap_parallel(compiled) is compiled
    calls = []
    real = accelerate.utils.extract_model_from_parallel
    monkeypatch.setattr(accelerate.utils, "extract_model_from_parallel", lambda m: calls.append(m) or real(m))
    assert unwrap_parallel(plain) is plain and unwrap_base_model(plain) is plain.pretrained_model and calls == []
    assert unwrap_parallel(parallel) is plain and calls == [parallel]


def test_eos_token_ids_order_of_precedence(model_path, pad_tokenizer):
    """The call's eos_token_id, else the model's generation config (through a value-head wrapper), else the tokenizer's."""
    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.trainer._helpers import eos_token_ids

    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    assert eos_token_ids({"eos_token_id": [7, 9]}, model, pad_tokenizer) == {7, 9}
    model.pretrained_model.generation_config.eos_token_id = 11
    assert eos_token_ids({}, model, pad_tokenizer) == {11}
    model.pretrained_model.generation_config.eos_token_id = None
    assert eos_token_ids({}, model, pad_tokenizer) == {pad_tokenizer.eos_token_id}
    pad_tokenizer.eos_token = None
    assert eos_token_ids({}, model, pad_tokenizer) == set()

"""TRL 0.7.10 drop-in behaviour of the value-head wrappers (issue 18: items 2, 13, 16, 17, peft wrapping)."""

import shutil
import warnings

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from rlft import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead

IDS = torch.tensor([[5, 17, 99, 300, 12], [7, 8, 9, 10, 11]])


# ---------------------------------------------------------------- item 2: a model without an LM head
@pytest.mark.parametrize("arch, wrapper", [("gpt2", AutoModelForCausalLMWithValueHead), ("t5", AutoModelForSeq2SeqLMWithValueHead)])
def test_backbone_without_lm_head_is_rejected_at_construction(model_path, arch, wrapper):
    backbone = AutoModel.from_pretrained(model_path(arch))  # GPT2Model / T5Model: no lm_head
    assert backbone.get_output_embeddings() is None
    with pytest.raises(ValueError, match="language-model head.*AutoModel"):
        wrapper(backbone)
    with pytest.raises(ValueError, match="language-model head"):
        wrapper.from_pretrained(backbone)


# ---------------------------------------------------------------- item 13: the cache goes in as `cache`
def test_forward_passes_the_cache_under_its_transformers_5_name(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2")).eval()
    seen = []
    model.pretrained_model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    with torch.no_grad():
        _, _, _, cache = model(input_ids=IDS[:, :3], return_past_key_values=True, use_cache=True)
        assert cache is not None
        step_logits, _, step_value = model(input_ids=IDS[:, 3:], past_key_values=cache, use_cache=True)
        full_logits, _, full_value = model(input_ids=IDS)
    assert all("past_key_values" not in keys for keys in seen), seen
    assert "cache" in seen[1]
    # continuing from the cache gives the full forward's last positions
    torch.testing.assert_close(step_logits, full_logits[:, 3:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step_value, full_value[:, 3:], atol=1e-5, rtol=1e-4)


def test_cache_given_twice_is_an_error(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    _, _, _, cache = model(input_ids=IDS[:, :3], return_past_key_values=True, use_cache=True)
    with pytest.raises(ValueError, match="once"):
        model(input_ids=IDS[:, 3:], past_key_values=cache, cache=cache)


def test_respond_to_batch_reuses_the_cache_under_its_new_name(model_path):
    from rlft.core import respond_to_batch

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    torch.manual_seed(0)
    out = respond_to_batch(model, IDS[:, :3], txt_len=4, top_k=5)
    assert out.shape == (2, 4)
    assert all("past_key_values" not in kw for kw in seen)
    assert [kw["input_ids"].shape[1] for kw in seen] == [3, 1, 1, 1]  # one token per step after the first
    # the same tokens as rerunning the whole prefix each step (no cache)
    torch.manual_seed(0)
    no_cache = lambda input_ids, **kw: (model(input_ids=input_ids, use_cache=False).logits,)  # noqa: E731
    plain = respond_to_batch(no_cache, IDS[:, :3], txt_len=4, top_k=5)
    assert torch.equal(out, plain)


# ---------------------------------------------------------------- item 16: current_device
def test_current_device(model_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    assert model.current_device == next(model.pretrained_model.parameters()).device == torch.device("cpu")


# ---------------------------------------------------------------- item 17: which loading errors are "damaged"
@pytest.mark.parametrize(
    "kwargs, fix",
    [({"load_in_8bit": True}, "BitsAndBytesConfig"), ({"use_auth_token": "hf_x"}, "token=")],
)
def test_removed_loading_arguments_keep_their_type_and_name_the_fix(model_path, kwargs, fix):
    with pytest.raises(TypeError, match=fix) as info:
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), **kwargs)
    assert "damaged" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_map_error_propagates_unchanged(model_path):
    with pytest.raises(Exception) as info:
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), device_map="cuda")
    plain = None
    try:
        AutoModelForCausalLM.from_pretrained(model_path("gpt2"), device_map="cuda")
    except Exception as err:  # what transformers itself raises
        plain = err
    assert type(info.value) is type(plain) and str(info.value) == str(plain)
    assert "damaged" not in str(info.value)


def test_damaged_weight_file_is_still_named_damaged(model_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_path("gpt2"), folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="damaged") as info:
        AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    assert str(folder) in str(info.value)


# ---------------------------------------------------------------- peft wrapping: one behaviour everywhere
peft = pytest.importorskip("peft")


def _lora(r=4):
    return peft.LoraConfig(r=r, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM")


def test_peft_config_on_an_adapted_model_merges_the_old_adapter(model_path):
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(model_path("gpt2")), _lora())
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()
        expected = adapted(input_ids=IDS).logits
    with pytest.warns(UserWarning, match="merged into the base weights"):
        model = AutoModelForCausalLMWithValueHead.from_pretrained(adapted, peft_config=_lora(r=2))
    assert model.is_peft_model and list(model.pretrained_model.peft_config) == ["default"]
    assert model.pretrained_model.peft_config["default"].r == 2  # the new adapter, fresh (lora_B = 0)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS)[0], expected, atol=1e-5, rtol=1e-4)


def test_peft_config_must_be_a_peft_config(model_path):
    with pytest.raises(TypeError, match="PeftConfig"):
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config={"r": 4})


def test_no_warning_for_a_plain_model(model_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config=_lora())
    assert not [w for w in caught if "merged" in str(w.message)]

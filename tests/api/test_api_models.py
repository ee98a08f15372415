"""Seed 000 (models) and trl.core: every documented name imports, with its documented parameters and defaults."""

import inspect

import pytest


def params(fn):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()}


def test_top_level_and_alias_imports():
    import rlft
    from rlft import (AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PreTrainedModelWrapper,
                      create_reference_model, set_seed)
    from rlft.model import AutoModelForCausalLMWithValueHead as Alias
    from rlft.models import AutoModelForCausalLMWithValueHead as Same

    assert Alias is AutoModelForCausalLMWithValueHead is Same
    assert callable(set_seed) and callable(create_reference_model)
    assert issubclass(AutoModelForSeq2SeqLMWithValueHead, PreTrainedModelWrapper)
    with pytest.raises(AttributeError):
        rlft.NotAThing  # noqa: B018


def test_wrapper_signatures():
    from rlft import PreTrainedModelWrapper

    p = params(PreTrainedModelWrapper.__init__)
    assert p["pretrained_model"] is None and p["score_module"] is None
    assert p["supports_rm_adapter"] is False and p["rm_adapter_name"] is None
    assert list(params(PreTrainedModelWrapper.add_and_load_reward_modeling_adapter))[:4] == [
        "pretrained_model", "adapter_model_id", "adapter_name", "token"]
    assert params(PreTrainedModelWrapper.add_and_load_reward_modeling_adapter)["adapter_name"] == "reward_model_adapter"
    assert params(PreTrainedModelWrapper.compute_reward_score)["attention_mask"] is None
    for name in ("from_pretrained", "post_init", "push_to_hub", "save_pretrained", "state_dict"):
        assert callable(getattr(PreTrainedModelWrapper, name))


@pytest.mark.parametrize("cls_name", ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead"])
def test_value_head_signatures(cls_name):
    import rlft
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = getattr(rlft, cls_name)
    p = params(cls.forward)
    assert list(p)[1:5] == ["input_ids", "past_key_values", "attention_mask", "return_past_key_values"]
    assert p["input_ids"] is None and p["return_past_key_values"] is False
    assert cls.supported_args == ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
    parent = AutoModelForSeq2SeqLM if "Seq2Seq" in cls_name else AutoModelForCausalLM
    assert cls.transformers_parent_class is parent
    for name in ("generate", "_init_weights", "__init__"):
        assert callable(getattr(cls, name))


def test_create_reference_model_signature():
    from rlft import create_reference_model

    p = params(create_reference_model)
    assert list(p) == ["model", "num_shared_layers", "pattern"]
    assert p["num_shared_layers"] is None and p["pattern"] is None


def test_core_names():
    import rlft.core as core

    for name in ["set_seed", "LengthSampler", "logprobs_from_logits", "whiten", "masked_mean", "masked_var",
                 "masked_whiten", "clip_by_value", "entropy_from_logits", "average_torch_dicts", "stats_to_np",
                 "stack_dicts", "flatten_dict", "convert_to_scalar", "respond_to_batch", "PPODecorators",
                 "top_k_top_p_filtering", "add_suffix", "pad_to_size", "randn_tensor", "WANDB_PADDING"]:
        assert hasattr(core, name), name
    assert params(core.masked_var)["unbiased"] is True
    assert params(core.logprobs_from_logits)["gather"] is True
    assert params(core.respond_to_batch) == {"model": inspect._empty, "queries": inspect._empty, "txt_len": 20,
                                             "top_k": 0, "top_p": 1.0}
    assert params(core.whiten)["shift_mean"] is True
    assert core.PPODecorators.optimize_device_cache is False


def test_import_rlft_without_diffusers(monkeypatch):
    """import rlft must not need optional extras."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['diffusers'] = None; import rlft, rlft.core, rlft.models; "
            "print(rlft.AutoModelForCausalLMWithValueHead.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

"""TRL 0.7.10's public namespace: every name it exported resolves in the matching rlft module.

The lists below were read off the ``trl-0.7.10`` wheel (``pip download trl==0.7.10 --no-deps``):
the names its ``__init__.py`` files import, plus the module-level public definitions of
``trl.core``, ``trl.trainer.utils``, ``trl.models.utils``, ``trl.extras.dataset_formatting`` and
``trl.import_utils``. Names left out are listed with the reason next to each list. The second
half checks the behaviour of the helpers that were added to complete the namespace.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math

import pytest
import torch

# The DDPO names need the optional diffusers extra (TRL 0.7.10 imported them only when it was installed).
DDPO_NAMES = {
    "DDPOConfig", "DDPOTrainer", "DDPOPipelineOutput", "DDPOSchedulerOutput", "DDPOStableDiffusionPipeline",
    "DefaultDDPOStableDiffusionPipeline",
}
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None

TRL_0_7_10 = {
    "rlft": [
        "set_seed", "BestOfNSampler", "TextEnvironment", "TextHistory",
        "is_bitsandbytes_available", "is_diffusers_available", "is_npu_available", "is_peft_available",
        "is_wandb_available", "is_xpu_available",
        "AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "PreTrainedModelWrapper",
        "create_reference_model", "setup_chat_format",
        "DataCollatorForCompletionOnlyLM", "DPOTrainer", "IterativeSFTTrainer", "PPOConfig", "PPOTrainer",
        "RewardConfig", "RewardTrainer", "SFTTrainer",
        "DDPOPipelineOutput", "DDPOSchedulerOutput", "DDPOStableDiffusionPipeline",
        "DefaultDDPOStableDiffusionPipeline", "DDPOConfig", "DDPOTrainer",
    ],
    # trl.core also imported top_k_top_p_filtering from transformers 4 (gone in 5): rlft defines it.
    "rlft.core": [
        "WANDB_PADDING", "flatten_dict", "convert_to_scalar", "stack_dicts", "add_suffix", "pad_to_size",
        "logprobs_from_logits", "whiten", "masked_mean", "masked_var", "masked_whiten", "clip_by_value",
        "entropy_from_logits", "average_torch_dicts", "stats_to_np", "respond_to_batch", "set_seed", "LengthSampler",
        "PPODecorators", "randn_tensor", "top_k_top_p_filtering",
    ],
    # Left out everywhere: names a module only imported for its own use (e.g. is_diffusers_available
    # inside trl.models and trl.trainer, torch, dataclass); they were never part of the API.
    "rlft.models": [
        "PreTrainedModelWrapper", "create_reference_model", "AutoModelForCausalLMWithValueHead",
        "AutoModelForSeq2SeqLMWithValueHead", "setup_chat_format", "SUPPORTED_ARCHITECTURES",
        "DDPOPipelineOutput", "DDPOSchedulerOutput", "DDPOStableDiffusionPipeline",
        "DefaultDDPOStableDiffusionPipeline",
    ],
    "rlft.models.utils": ["ChatMlSpecialTokens", "FORMAT_MAPPING", "setup_chat_format"],
    "rlft.environment": ["TextEnvironment", "TextHistory"],
    "rlft.trainer": [
        "AdaptiveKLController", "FixedKLController", "ConstantLengthDataset", "DataCollatorForCompletionOnlyLM",
        "RunningMoments", "disable_dropout_in_model", "peft_module_casting_to_bf16", "BaseTrainer", "DDPOConfig",
        "DDPOTrainer", "DPOTrainer", "IterativeSFTTrainer", "PPOConfig", "PPOTrainer", "RewardConfig",
        "RewardTrainer", "compute_accuracy", "SFTTrainer",
    ],
    "rlft.trainer.utils": [
        "AdaptiveKLController", "FixedKLController", "DataCollatorForCompletionOnlyLM",
        "RewardDataCollatorWithPadding", "DPODataCollatorWithPadding", "ConstantLengthDataset", "RunningMoments",
        "get_global_statistics", "compute_accuracy", "pad_to_length", "disable_dropout_in_model", "exact_div",
        "PerPromptStatTracker", "neftune_post_forward_hook", "peft_module_casting_to_bf16",
        "trl_sanitze_kwargs_for_tagging",
    ],
    "rlft.extras": ["BestOfNSampler"],
    "rlft.extras.dataset_formatting": [
        "FORMAT_MAPPING", "conversations_formatting_function", "instructions_formatting_function",
        "get_formatting_func_from_dataset",
    ],
    "rlft.import_utils": [
        "is_peft_available", "is_unsloth_available", "is_accelerate_greater_20_0", "is_transformers_greater_than",
        "is_torch_greater_2_0", "is_diffusers_available", "is_bitsandbytes_available", "is_torchvision_available",
        "is_rich_available", "is_wandb_available", "is_xpu_available", "is_npu_available",
    ],
}
# Not pinned: trl.models.modeling_sd_base's module functions scheduler_step / pipeline_step (the
# DDIM step with log-prob lives in rlft.functional.ddpo and the pipeline's methods), and the
# module constants MODEL_CARD_TEMPLATE / JSONDict / logger of single trainer files.

CASES = [(module, name) for module, names in TRL_0_7_10.items() for name in names]


@pytest.mark.parametrize("module, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_trl_name_resolves(module, name):
    if name in DDPO_NAMES and not HAS_DIFFUSERS:
        pytest.skip("DDPO names need diffusers")
    mod = importlib.import_module(module)
    assert getattr(mod, name) is not None
    assert name in dir(mod), f"{name} missing from dir({module})"


def test_same_object_under_every_path():
    import rlft
    import rlft.extras.dataset_formatting as formatting
    import rlft.models
    import rlft.trainer
    import rlft.trainer.utils as utils

    assert rlft.setup_chat_format is rlft.models.setup_chat_format is rlft.models.utils.setup_chat_format
    assert rlft.DataCollatorForCompletionOnlyLM is rlft.trainer.DataCollatorForCompletionOnlyLM is utils.DataCollatorForCompletionOnlyLM
    assert rlft.trainer.compute_accuracy is utils.compute_accuracy
    assert rlft.extras.get_formatting_func_from_dataset is formatting.get_formatting_func_from_dataset
    assert rlft.trainer.peft_module_casting_to_bf16 is utils.peft_module_casting_to_bf16


@pytest.mark.parametrize("module", ["rlft", "rlft.models", "rlft.trainer", "rlft.trainer.utils", "rlft.extras"])
def test_every_lazy_export_resolves(module):
    """No entry of an export map points at a missing module or name (the pinned list checks the other direction)."""
    mod = importlib.import_module(module)
    names = set(getattr(mod, "_EXPORTS", {})) | set(getattr(mod, "_LAZY", {})) | set(getattr(mod, "__all__", []))
    for name in sorted(names):
        if name in DDPO_NAMES | {"DDPOTrainer"} and not HAS_DIFFUSERS:
            continue
        assert getattr(mod, name) is not None, name


@pytest.mark.parametrize("module", ["rlft", "rlft.models", "rlft.trainer"])
def test_star_import_gives_the_trl_names(module):
    if not HAS_DIFFUSERS:
        pytest.skip("with diffusers, star imports include the DDPO names")
    namespace: dict = {}
    exec(f"from {module} import *", namespace)
    assert set(TRL_0_7_10[module]) <= set(namespace), set(TRL_0_7_10[module]) - set(namespace)


def test_star_import_without_diffusers():
    """As in TRL 0.7.10, the DDPO classes are left out of ``import *`` when diffusers is missing, instead of failing."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "ns = {}\n"
        "for m in ('rlft', 'rlft.models', 'rlft.trainer', 'rlft.trainer.utils', 'rlft.extras'):\n"
        "    exec(f'from {m} import *', ns)\n"
        "assert 'DDPOConfig' in ns and 'SFTTrainer' in ns and 'setup_chat_format' in ns\n"
        "assert not {'DDPOTrainer', 'DefaultDDPOStableDiffusionPipeline'} & set(ns)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def _params(fn):
    return [(n, p.default) for n, p in inspect.signature(fn).parameters.items()]


def test_signatures_match_trl():
    from rlft.extras import dataset_formatting as f
    from rlft.import_utils import is_transformers_greater_than
    from rlft.models.utils import setup_chat_format
    from rlft.trainer import utils as u

    e = inspect.Parameter.empty
    assert _params(setup_chat_format) == [("model", e), ("tokenizer", e), ("format", "chatml"), ("resize_to_multiple_of", None)]
    assert _params(f.get_formatting_func_from_dataset) == [("dataset", e), ("tokenizer", e)]
    assert _params(f.conversations_formatting_function) == [("tokenizer", e), ("messages_field", e)]
    assert _params(f.instructions_formatting_function) == [("tokenizer", e)]
    assert _params(u.get_global_statistics) == [("accelerator", e), ("xs", e), ("mask", None), ("device", "cpu")]
    assert _params(u.neftune_post_forward_hook) == [("module", e), ("input", e), ("output", e)]
    assert _params(u.peft_module_casting_to_bf16) == [("model", e)]
    assert _params(u.trl_sanitze_kwargs_for_tagging) == [("model", e), ("tag_names", e), ("kwargs", None)]
    assert [n for n, _ in _params(u.exact_div)] == ["a", "b", "a_str", "b_str", "custom_error_message"]
    assert _params(u.pad_to_length) == [("tensor", e), ("length", e), ("pad_value", e), ("dim", -1)]
    assert _params(is_transformers_greater_than) == [("version", e)]


# ------------------------------------------------------------------ behaviour of the added helpers


def test_availability_helpers_agree_with_the_import_system():
    import rlft.import_utils as iu

    for fn, module in [(iu.is_peft_available, "peft"), (iu.is_diffusers_available, "diffusers"),
                       (iu.is_torchvision_available, "torchvision"), (iu.is_wandb_available, "wandb"),
                       (iu.is_bitsandbytes_available, "bitsandbytes"), (iu.is_unsloth_available, "unsloth"),
                       (iu.is_rich_available, "rich")]:
        assert fn() is (importlib.util.find_spec(module) is not None), module
    from importlib.metadata import version

    from packaging.version import Version

    assert iu.is_accelerate_greater_20_0() is (Version(version("accelerate")) >= Version("0.20.0"))
    assert iu.is_torch_greater_2_0() is True
    assert iu.is_transformers_greater_than("4.0.0") is True and iu.is_transformers_greater_than("99.0") is False
    assert iu.is_xpu_available() is False or torch.xpu.is_available()


def test_get_global_statistics_single_process_matches_torch():
    from accelerate import Accelerator

    from rlft.trainer.utils import get_global_statistics

    xs = torch.tensor([[1.0, 2.0, 100.0], [4.0, 5.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    mean, var, count = get_global_statistics(Accelerator(cpu=True), xs, mask)
    # kept values 1, 2, 4, 5: mean 3, biased variance (4 + 1 + 1 + 4) / 4 = 2.5
    assert mean.item() == pytest.approx(3.0) and var.item() == pytest.approx(2.5) and count.item() == 4
    mean, var, count = get_global_statistics(Accelerator(cpu=True), xs)
    assert mean.item() == pytest.approx(xs.mean().item()) and var.item() == pytest.approx(xs.var(unbiased=False).item())
    assert count.item() == 6


def test_neftune_hook_noise_bound_and_eval_identity():
    from rlft.trainer.utils import neftune_post_forward_hook

    emb = torch.nn.Embedding(10, 8)
    emb.neftune_noise_alpha = 4.0
    emb.register_forward_hook(neftune_post_forward_hook)
    ids = torch.randint(0, 10, (3, 5))
    clean = emb.weight[ids].detach()
    noise = emb(ids).detach() - clean  # training mode by default
    bound = 4.0 / math.sqrt(5 * 8)  # alpha / sqrt(L d)
    assert noise.abs().max() <= bound + 1e-6 and noise.abs().max() > bound / 2
    emb.eval()
    assert torch.equal(emb(ids), clean)


def test_trl_sanitze_kwargs_for_tagging():
    from rlft.trainer.utils import trl_sanitze_kwargs_for_tagging

    assert trl_sanitze_kwargs_for_tagging(None, ["trl", "sft"]) is None
    assert trl_sanitze_kwargs_for_tagging(None, ["trl", "sft"], {}) == {"tags": ["trl", "sft"]}
    assert trl_sanitze_kwargs_for_tagging(None, ["trl"], {"tags": "mine"})["tags"] == ["mine", "trl"]
    assert trl_sanitze_kwargs_for_tagging(None, ["trl"], {"tags": ["a", "trl"], "x": 1}) == {"tags": ["a", "trl"], "x": 1}


def test_peft_module_casting_to_bf16(model_path):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlft.trainer.utils import peft_module_casting_to_bf16

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path("llama")),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_module_casting_to_bf16(model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.float32 for n, d in dtypes.items() if "norm" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "embed_tokens" in n)
    assert any(d == torch.float32 for n, d in dtypes.items() if "mlp" in n)  # other base layers untouched


def test_exact_div():
    from rlft.trainer.utils import exact_div

    assert exact_div(12, 4) == 3
    with pytest.raises(ValueError, match="batch_size=10 is not a multiple of mini_batch_size=4"):
        exact_div(10, 4, "batch_size", "mini_batch_size")
    with pytest.raises(ValueError, match="^PPO: a=3"):
        exact_div(3, 0, custom_error_message="PPO")

"""PPOConfig.mixed_precision: bf16 autocast in PPOTrainer (docs/mixed_precision.md).

What must hold: the forwards run under autocast (half-precision logits), while the log-probs, values,
KL and losses are fp32 computed from those outputs, and the weights and the optimizer state stay fp32;
"no" changes nothing against the default; settings that cannot work fail with a message naming the fix.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.core import set_seed
from rlft.trainer.ppo_config import BF16_RATIO_ATOL

from ._low_ids import learn_low_ids

QUERIES = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12, 13]), torch.tensor([14])]
GEN = {"do_sample": True, "top_k": 0, "top_p": 1.0, "max_new_tokens": 6, "min_new_tokens": 6}


def _trainer(model_path, tokenizer, arch="gpt2", **config):
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path(arch))
    settings = {"batch_size": 4, "mini_batch_size": 2, "seed": 0} | config
    return PPOTrainer(PPOConfig(**settings), model, None, tokenizer)


def _rollout(trainer, seed=0):
    torch.manual_seed(seed)
    responses = trainer.generate(QUERIES, return_prompt=False, eos_token_id=None, **GEN)
    scores = [torch.tensor(float(i)) for i in range(len(responses))]
    return responses, scores


def _autocast_seen(trainer) -> list:
    """Record, for every forward of the policy's language model, the autocast dtype in force (or None)."""
    seen = []
    lm = trainer.accelerator.unwrap_model(trainer.model).pretrained_model
    lm.register_forward_pre_hook(
        lambda *_: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
    )
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_forwards_autocast_and_the_math_is_fp32_from_their_outputs(model_path, pad_tokenizer, arch):
    trainer = _trainer(model_path, pad_tokenizer, arch, mixed_precision="bf16")
    assert trainer.mixed_precision == "bf16"
    responses, scores = _rollout(trainer)
    batch = trainer._pad_batch(QUERIES[:2], responses[:2])
    with torch.no_grad():
        logits, values = trainer._forward(trainer.model, batch)
        ref_logits, _ = trainer._forward(trainer.ref_model, batch, return_values=False)
        logprobs, _, vals, _ = trainer.batched_forward_pass(trainer.model, QUERIES[:2], responses[:2])
    assert logits.dtype == torch.bfloat16 and ref_logits.dtype == torch.bfloat16  # the forwards ran under autocast
    assert values.dtype == torch.float32 and vals.dtype == torch.float32
    assert logprobs.dtype == torch.float32
    # independent: fp32 log-softmax of the bf16 logits (the autocast output), gathered at the actions
    expected = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch.actions[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs * batch.mask, expected * batch.mask, rtol=0, atol=1e-6)

    seen = _autocast_seen(trainer)
    stats = trainer.step(QUERIES, responses, scores)
    assert seen and all(d == torch.bfloat16 for d in seen)  # rollout and minibatch forwards
    for key in ("ppo/loss/total", "ppo/loss/policy", "ppo/loss/value", "objective/kl", "ppo/policy/entropy"):
        assert math.isfinite(stats[key]), key
    assert stats["objective/logprobs"].dtype == np.float32 and stats["ppo/policy/advantages"].dtype == np.float32
    # the weights and Adam's moments stay fp32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    moments = [t for state in trainer.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)


def test_bf16_generation_runs_under_autocast(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, mixed_precision="bf16")
    seen = _autocast_seen(trainer)
    _rollout(trainer)
    assert len(seen) == GEN["max_new_tokens"] and set(seen) == {torch.bfloat16}  # prefill + one call per new token


def test_no_is_bit_identical_to_the_default(model_path, pad_tokenizer):
    runs = {}
    for setting in (None, "no"):
        trainer = _trainer(model_path, pad_tokenizer, mixed_precision=setting)
        assert trainer.mixed_precision == "no"
        seen = _autocast_seen(trainer)
        responses, scores = _rollout(trainer)
        stats = trainer.step(QUERIES, responses, scores)
        assert seen and set(seen) == {None}  # no autocast anywhere
        weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        runs[setting] = (responses, stats, weights)
    (r0, s0, w0), (r1, s1, w1) = runs[None], runs["no"]
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))
    for key, value in s0.items():
        if not key.startswith("time/"):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(s1[key]), err_msg=key)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize("rollout_logprobs", ["recompute", "generation"])
def test_bf16_first_epoch_ratio_is_one_within_the_stated_tolerance(model_path, pad_tokenizer, rollout_logprobs):
    """With learning_rate 0 every ratio is exp(new - old) of the same weights: the old log-probs from the
    rollout forward (eval, no grad, padded per chunk) or recorded during generation (one token at a time,
    with the KV cache), the new ones from the update forwards."""
    results = {}
    for setting in ("no", "bf16"):
        trainer = _trainer(model_path, pad_tokenizer, mixed_precision=setting, learning_rate=0.0, ppo_epochs=2,
                           rollout_logprobs=rollout_logprobs)
        responses, scores = _rollout(trainer)
        stats = trainer.step(QUERIES, responses, scores)
        ratio = stats["ppo/policy/ratio"]
        results[setting] = float(np.max(np.abs(ratio[ratio != 0] - 1)))
    assert results["no"] < 1e-5, results
    assert results["bf16"] < BF16_RATIO_ATOL, results
    # On these tiny models both bf16 forwards round alike (measured 5e-7); BF16_RATIO_ATOL is the bound for
    # larger ones (4e-3 to 6e-3 on the 5M-parameter benchmark model). A rollout forward in fp32 against
    # bf16 updates gives more than 1e-3 even here.
    assert results["bf16"] < 1e-4, results


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
@pytest.mark.parametrize("where", ["field", "accelerator_kwargs"])
def test_fp16_on_cpu_is_refused_naming_bf16(model_path, pad_tokenizer, where):
    setting = {"mixed_precision": "fp16"} if where == "field" else {"accelerator_kwargs": {"mixed_precision": "fp16"}}
    with pytest.raises(ValueError, match=r"needs a CUDA device.*mixed_precision='bf16'"):
        _trainer(model_path, pad_tokenizer, **setting)


def test_trl_spelling_means_the_same_and_leaves_accelerate_state_alone(model_path, pad_tokenizer):
    trainer = _trainer(model_path, pad_tokenizer, accelerator_kwargs={"mixed_precision": "bf16"})
    assert trainer.mixed_precision == "bf16"
    assert trainer.accelerator.mixed_precision == "no"  # autocast is the trainer's, not accelerate's process-wide state
    assert _trainer(model_path, pad_tokenizer).mixed_precision == "no"  # a later fp32 trainer in the same process


def test_conflicting_or_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="disagree: set only one"):
        PPOConfig(mixed_precision="bf16", accelerator_kwargs={"mixed_precision": "no"})
    with pytest.raises(ValueError, match=r"mixed_precision must be one of"):
        PPOConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match=r"accelerator_kwargs\[\"mixed_precision\"\] must be one of"):
        PPOConfig(accelerator_kwargs={"mixed_precision": "half"})
    assert PPOConfig(mixed_precision="bf16", accelerator_kwargs={"mixed_precision": "bf16"}).requested_mixed_precision() == "bf16"


def test_accelerate_gets_the_precision_only_where_it_must_own_it():
    assert "mixed_precision" not in PPOConfig(mixed_precision="bf16").accelerator_settings()  # the trainer's autocast
    assert "mixed_precision" not in PPOConfig(accelerator_kwargs={"mixed_precision": "bf16"}).accelerator_settings()
    assert PPOConfig(mixed_precision="fp16").accelerator_settings()["mixed_precision"] == "fp16"  # its GradScaler
    sharded = PPOConfig(mixed_precision="bf16", accelerator_kwargs={"fsdp_plugin": object()}).accelerator_settings()
    assert sharded["mixed_precision"] == "bf16"  # FSDP's / DeepSpeed's own mixed precision
    assert "mixed_precision" not in PPOConfig(accelerator_kwargs={"deepspeed_plugin": object()}).accelerator_settings()


def test_a_request_against_accelerates_own_setting_is_refused():
    from rlft.trainer.ppo_trainer import _resolve_mixed_precision

    launched = SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"))  # accelerate launch --mixed_precision bf16
    with pytest.raises(ValueError, match="set only one of them"):
        _resolve_mixed_precision("no", launched)
    assert _resolve_mixed_precision(None, launched) == "bf16"  # unset: accelerate's setting
    assert _resolve_mixed_precision("bf16", launched) == "bf16"
    plain = SimpleNamespace(mixed_precision="no", device=torch.device("cpu"))
    assert _resolve_mixed_precision("bf16", plain) == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _resolve_mixed_precision(None, SimpleNamespace(mixed_precision="fp16", device=torch.device("cpu")))


@pytest.mark.slow
def test_bf16_learns_a_programmatic_reward_like_fp32(tmp_path, tokenizer):
    """The LoRA set-up of test_ppo_learning.py (learnable through the untied LM head), 30 steps each.
    fp32 rises by 0.31-0.82 there over seeds; bf16 must rise by the same bar and end near fp32."""
    peft = pytest.importorskip("peft")
    from rlft.testing.tiny import build_model

    tokenizer.pad_token = tokenizer.eos_token
    build_model("gpt2", tokenizer, tmp_path / "untied", seed=0, tie_word_embeddings=False)
    gains = {}
    for setting in ("no", "bf16"):
        set_seed(0)
        lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc", "lm_head"])
        model = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "untied", peft_config=lora)
        config = PPOConfig(batch_size=16, mini_batch_size=8, learning_rate=1e-2, ppo_epochs=2, init_kl_coef=0.01,
                           adap_kl_ctrl=False, seed=0, mixed_precision=setting)
        history = learn_low_ids(PPOTrainer(config, model, None, tokenizer), 30, seed=0)
        gains[setting] = np.mean(history[-5:]) - np.mean(history[:5])
    assert gains["no"] > 0.15 and gains["bf16"] > 0.15, gains
    assert abs(gains["bf16"] - gains["no"]) < 0.3, gains

"""The Trainer-based trainers (SFT, reward, DPO) and IterativeSFTTrainer run their fp32 CPU linear layers on
oneDNN during a training step (`rlft.trainer._step_kernels.step_kernels`): which layers are routed, forward
and backward (gradient checkpointing's recomputed forwards included), when nothing is, and that a step's loss
and gradients equal torch's kernels to fp32 rounding."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from accelerate.utils import DistributedType
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    TrainingArguments,
)
from transformers.pytorch_utils import Conv1D

from rlft import DPOTrainer, IterativeSFTTrainer
from rlft.trainer._step_kernels import is_compiled, is_encoder_decoder, step_kernels
from rlft.trainer.reward_config import RewardConfig
from rlft.trainer.reward_trainer import RewardTrainer
from rlft.trainer.sft_trainer import SFTTrainer
from rlft.utils import onednn_linear

pytestmark = pytest.mark.skipif(not onednn_linear.onednn_available(), reason="this torch build has no oneDNN linear op")

TEXTS = ["the value is returned to the caller when the function ends.", "return a new list.",
         "the file is closed after the last line was read.", "no.", "a string of words.", "create a new object."]
GOOD = ["the value is returned to the caller.", "return a new list of names.", "the file", "no"]
BAD = ["zq xv", "qq zz qq zz qq zz qq zz", "xx", "the path is not a string or a file."]
PROMPTS = ["What is the meaning of", "Return the value of the object in", "Create a", "The default is"]
CHOSEN = [" the argument given to the function", " the first item", " object from the list of all names", " to"]
REJECTED = [" nothing", " when a type is not a string or a path", " is not a string", " if the path exists on disk"]
TRAINERS = ["sft", "reward", "dpo", "iterative_sft"]


@pytest.fixture(autouse=True)
def route_every_layer(monkeypatch):
    """The tiny test models' layers are mostly below oneDNN's routing size (`onednn_linear.large_enough`); these
    tests are about which trainer routes what, so every layer is routed."""
    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_ELEMENTS", 0)
    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_SIDE", 0)


# ----------------------------------------------------------------- what oneDNN saw
class Seen:
    """The weights (by id) OneDNNLinear ran forward, forward inside a backward (recomputation), and backward."""

    def __init__(self):
        self.forward, self.recomputed, self.backward = set(), set(), set()

    def __bool__(self) -> bool:
        return bool(self.forward or self.backward)


@pytest.fixture
def seen(monkeypatch) -> Seen:
    record, real = Seen(), onednn_linear.OneDNNLinear

    class Counting(real):
        @staticmethod
        def forward(ctx, x, weight, bias, transposed):
            in_backward = torch._C._current_graph_task_id() != -1
            (record.recomputed if in_backward else record.forward).add(id(weight))
            ctx.weight_id = id(weight)  # not ctx.saved_tensors in backward: checkpointing unpacks them only once
            return real.forward(ctx, x, weight, bias, transposed)

        @staticmethod
        def backward(ctx, grad):
            record.backward.add(ctx.weight_id)
            return real.backward(ctx, grad)

    monkeypatch.setattr(onednn_linear, "OneDNNLinear", Counting)  # `_onednn_forward` looks the name up per call
    return record


def _linear_weights(model: torch.nn.Module, trainable_only: bool = False) -> set[int]:
    return {id(m.weight) for m in model.modules()
            if type(m) in (torch.nn.Linear, Conv1D) and (m.weight.requires_grad or not trainable_only)}


# ----------------------------------------------------------------- one small trainer of each kind
def _args(tmp_path, cls=TrainingArguments, **kw):
    base = {"output_dir": str(tmp_path / "out"), "report_to": [], "use_cpu": True, "max_steps": 1,
            "save_strategy": "no", "disable_tqdm": True, "seed": 0, "learning_rate": 1e-3}
    return cls(**(base | kw))


def _quiet(build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


def _sft(tmp_path, model_path, tok, **kw):
    model = AutoModelForCausalLM.from_pretrained(model_path(kw.pop("arch", "gpt2")))
    args = _args(tmp_path, per_device_train_batch_size=6, **kw.pop("args", {}))
    return _quiet(lambda: SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                                     processing_class=tok, dataset_text_field="text", max_seq_length=32, **kw))


def _reward(tmp_path, model_path, tok, **kw):
    torch.manual_seed(0)  # the score head is initialised at load: the same one for every trainer built here
    model = AutoModelForSequenceClassification.from_pretrained(model_path("gpt2"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = []
    for i in range(8):
        c, r = tok(GOOD[i % 4] + tok.eos_token), tok(BAD[i % 4] + tok.eos_token)
        rows.append({"input_ids_chosen": c["input_ids"], "attention_mask_chosen": c["attention_mask"],
                     "input_ids_rejected": r["input_ids"], "attention_mask_rejected": r["attention_mask"]})
    # gradient_checkpointing=True is RewardConfig's default: the recomputed forwards must be routed too
    args = _args(tmp_path, RewardConfig, per_device_train_batch_size=4, **kw)
    return _quiet(lambda: RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok))


def _dpo(tmp_path, model_path, tok, **kw):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    ref = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    data = Dataset.from_dict({"prompt": PROMPTS * 2, "chosen": CHOSEN * 2, "rejected": REJECTED * 2})
    args = _args(tmp_path, per_device_train_batch_size=4, remove_unused_columns=False, **kw)
    return _quiet(lambda: DPOTrainer(model=model, ref_model=ref, processing_class=tok, args=args, train_dataset=data,
                                     max_length=48, max_prompt_length=16))


def _iterative(tmp_path, model_path, tok, arch="gpt2", **kw):
    auto = AutoModelForSeq2SeqLM if arch in ("t5", "bart") else AutoModelForCausalLM
    model = auto.from_pretrained(model_path(arch))
    args = _args(tmp_path, per_device_train_batch_size=3, **kw)
    return _quiet(lambda: IterativeSFTTrainer(model, args=args, processing_class=tok, max_length=16))


BUILD = {"sft": _sft, "reward": _reward, "dpo": _dpo, "iterative_sft": _iterative}


def _train_one_step(trainer, kind: str) -> float:
    """One optimiser step on the trainer's own path (train() / step()); returns its loss."""
    torch.manual_seed(0)
    if kind == "iterative_sft":
        labels = ["yes", "no", "yes"] if trainer.is_encoder_decoder else None
        return trainer.step(texts=TEXTS[:3], texts_labels=labels)["loss"]
    return trainer.train().training_loss


# ----------------------------------------------------------------- (a) routing
@pytest.mark.parametrize("kind", TRAINERS)
def test_training_step_routes_every_linear_layer_forward_and_backward(tmp_path, model_path, pad_tokenizer, seen, kind):
    trainer = BUILD[kind](tmp_path, model_path, pad_tokenizer)
    model = trainer.model
    loss = _train_one_step(trainer, kind)
    assert math.isfinite(loss)
    linears = _linear_weights(model)
    assert linears and linears <= seen.forward, f"{len(linears - seen.forward)} of {len(linears)} layers not routed forward"
    trainable = _linear_weights(model, trainable_only=True)
    assert trainable <= seen.backward, f"{len(trainable - seen.backward)} of {len(trainable)} layers not routed backward"
    if kind == "reward":
        # gradient checkpointing (on by default): each transformer block's linears ran again, inside the backward
        blocks = _linear_weights(model.transformer.h)
        assert trainer.args.gradient_checkpointing and blocks <= seen.recomputed
    else:
        assert not seen.recomputed
    if kind == "dpo":
        ref = _linear_weights(trainer.ref_model)
        assert ref <= seen.forward and not ref & seen.backward  # the reference's forward, without gradient
    for m in (*model.modules(), *(trainer.ref_model.modules() if kind == "dpo" else ())):
        assert "forward" not in m.__dict__, f"{type(m).__name__} left routed after the step"


def test_reward_without_gradient_checkpointing_recomputes_nothing(tmp_path, model_path, pad_tokenizer, seen):
    trainer = _reward(tmp_path, model_path, pad_tokenizer, gradient_checkpointing=False)
    _train_one_step(trainer, "reward")
    assert _linear_weights(trainer.model) <= seen.forward and not seen.recomputed


def test_evaluation_routes_the_linear_layers(tmp_path, model_path, pad_tokenizer, seen):
    """prediction_step (evaluate) of the DPO trainer: the policy's and the reference's forwards."""
    trainer = _dpo(tmp_path, model_path, pad_tokenizer, per_device_eval_batch_size=4)
    metrics = trainer.evaluate(trainer.train_dataset)
    assert "eval_loss" in metrics
    assert _linear_weights(trainer.model) | _linear_weights(trainer.ref_model) <= seen.forward and not seen.backward


@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_evaluation_routes_sft_and_reward(tmp_path, model_path, pad_tokenizer, seen, kind):
    trainer = BUILD[kind](tmp_path, model_path, pad_tokenizer)
    metrics = trainer.evaluate(trainer.train_dataset)
    assert "eval_loss" in metrics
    assert _linear_weights(trainer.model) <= seen.forward and not seen.backward


def test_dpo_precomputed_reference_is_routed(tmp_path, model_path, pad_tokenizer, seen):
    trainer = _dpo(tmp_path, model_path, pad_tokenizer)
    trainer.precompute_ref_log_probs = True
    ref = _linear_weights(trainer.ref_model)
    trainer.get_train_dataloader()  # precomputes the reference log-probs, then releases the reference
    assert trainer.ref_model is None and ref <= seen.forward and not seen.backward


def test_peft_routes_base_layers_and_adapters(tmp_path, model_path, pad_tokenizer, seen):
    from peft import LoraConfig

    trainer = _sft(tmp_path, model_path, pad_tokenizer,
                   peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    _train_one_step(trainer, "sft")
    adapters = _linear_weights(trainer.model, trainable_only=True)
    assert adapters and adapters <= seen.backward  # lora_A / lora_B
    assert _linear_weights(trainer.model) <= seen.forward  # the frozen Conv1D base layers too


def test_switched_off_by_environment(tmp_path, model_path, pad_tokenizer, seen, monkeypatch):
    monkeypatch.setenv(onednn_linear.ONEDNN_LINEARS_ENV, "torch")
    for kind in ("sft", "reward"):
        _train_one_step(BUILD[kind](tmp_path / kind, model_path, pad_tokenizer), kind)
    assert not seen


@pytest.mark.parametrize("kind", ["iterative_sft", "sft_bf16"])
def test_nothing_for_encoder_decoders_or_under_autocast(tmp_path, model_path, pad_tokenizer, seen, kind):
    if kind == "iterative_sft":
        trainer = _iterative(tmp_path, model_path, pad_tokenizer, arch="t5")
    else:  # bf16 autocast: every call runs torch's own (bf16) kernels
        trainer = _sft(tmp_path, model_path, pad_tokenizer, args={"bf16": True})
    loss = _train_one_step(trainer, kind.removesuffix("_bf16"))
    assert math.isfinite(loss) and not seen


def test_step_kernels_exclusions(model_path):
    gpt2 = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    t5 = AutoModelForSeq2SeqLM.from_pretrained(model_path("t5"))
    plain = types.SimpleNamespace(distributed_type=DistributedType.NO)
    assert not is_encoder_decoder(gpt2) and is_encoder_decoder(t5) and not is_compiled(gpt2)
    from rlft.models import AutoModelForSeq2SeqLMWithValueHead

    assert is_encoder_decoder(AutoModelForSeq2SeqLMWithValueHead(t5))
    with step_kernels(plain, gpt2, None, t5):
        assert "forward" in gpt2.transformer.h[0].mlp.c_fc.__dict__
        assert not any("forward" in m.__dict__ for m in t5.modules())
    assert "forward" not in gpt2.transformer.h[0].mlp.c_fc.__dict__
    for sharded in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with step_kernels(types.SimpleNamespace(distributed_type=sharded), gpt2):  # the GELUs only
            assert not any("forward" in m.__dict__ for m in gpt2.modules())
            assert [type(m).__name__ for m in gpt2.transformer.h[0].mlp.children()][-2] == "FusedGELU"
    wrapper = torch.compile(gpt2)  # compiled lazily: nothing runs here
    with step_kernels(plain, wrapper):
        assert is_compiled(wrapper) and not any("forward" in m.__dict__ for m in gpt2.modules())
    gpt2.transformer.h[1].compile()  # one block compiled in place
    with step_kernels(plain, gpt2):
        assert is_compiled(gpt2) and not any("forward" in m.__dict__ for m in gpt2.modules())


# ----------------------------------------------------------------- (b) same numbers as torch's kernels
#: oneDNN sums in another order than MKL: the step's loss and each gradient agree to fp32 rounding. A gradient
#: element may differ by 2e-5 of its tensor's largest |element|, plus 1e-4 of itself (measured on these four
#: steps: at most 2.5e-6 of the largest element; the losses within 8e-8 relative).
LOSS_RTOL = 1e-6
GRAD_RTOL, GRAD_SCALE_ATOL = 1e-4, 2e-5


def _step_loss_and_grads(tmp_path, model_path, tok, kind) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = BUILD[kind](tmp_path, model_path, tok)
    grads: dict[str, torch.Tensor] = {}
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:  # the gradient as the optimiser gets it (its step and zero_grad come after)
            p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    return _train_one_step(trainer, kind), grads


@pytest.mark.parametrize("kind", TRAINERS)
def test_step_loss_and_gradients_equal_torch_kernels(tmp_path, model_path, pad_tokenizer, seen, monkeypatch, kind):
    loss, grads = _step_loss_and_grads(tmp_path / "onednn", model_path, pad_tokenizer, kind)
    assert seen.backward
    monkeypatch.setenv(onednn_linear.ONEDNN_LINEARS_ENV, "torch")
    ref_loss, ref_grads = _step_loss_and_grads(tmp_path / "torch", model_path, pad_tokenizer, kind)
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL)
    assert grads.keys() == ref_grads.keys() and grads
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[name], ref, rtol=GRAD_RTOL, atol=GRAD_SCALE_ATOL * scale, msg=name)


@pytest.mark.parametrize("kind", TRAINERS)
def test_step_fuses_gpt2_gelu(tmp_path, model_path, pad_tokenizer, monkeypatch, kind):
    """Every GELU call of a training step (GPT-2's gelu_new; DPO: the policy's and the reference's) runs fused,
    across transformers' train/eval switches, and the model holds its own GELU modules again after."""
    from transformers.activations import NewGELUActivation

    from rlft.utils import fused_gelu

    counts = {"fused": 0, "plain": 0}
    fused_forward, plain_forward = fused_gelu.FusedGELU.forward, NewGELUActivation.forward

    def fused(self, x):
        counts["fused"] += 1
        return fused_forward(self, x)

    def plain(self, x):
        counts["plain"] += 1
        return plain_forward(self, x)

    monkeypatch.setattr(fused_gelu.FusedGELU, "forward", fused)
    monkeypatch.setattr(NewGELUActivation, "forward", plain)
    trainer = BUILD[kind](tmp_path, model_path, pad_tokenizer)
    _train_one_step(trainer, kind)
    assert counts["fused"] > 0 and counts["plain"] == 0, counts
    assert not any(isinstance(m, fused_gelu.FusedGELU) for m in trainer.model.modules())

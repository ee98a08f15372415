"""rlft.utils.onednn_linear: linear layers on oneDNN, forward and backward, against torch's own (MKL) path."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from rlft.utils import onednn_linear
from rlft.utils.decode import packed_linears
from rlft.utils.onednn_linear import (
    ONEDNN_LINEARS_ENV,
    OneDNNLinear,
    bucketed_rows,
    onednn_available,
    onednn_linears,
)

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


#: The routing sizes of rlft.utils.onednn_linear, as shipped (read before any test changes them).
SHIPPED_SIZES = (onednn_linear.MIN_WEIGHT_ELEMENTS, onednn_linear.MIN_WEIGHT_SIDE)


@pytest.fixture(autouse=True)
def route_every_layer(monkeypatch):
    """The tiny test models' layers are mostly below the routing size (`large_enough`); these tests are about
    the routing itself, so every layer is routed (test_only_large_enough_layers_are_routed checks the sizes)."""
    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_ELEMENTS", 0)
    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_SIDE", 0)

#: fp32 products summed in another order: tensors agree to about 1e-6 of their norm.
REL_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


@pytest.fixture
def calls(monkeypatch):
    """Counts the oneDNN products (forward, input grad, weight grad) run by the module."""
    count = [0]
    inner = onednn_linear._inner

    def counting(*args):
        count[0] += 1
        count.append(tuple(args[0].shape))  # the shapes oneDNN saw, after count[0]
        return inner(*args)

    monkeypatch.setattr(onednn_linear, "_inner", counting)
    return count


def _reference(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's product written out with matmul: an independent computation of what it must return."""
    if type(module) is Conv1D:
        out = x @ module.weight  # weight: (in, out)
    else:
        out = x @ module.weight.t()  # weight: (out, in)
    return out + module.bias if module.bias is not None else out


@pytest.mark.parametrize("kind", ["linear", "linear_no_bias", "conv1d"])
def test_outputs_and_gradients_match_torch(kind, calls):
    torch.manual_seed(0)
    layer = {"linear": lambda: torch.nn.Linear(48, 40), "linear_no_bias": lambda: torch.nn.Linear(48, 40, bias=False),
             "conv1d": lambda: Conv1D(40, 48)}[kind]()
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(3, 7, 48, requires_grad=True)
    gy = torch.randn(3, 7, 40)
    expected = _reference(layer, x)
    grads_ref = torch.autograd.grad(expected, [x, *layer.parameters()], gy)
    with onednn_linears(layer) as routed:
        assert routed == 1
        out = layer(x)
    assert calls[0] == 1
    grads = torch.autograd.grad(out, [x, *layer.parameters()], gy)  # the backward runs after the block
    assert calls[0] == 3  # input grad and weight grad ran on oneDNN too
    assert out.shape == expected.shape and _rel(out, expected) < REL_TOL
    for got, ref in zip(grads, grads_ref, strict=True):
        assert got.shape == ref.shape and _rel(got, ref) < REL_TOL
    assert "forward" not in layer.__dict__


def test_no_grad_inputs_and_frozen_weight(calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    layer.weight.requires_grad_(False)
    x = torch.randn(5, 16, requires_grad=True)
    with onednn_linears(layer):
        out = layer(x)
        out.sum().backward()
        assert calls[0] == 2  # forward and input grad; no weight grad for a frozen weight
        assert layer.weight.grad is None and _rel(layer.bias.grad, torch.full((8,), 5.0)) < REL_TOL
        with torch.no_grad():
            assert _rel(layer(x), _reference(layer, x)) < REL_TOL
    assert _rel(x.grad, layer.weight.sum(0).expand(5, 16)) < REL_TOL


def _gpt2(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.train().requires_grad_(True)


def _loss(model, ids):
    logits = model(input_ids=ids).logits  # (B, T, V)
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).mean()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gpt2_tied_head_gradients_and_accumulation_match_torch(model_path, calls):
    """Whole model, GPT-2 with its LM head tied to the input embedding, two backwards accumulated."""
    model = _gpt2(model_path)
    model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.0
    model.eval()  # no dropout: both runs see the same function
    assert model.lm_head.weight is model.transformer.wte.weight
    ids = torch.randint(5, model.config.vocab_size, (2, 3, 12))
    for batch in ids:  # two backwards, gradients accumulated
        _loss(model, batch).backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    with onednn_linears(model) as routed:
        assert routed == 4 * model.config.n_layer + 1  # c_attn, c_proj, c_fc, mlp.c_proj per block + LM head
        for batch in ids:
            _loss(model, batch).backward()
    assert calls[0] == 2 * 3 * routed
    got = _grads(model)
    assert got.keys() == reference.keys() and len(got) == len(list(model.parameters()))
    for name in reference:
        assert _rel(got[name], reference[name]) < REL_TOL, name


def test_lora_layers_route_their_base_and_adapters(model_path, calls):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = _gpt2(model_path).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    with torch.no_grad():  # B starts at zero: make the adapters contribute
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.randint(5, base.config.vocab_size, (2, 10))
    _loss(model, ids).backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)
    with onednn_linears(model) as routed:
        # every block: c_attn's base + A + B, c_proj, c_fc's base + A + B, mlp.c_proj; and the LM head
        assert routed == 8 * base.config.n_layer + 1
        _loss(model, ids).backward()
    assert calls[0] > 0
    got = _grads(model)
    assert got.keys() == reference.keys() and any("lora_A" in n for n in got)
    for name in reference:
        assert _rel(got[name], reference[name]) < REL_TOL, name


def test_weights_changed_inside_the_block_are_used(calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(4, 16)
    with onednn_linears(layer):
        layer(x).square().sum().backward()
        opt.step()
        out = layer(x)
    assert _rel(out, _reference(layer, x)) < REL_TOL


@pytest.mark.parametrize("case", ["autocast", "bf16", "meta", "one_dim"])
def test_other_dtypes_devices_and_autocast_run_the_module_forward(case, calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    if case == "bf16":
        layer, x = layer.bfloat16(), x.bfloat16()
    elif case == "meta":
        layer, x = layer.to("meta"), x.to("meta")
    elif case == "one_dim":
        x = x[0]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        with onednn_linears(layer):
            out = layer(x)
    assert calls[0] == 0
    assert out.dtype == expected.dtype and out.device == expected.device and out.shape == expected.shape
    if case != "meta":
        assert torch.equal(out, expected)


def test_modules_restored_on_exit_and_on_error_and_nesting(model_path):
    model = _gpt2(model_path)
    with pytest.raises(RuntimeError, match="boom"), onednn_linears(model):
        raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in model.modules())
    with onednn_linears(model) as outer:
        with onednn_linears(model) as inner, packed_linears(model) as packed:
            assert outer > 0 and inner == 0 and packed == 0  # already routed: left alone
        assert all("forward" in m.__dict__ for m in model.modules() if type(m) in (torch.nn.Linear, Conv1D))
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_deepcopy_inside_the_block_routes_the_copy():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with onednn_linears(layer):
        twin = copy.deepcopy(layer)
        with torch.no_grad():
            twin.weight.zero_()
        assert _rel(twin(x), twin.bias.expand(4, 8)) < REL_TOL
        assert _rel(layer(x), _reference(layer, x)) < REL_TOL


def test_switch(monkeypatch, calls):
    layer = torch.nn.Linear(4, 4)
    monkeypatch.setenv(ONEDNN_LINEARS_ENV, "torch")
    with onednn_linears(layer) as routed:
        layer(torch.randn(2, 4))
    assert routed == 0 and calls[0] == 0
    monkeypatch.setenv(ONEDNN_LINEARS_ENV, "mkl")
    with pytest.raises(ValueError, match="RLFT_ONEDNN_LINEARS"), onednn_linears(layer):
        pass


def test_non_contiguous_input(calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(16, 5).t().requires_grad_(True)  # (5, 16), column-major
    with onednn_linears(layer):
        out = layer(x)
        out.sum().backward()
    assert calls[0] == 3 and _rel(out, _reference(layer, x)) < REL_TOL
    assert _rel(layer.weight.grad, torch.ones(5, 8).t() @ x.detach()) < REL_TOL


def test_function_alone():
    torch.manual_seed(0)
    x, w, b = torch.randn(6, 16, requires_grad=True), torch.randn(16, 8, requires_grad=True), torch.randn(8, requires_grad=True)
    args = (x, w, b)
    out = OneDNNLinear.apply(x, w, b, True)  # Conv1D layout: x @ w + b
    gx, gw, gb = torch.autograd.grad(out.square().sum(), args)
    ref = x @ w + b
    rgx, rgw, rgb = torch.autograd.grad(ref.square().sum(), args)
    assert _rel(out, ref) < REL_TOL and _rel(gx, rgx) < REL_TOL and _rel(gw, rgw) < REL_TOL and _rel(gb, rgb) < REL_TOL


def _ppo_step(model_path, pad_tokenizer, routed: bool):
    from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # SGD: the update is the gradient itself, so the comparison below measures the gradients (Adam's first
    # step would amplify a rounding-sized gradient into a full step of either sign).
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, seed=0), model, None, pad_tokenizer,
                         optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    responses = [torch.tensor([10, 11, 12, 13]), torch.tensor([14, 15])]
    torch.manual_seed(1)
    with onednn_linears(trainer.model) as n_policy, onednn_linears(trainer.ref_model) as n_ref:
        assert (n_policy > 0 and n_ref > 0) == routed
        stats = trainer.step(queries, responses, [torch.tensor(1.0), torch.tensor(-0.5)])
    deltas = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    return stats, deltas


def test_ppo_step_inside_the_block_matches_the_plain_step(model_path, pad_tokenizer, monkeypatch):
    monkeypatch.setenv(ONEDNN_LINEARS_ENV, "torch")
    ref_stats, ref_deltas = _ppo_step(model_path, pad_tokenizer, routed=False)
    monkeypatch.setenv(ONEDNN_LINEARS_ENV, "onednn")
    stats, deltas = _ppo_step(model_path, pad_tokenizer, routed=True)
    assert all(d.abs().max() > 0 for d in deltas.values())  # every trainable parameter moved
    for name, ref in ref_deltas.items():
        assert _rel(deltas[name], ref) < 1e-4, name
    for key in ("ppo/loss/total", "ppo/loss/policy", "ppo/loss/value", "objective/kl"):
        assert abs(float(stats[key]) - float(ref_stats[key])) <= 1e-5 * max(1.0, abs(float(ref_stats[key]))), key


def test_row_counts_are_bucketed_and_padding_is_exact(calls):
    """oneDNN sees bucketed row counts only (at most 1/8 padding, multiples of 16 below 256 rows)."""
    torch.manual_seed(0)
    layer = Conv1D(24, 16)
    torch.nn.init.normal_(layer.bias)
    for n in (1, 63, 64, 65, 130):
        x = torch.randn(n, 16, requires_grad=True)
        with onednn_linears(layer):
            out = layer(x)
        gy = torch.randn(n, 24)
        got = torch.autograd.grad(out, [x, layer.weight, layer.bias], gy)
        ref = torch.autograd.grad(_reference(layer, x), [x, layer.weight, layer.bias], gy)
        assert out.shape == (n, 24) and _rel(out, _reference(layer, x)) < REL_TOL
        assert all(_rel(a, b) < REL_TOL for a, b in zip(got, ref, strict=True))
    rows = {shape[0] for shape in calls[1::3] + calls[2::3]}  # forward and input-grad inputs: (rows, k)
    reductions = {shape[1] for shape in calls[3::3]}  # weight grad: (k, rows)
    assert rows == reductions == {16, 64, 80, 144}  # 1 -> 16, 63 and 64 -> 64, 65 -> 80, 130 -> 144


def test_bucketed_rows():
    assert [bucketed_rows(n) for n in (1, 16, 17, 172, 255, 256, 257, 1000, 4096, 4097)] == \
        [16, 16, 32, 176, 256, 256, 288, 1024, 4096, 4608]
    for n in range(1, 5000):  # at most 1/8 padding above 128 rows, and few distinct counts per doubling
        assert n <= bucketed_rows(n) <= max(n + 15, n * 9 / 8)
    assert len({bucketed_rows(n) for n in range(1025, 2049)}) == 8


def test_only_large_enough_layers_are_routed(model_path, monkeypatch):
    """At the shipped sizes: of the tiny GPT-2 with a value head and rank-8 LoRA adapters, the 64 x 256 MLP layers
    and the 64 x 1024 LM head are routed; the 64 x 192 and 64 x 64 attention layers, the adapters and the
    64 x 1 value head are not."""
    peft = pytest.importorskip("peft")
    from rlft import AutoModelForCausalLMWithValueHead

    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_ELEMENTS", SHIPPED_SIZES[0])
    monkeypatch.setattr(onednn_linear, "MIN_WEIGHT_SIDE", SHIPPED_SIZES[1])
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"), peft_config=lora)
    n_layer = model.pretrained_model.config.n_layer
    with onednn_linears(model) as routed:
        names = sorted(n.split(".")[-1] if "lm_head" not in n else "lm_head"
                       for n, m in model.named_modules() if "forward" in m.__dict__)
    assert routed == 2 * n_layer + 1
    assert names == ["c_fc"] * n_layer + ["c_proj"] * n_layer + ["lm_head"] or names == sorted(
        ["base_layer"] * n_layer + ["c_proj"] * n_layer + ["lm_head"]), names
    assert onednn_linear.large_enough(torch.empty(256, 64)) and not onednn_linear.large_enough(torch.empty(192, 64))
    assert not onednn_linear.large_enough(torch.empty(1, 4096)) and not onednn_linear.large_enough(torch.empty(16, 2048))


def test_expanded_output_gradient_is_made_dense(monkeypatch):
    """``y.sum().backward()`` hands the layer an expanded (stride-0) gradient, which made oneDNN's products
    about 190x slower; the products see dense operands, and the gradients are right."""
    strides = []
    inner = onednn_linear._inner

    def recording(*args):
        strides.extend(min(t.stride()) for t in args[:2])
        return inner(*args)

    monkeypatch.setattr(onednn_linear, "_inner", recording)
    x = torch.randn(48, 64, requires_grad=True)  # a bucketed row count: no padding copies the gradient
    layer = torch.nn.Linear(64, 96)
    with onednn_linears(layer):
        layer(x).sum().backward()
    assert len(strides) == 6 and min(strides) > 0, strides  # forward, input grad, weight grad
    gx = x.grad.clone()
    x.grad = None
    layer(x).sum().backward()  # torch's kernels
    assert torch.allclose(gx, x.grad, atol=1e-5)

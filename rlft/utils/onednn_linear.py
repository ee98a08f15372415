"""fp32 linear layers on oneDNN instead of MKL's sgemm, forward and backward, while a model trains on CPU.

torch runs ``F.linear`` / ``torch.addmm`` / ``torch.mm`` in fp32 on MKL's sgemm. On the 2-core AVX-512
CPU of rlft's benchmarks that reaches about 200-225 GFLOP/s on the PPO workload's shapes (172-688 rows,
d=256, V=8192); oneDNN's fp32 inner product (``torch.ops.mkldnn._linear_pointwise``) reaches 390-510
GFLOP/s on the same products, and it takes the weight in torch's own layout, or transposed as a strided
view, with no reorder ahead of time (`benchmarks/onednn_bench.py`, docs/ppo_performance.md "oneDNN linears
in training"). All three products of a linear layer are inner products of this kind:

    forward        y  = x @ W^T + b   = linear(x, W, b)              x: (N, in), W: (out, in)
    input grad     gx = gy @ W         = linear(gy, W^T)              gy: (N, out)
    weight grad    gW = gy^T @ x       = linear(gy^T, x^T)            (out, in)
    bias grad      gb = gy.sum(0)                                     (out,)

GPT-2's ``Conv1D`` stores its weight as (in, out) and computes ``x @ W + b``: the same products with W
transposed. `onednn_linears` routes every fp32 CPU call of each ``nn.Linear`` / ``Conv1D`` of a model
(with or without gradients) that is `large_enough` through `OneDNNLinear`, an autograd function that
computes those four lines; smaller layers (LoRA adapters, value and score heads, d=64 layers) stay on
torch's kernels.
The arithmetic is the same; the summation order differs, so results agree with torch's to fp32 rounding
(about 1e-6 relative), like a change of batch size. Nothing is cached: the weights are read at every
call, so optimizer steps inside the block need nothing special. The rows are zero-padded to a few
bucketed counts (`bucketed_rows`), because oneDNN's memory grows with every new row count it sees.

Calls under autocast, in another dtype, on another device, with tensor subclasses or while
``torch.compile`` traces run the module's own forward. peft's LoRA wrappers are not touched (their forward
differs), but their base layer and adapter matrices are plain ``nn.Linear`` / ``Conv1D`` and are routed.
Set the environment variable ``RLFT_ONEDNN_LINEARS=torch`` to switch it off.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .decode import _conv1d_type, _plain_fp32_cpu, _unpatched_linear

#: Environment variable that selects the kernel of `onednn_linears`: "onednn" (default) or "torch".
ONEDNN_LINEARS_ENV = "RLFT_ONEDNN_LINEARS"
#: oneDNN builds a primitive per distinct row count N, and the process's memory grows with each new one
#: (measured: +1.3 GB over 200 mini-batches of 101 distinct lengths on the 5M-parameter fixture GPT-2;
#: mini-batches padded to their own longest give many row counts). So N is zero-padded up to the next
#: multiple of a power of two that wastes at most 1/ROW_STEPS_PER_OCTAVE: ROW_STEPS_PER_OCTAVE row counts
#: per doubling of N, at least MIN_ROW_STEP apart.
ROW_STEPS_PER_OCTAVE = 8
MIN_ROW_STEP = 16


#: Layers smaller than this stay on torch's kernels: their products take microseconds, and the routing's own
#: cost (the autograd function, the row padding) outweighs oneDNN's faster arithmetic. Measured on the benchmark
#: CPU (2 threads): LoRA adapters of rank 8 (256 x 8) and the value head (256 x 1) routed made the `ppo_peft_ref`
#: workload 8% slower (1.40 -> 1.52 steps/s with them left out, 3 pairs each); the d=64 GPT-2 of
#: `reward_tiny_long_defaults` (64 x 192, 64 x 64 and the 64 x 1 score head) 9% slower than torch's kernels,
#: within noise of them with only its 64 x 256 layers routed.
MIN_WEIGHT_ELEMENTS = 128 * 128
MIN_WEIGHT_SIDE = 64


def large_enough(weight: Tensor) -> bool:
    """Whether a layer with this weight is routed: at least MIN_WEIGHT_ELEMENTS entries, both sides >= MIN_WEIGHT_SIDE."""
    return weight.numel() >= MIN_WEIGHT_ELEMENTS and min(weight.shape) >= MIN_WEIGHT_SIDE


def bucketed_rows(n: int) -> int:
    """The row count oneDNN sees for ``n`` rows: n rounded up to a multiple of max(MIN_ROW_STEP, 2^k / 8), 2^k <= n."""
    step = max(MIN_ROW_STEP, (1 << (n.bit_length() - 1)) // ROW_STEPS_PER_OCTAVE)
    return -(-n // step) * step


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear op (CPU builds with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_enabled() -> bool:
    """`onednn_available` and not switched off by ``RLFT_ONEDNN_LINEARS=torch``."""
    choice = os.environ.get(ONEDNN_LINEARS_ENV, "onednn").lower()
    if choice not in ("onednn", "torch"):
        raise ValueError(f"{ONEDNN_LINEARS_ENV}={choice!r} is not a choice: use 'onednn' (default) or 'torch'.")
    return choice == "onednn" and onednn_available()


def _inner(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight^T + bias`` on oneDNN. x: (N, in) or (..., in); weight: (out, in), row- or column-major."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")  # (..., out)


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """(N, k) -> (rows, k): zero rows appended (none when N == rows)."""
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` (or, with ``transposed``, Conv1D's ``x @ weight + bias``) with all
    products on oneDNN. x: (..., in); weight: (out, in), Conv1D's (in, out) when ``transposed``; bias: (out,).

    The N = prod(...) rows are zero-padded to `bucketed_rows` (N); the padded rows'
    outputs are dropped, and their zero inputs and zero output gradients add nothing to the weight gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, transposed: bool) -> Tensor:
        n = x.numel() // x.shape[-1]
        rows = bucketed_rows(n)
        xp = _pad_rows(x.reshape(n, x.shape[-1]), rows)  # (rows, in)
        ctx.save_for_backward(xp, weight)
        ctx.transposed, ctx.x_shape = transposed, x.shape
        w = weight.t() if transposed else weight  # (out, in)
        return _inner(xp, w, bias)[:n].view(*x.shape[:-1], -1)  # (..., out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        xp, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        gy = grad.reshape(-1, grad.shape[-1]).contiguous()  # (N, out); an expanded gradient (y.sum()'s) made oneDNN 190x slower
        n = gy.shape[0]
        gyp = _pad_rows(gy, xp.shape[0])  # (rows, out)
        gx = gw = gb = None
        if need_x:
            w_t = weight if ctx.transposed else weight.t()  # W^T: (in, out)
            gx = _inner(gyp, w_t)[:n].view(ctx.x_shape)  # gy @ W: (..., in)
        if need_w:
            # Linear: gW = gy^T @ x (out, in); Conv1D: gW = x^T @ gy (in, out).
            gw = _inner(xp.t(), gyp.t()) if ctx.transposed else _inner(gyp.t(), xp.t())
        if need_b:
            gb = gy.sum(0)  # (out,)
        return gx, gw, gb, None


def _onednn_forward(self: torch.nn.Module, x: Tensor) -> Tensor:
    """The forward `onednn_linears` binds to each layer: `OneDNNLinear` where it applies, else the module's own."""
    weight, bias = self.weight, self.bias
    transposed = type(self) is not torch.nn.Linear  # Conv1D: weight (in, out)
    in_features = weight.shape[0] if transposed else weight.shape[-1]
    if (
        _plain_fp32_cpu(x, x.dim()) and x.dim() >= 2 and x.numel() > 0 and x.shape[-1] == in_features
        and _plain_fp32_cpu(weight, 2) and weight.numel() > 0 and (bias is None or _plain_fp32_cpu(bias, 1))
        and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
    ):
        return OneDNNLinear.apply(x if x.is_contiguous() else x.contiguous(), weight, bias, transposed)
    return type(self).forward(self, x)


def _ours(module: torch.nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _onednn_forward


@contextlib.contextmanager
def onednn_linears(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the ``nn.Linear`` / GPT-2 ``Conv1D`` layers of ``model`` run their fp32 CPU calls,
    forward and backward, on oneDNN (see the module docstring); yields how many layers were routed (0 when
    switched off or unavailable). The weights may change inside the block (optimizer steps): nothing is
    cached. The modules are restored on exit, also on error. A backward after the block still runs oneDNN
    for the graph built inside it.
    """
    patched: list[torch.nn.Module] = []
    if onednn_enabled():
        conv1d = _conv1d_type()
        for module in model.modules():
            if _unpatched_linear(module, conv1d) and large_enough(module.weight):
                # A bound method (not a closure) so that a deepcopy of the module binds to the copy.
                module.forward = types.MethodType(_onednn_forward, module)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            if _ours(module):
                del module.__dict__["forward"]

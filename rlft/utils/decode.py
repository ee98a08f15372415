"""Faster fp32 linear layers while a model generates on CPU: weights packed once per ``generate`` call.

What the decoding time of a small model on CPU goes to (``benchmarks/decode_bench.py``, 5.3M-parameter
GPT-2 of the benchmark fixtures, 32 rows x 32 new tokens, 2 cores): about 60% in the matrix products
(the LM head alone 20%), run by ``torch.addmm`` / ``F.linear``, i.e. MKL's sgemm, at 100-150 GFLOP/s.
The rest is the model's and transformers' per-token Python and small ops. oneDNN's linear with its
weight reordered ahead of time into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``
+ ``_linear_pointwise``, what ``torch.compile`` with frozen weights calls) does the same fp32 products
2-3x faster for decode-sized inputs (a few dozen rows), because the weight is laid out once, not on
every call. During ``generate`` the weights do not change, so `packed_linears` packs every fp32
``nn.Linear`` / GPT-2 ``Conv1D`` once on entry and routes their no-grad fp32 CPU calls to the packed
weight; it restores the modules on exit. The reorder costs about 0.1 ms per weight matrix per call.

Same arithmetic, different summation order: outputs differ from ``F.linear``'s at fp32 rounding
(about 1e-6 relative), like any change of batch size or padding. A token drawn by inverse CDF changes
only when a uniform number lands within that rounding of a bin edge. Memory: one packed copy of each
weight while the call runs (the model's fp32 weights once more).

Calls with gradients enabled, under autocast, in another dtype or on another device run the module's own
forward. Set the environment variable ``RLFT_DECODE_LINEARS=torch`` to switch packing off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

#: Environment variable that selects the linear kernel during generation: "packed" (default) or "torch".
DECODE_LINEARS_ENV = "RLFT_DECODE_LINEARS"


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops (CPU builds with mkldnn)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def packing_enabled() -> bool:
    """`packing_available` and not switched off by ``RLFT_DECODE_LINEARS=torch``."""
    choice = os.environ.get(DECODE_LINEARS_ENV, "packed").lower()
    if choice not in ("packed", "torch"):
        raise ValueError(f"{DECODE_LINEARS_ENV}={choice!r} is not a choice: use 'packed' (default) or 'torch'.")
    return choice == "packed" and packing_available()


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _plain_fp32_cpu(t: Tensor) -> bool:
    return type(t) in (Tensor, torch.nn.Parameter) and t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and t.numel() > 0


def _packable(module: torch.nn.Module, conv1d) -> bool:
    """Exactly ``nn.Linear`` or GPT-2's ``Conv1D`` (not subclasses, whose forward may differ) with plain fp32 CPU tensors."""
    if type(module) is not torch.nn.Linear and (conv1d is None or type(module) is not conv1d):
        return False
    if "forward" in module.__dict__:  # someone else already patched this instance
        return False
    bias = module.bias
    return _plain_fp32_cpu(module.weight) and (bias is None or (type(bias) in (Tensor, torch.nn.Parameter) and bias.dtype == torch.float32 and bias.device.type == "cpu"))


def _packed_forward(module: torch.nn.Module, packed: Tensor, bias):
    """A forward for ``module`` that uses ``packed`` (out, in) for no-grad fp32 CPU inputs, else the module's own."""
    own = type(module).forward.__get__(module)

    def forward(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2 \
                or torch.is_autocast_enabled("cpu") or x.shape[-1] != packed.shape[1]:
            return own(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # (..., out)

    return forward


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int | None = None) -> Iterator[int]:
    """Within the block, the fp32 ``nn.Linear`` / ``Conv1D`` layers of ``model`` run no-grad CPU calls with
    weights packed for oneDNN (see the module docstring); yields how many layers were packed (0 when
    packing is off or unavailable). ``rows``: the expected number of input rows per call (a hint for
    the weight layout, e.g. the decode batch size). The modules are restored on exit, also on error;
    the weights must not change inside the block.
    """
    patched: list[torch.nn.Module] = []
    if packing_enabled():
        conv1d = _conv1d_type()
        seen: dict[int, Tensor] = {}  # id(weight in (out, in) layout) -> packed: tied weights are packed once
        with torch.no_grad():
            for module in model.modules():
                if not _packable(module, conv1d):
                    continue
                # Conv1D stores (in, out) and computes x @ W + b; F.linear's layout is (out, in).
                weight = module.weight.t() if type(module) is not torch.nn.Linear else module.weight
                key = (id(module.weight), type(module) is torch.nn.Linear)
                if key not in seen:
                    seen[key] = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
                bias = module.bias.detach() if module.bias is not None else None
                module.forward = _packed_forward(module, seen[key], bias)
                patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


__all__ = ["DECODE_LINEARS_ENV", "packed_linears", "packing_available", "packing_enabled"]

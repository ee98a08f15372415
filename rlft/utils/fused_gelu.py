"""GPT-2's tanh-approximated GELU as one fused kernel while rlft trains or generates.

transformers' ``NewGELUActivation`` (``activation_function="gelu_new"``, GPT-2's default and that of
GPT-2 derived models) writes

    gelu(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))

as eight elementwise tensor operations, each a pass over the MLP's (tokens, 4 * d) activation and each
recorded by autograd, whose backward is as many passes again. torch's ``F.gelu(x, approximate="tanh")``
computes the same formula in one kernel forward and one backward. On the benchmark's 2-core CPU, for the
fixture GPT-2's activation (640 x 1024, fp32), forward + backward took 3.04 ms as written and 0.88 ms fused;
the outputs differ by at most 2.4e-7 (fp32 rounding).

`fused_gelu` puts a `FusedGELU` module in the place of each ``NewGELUActivation`` of a model (in its parent's
submodules) within a block and puts the original back on exit, so nothing changes for the model outside
rlft's trainers and saved configs keep saying ``gelu_new``. It swaps the module rather than its ``forward``:
transformers 5 re-applies its hub kernels (``kernels`` package) to ``NewGELUActivation`` modules whenever
the model switches between ``train()`` and ``eval()``, which resets a forward set on the instance.
Any device and dtype: the formula is the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F


def _gelu_new_type() -> type | None:
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return NewGELUActivation


class FusedGELU(torch.nn.Module):
    """``NewGELUActivation`` in one kernel: the same tanh approximation. Holds the module it stands in for."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "original", original)  # not a submodule: the model's structure is unchanged

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


@contextlib.contextmanager
def fused_gelu(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, every ``NewGELUActivation`` of ``model`` (exactly that class) is replaced in its parent by
    a `FusedGELU`; yields how many were replaced. Restored on exit, also on error. Blocks nest: an inner block
    finds `FusedGELU` modules and leaves them to the outer one."""
    gelu_new = _gelu_new_type()
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    if gelu_new is not None:
        for parent in list(model.modules()):
            for name, child in list(parent._modules.items()):
                if child is not None and type(child) is gelu_new:
                    parent._modules[name] = FusedGELU(child)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            current = parent._modules.get(name)
            if isinstance(current, FusedGELU) and current.original is child:
                parent._modules[name] = child

"""`grad_norm`: the total gradient 2-norm, against the norm of all gradients laid end to end."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.utils.faults import grad_norm


def params_with_grads(grads: list[torch.Tensor | None]) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape if g is not None else (2,), dtype=g.dtype if g is not None else None))
        p.grad = g
        params.append(p)
    return params


def flat_norm(grads: list[torch.Tensor | None]) -> torch.Tensor:
    """The definition: one vector of every gradient entry, in float64."""
    return torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads if g is not None]))


def random_grads(seed: int = 0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(40, 24, generator=g), None, torch.randn(24, generator=g) * 1e-3,
            torch.randn(3, 5, 7, generator=g) * 50, torch.randn(1, generator=g)]


def test_grad_norm_matches_the_flattened_norm():
    grads = random_grads()
    norm = grad_norm(params_with_grads(grads))
    assert norm.dtype == torch.float32 and norm.dim() == 0
    torch.testing.assert_close(norm.double(), flat_norm(grads), rtol=1e-6, atol=0)


def test_grad_norm_mixed_dtypes_accumulates_low_precision_in_float32():
    grads = random_grads(1)
    grads[0] = grads[0].to(torch.bfloat16)
    grads[3] = (grads[3] * 100).to(torch.float16)  # squares of fp16 values this size overflow in fp16
    grads[4] = grads[4].double()
    norm = grad_norm(params_with_grads(grads))
    assert math.isfinite(float(norm))
    torch.testing.assert_close(norm.double(), flat_norm(grads), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_grad_norm_carries_nan_and_inf(bad):
    grads = random_grads()
    grads[3][1, 2, 3] = bad
    norm = float(grad_norm(params_with_grads(grads)))
    expected = float(flat_norm(grads))
    assert (math.isnan(norm) and math.isnan(expected)) or norm == expected == math.inf


def test_grad_norm_without_gradients_is_zero():
    assert float(grad_norm(params_with_grads([None, None]))) == 0.0
    assert float(grad_norm([])) == 0.0

"""The fused-kernel paths of `selected_log_probs` / `entropy_from_logits` against the naive formulas."""

from __future__ import annotations

import pytest
import torch

from rlft.functional.logprobs import entropy_from_logits, selected_log_probs


@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 64])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)])
def test_value_and_gradient_match_naive_for_one_and_many_chunks(chunk_rows, dtype, tol):
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(4, 8, 50, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 50, (4, 8), generator=g)
    weights = torch.randn(4, 8, generator=g)
    fast_in = base.clone().requires_grad_(True)
    fast = selected_log_probs(fast_in, labels, chunk_rows=chunk_rows)
    (fast * weights).sum().backward()
    naive_in = base.double().clone().requires_grad_(True)
    naive = torch.log_softmax(naive_in, -1).gather(-1, labels[..., None]).squeeze(-1)  # the straightforward one
    (naive * weights.double()).sum().backward()
    torch.testing.assert_close(fast.double(), naive, atol=tol, rtol=tol)
    assert fast_in.grad.dtype == dtype and fast_in.grad.shape == base.shape
    torch.testing.assert_close(fast_in.grad.double(), naive_in.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_entropy_matches_logsumexp_form(chunk_rows):
    logits = torch.randn(6, 7, 40, dtype=torch.float64) * 5
    p = torch.softmax(logits, -1)
    expected = torch.logsumexp(logits, -1) - (p * logits).sum(-1)  # H = lse(z) - sum p z
    torch.testing.assert_close(entropy_from_logits(logits, chunk_rows=chunk_rows), expected, atol=1e-10, rtol=0)

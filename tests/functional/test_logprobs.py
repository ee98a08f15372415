import math

import pytest
import torch

from rlft.core import entropy_from_logits, logprobs_from_logits
from rlft.functional.logprobs import logprobs_and_entropy, selected_log_probs


def naive_logprobs(logits, labels):
    return torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def test_hand_computed_value():
    # logits [0, ln 3] -> probabilities [1/4, 3/4]; label 1 -> log(3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    labels = torch.tensor([[1]])
    assert logprobs_from_logits(logits, labels).item() == pytest.approx(math.log(0.75), abs=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_matches_naive_formula_across_dtypes(dtype, tol, chunk):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 50, (3, 5), generator=g)
    got = selected_log_probs(logits, labels, chunk_rows=chunk)
    want = naive_logprobs(logits.double(), labels)  # exact reference on the same (rounded) inputs
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradient_matches_naive(dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 4, 30, generator=g).to(dtype)
    labels = torch.randint(0, 30, (2, 4), generator=g)
    weights = torch.randn(2, 4, generator=g)

    a = base.clone().requires_grad_(True)
    (selected_log_probs(a, labels, chunk_rows=3) * weights).sum().backward()
    b = base.clone().double().requires_grad_(True)
    (naive_logprobs(b, labels) * weights.double()).sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad.double(), b.grad, atol=tol, rtol=tol)


def test_gather_false_returns_full_log_softmax():
    logits = torch.randn(2, 3, 7)
    full = logprobs_from_logits(logits, None, gather=False)
    torch.testing.assert_close(full, torch.log_softmax(logits, -1))


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="disagree"):
        selected_log_probs(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_entropy_hand_value_and_naive():
    # uniform over 4 -> ln 4
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4), abs=1e-6)
    logits = torch.randn(3, 6, 40) * 3
    p = torch.softmax(logits.double(), -1)
    naive = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_rows=4).double(), naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy_from_logits(logits.bfloat16()).double(),
                               -(torch.softmax(logits.bfloat16().double(), -1) * torch.log_softmax(logits.bfloat16().double(), -1)).sum(-1),
                               atol=1e-3, rtol=0)


def test_logprobs_and_entropy_together():
    logits = torch.randn(2, 3, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 3))
    lp, ent = logprobs_and_entropy(logits, labels)
    assert lp.requires_grad and not ent.requires_grad
    torch.testing.assert_close(ent, entropy_from_logits(logits.detach()))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 256, 4096, generator=g).bfloat16(), torch.randint(0, 4096, (4, 256), generator=g)


def _naive_run(state):
    logits, labels = state
    torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1))


def _chunked_run(state):
    logits, labels = state
    selected_log_probs(logits, labels, chunk_rows=128)


def test_peak_memory_below_naive():
    """The chunked path never allocates the full (N, V) fp32 tensor (16 MiB here); the naive one does."""
    from rlft.utils.memory import peak_rss_delta

    full_fp32 = 4 * 256 * 4096 * 4
    naive = peak_rss_delta(_naive_run, _inputs)
    ours = peak_rss_delta(_chunked_run, _inputs)
    assert naive >= full_fp32
    assert ours <= full_fp32 / 2, (ours, naive)

"""Token log-probabilities and entropies from logits, without a full-vocabulary copy.

The naive way, ``log_softmax(logits.float()).gather(-1, labels)``, materialises a
fp32 tensor of shape (B, T, V) and autograd keeps it alive until backward. For a
49k vocabulary and 4 x 512 tokens that is 400 MB per forward. Here the selected
log-probability is taken from ``log_softmax`` row chunk by row chunk, in fp32 per
chunk only; the backward pass recomputes the softmax chunk by chunk from the
saved logits. Peak extra memory is one chunk of (rows x V) fp32 instead of the
whole (B, T, V). Each chunk goes through torch's fused softmax kernels: one pass
for the forward, one (plus an in-place scale) for the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows of (rows x V) processed at once. 1024 rows of a 50k vocabulary in fp32 is
#: 200 MB at most; smaller vocabularies use proportionally less.
DEFAULT_CHUNK_ROWS = 1024
#: Upper bound on the elements of one fp32 chunk (rows x V), about 64 MB.
MAX_CHUNK_ELEMENTS = 16 * 1024 * 1024


def _chunk_rows(n_rows: int, vocab: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    return max(1, min(DEFAULT_CHUNK_ROWS, MAX_CHUNK_ELEMENTS // max(vocab, 1), n_rows))


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision logits give fp32 log-probs: the ratio exp(new - old) in PPO
    # is far too coarse in bf16 (8 bits of mantissa).
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SelectedLogProbs(torch.autograd.Function):
    """log p(label) = log_softmax(logits)[label], chunked over rows.

    Forward:  logits (N, V), labels (N,) -> (N,) in fp32 (fp64 for fp64 input).
    Backward: d/dlogits = g * (onehot(label) - softmax(logits)), recomputed per chunk.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk_rows: int) -> Tensor:
        n = logits.shape[0]  # logits (N, V)
        out = torch.empty(n, dtype=_out_dtype(logits.dtype), device=logits.device)
        for start in range(0, n, chunk_rows):
            rows = logits[start : start + chunk_rows].to(out.dtype)  # (n_chunk, V)
            picked = torch.log_softmax(rows, dim=-1).gather(-1, labels[start : start + chunk_rows, None])  # (n_chunk, 1)
            out[start : start + chunk_rows] = picked.squeeze(-1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, labels = ctx.saved_tensors
        work_dtype = _out_dtype(logits.dtype)
        grad = None
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            end = start + ctx.chunk_rows
            g = grad_out[start:end, None].to(work_dtype)  # (n_chunk, 1)
            chunk = torch.softmax(logits[start:end].to(work_dtype), dim=-1)  # (n_chunk, V)
            chunk.mul_(-g)
            chunk.scatter_add_(-1, labels[start:end, None], g)  # g * (onehot - softmax)
            if start == 0 and end >= logits.shape[0] and chunk.dtype == logits.dtype:
                return chunk, None, None  # one chunk: it is the whole gradient
            if grad is None:
                grad = torch.empty_like(logits)
            grad[start:end] = chunk
        return grad, None, None


def selected_log_probs(logits: Tensor, labels: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``.

    logits: (..., V); labels: (...) integer ids. Returns (...) in fp32 (fp64 for
    fp64 logits). Equals ``log_softmax(logits.float(), -1).gather(-1, labels)``
    without materialising the (..., V) fp32 tensor; differentiable.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: expected logits (..., V), labels (...)")
    lead = labels.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1).long()  # (N,)
    chunk = _chunk_rows(flat_logits.shape[0], flat_logits.shape[1], chunk_rows)
    out = _SelectedLogProbs.apply(flat_logits, flat_labels, chunk)
    return out.reshape(lead)


def logprobs_from_logits(logits: Tensor, labels: Tensor, gather: bool = True) -> Tensor:
    """Per-token log-probabilities of ``labels`` (TRL's ``trl.core.logprobs_from_logits``).

    logits: (B, T, V); labels: (B, T). With ``gather=True`` returns (B, T), computed
    by `selected_log_probs` (no full-vocabulary fp32 log-softmax). With
    ``gather=False`` returns the full log-softmax (B, T, V), as TRL did.
    """
    if not gather:
        return torch.log_softmax(logits, dim=-1)
    return selected_log_probs(logits, labels)


def entropy_from_logits(logits: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last axis.

    logits: (..., V). Returns (...), fp32 (fp64 for fp64 input).
    H = -sum_v p_v log p_v, evaluated as its equal logsumexp(z) - sum_v p_v z_v from the unnormalised
    probabilities e = exp(z - max z): one exp pass and two reductions per row chunk, with no
    (rows, V) log-softmax or p log p written (the naive form writes three; tests compare the two).
    The fp32 softmax never exists for all rows at once. Differentiable (then the chunks are kept
    by autograd, as any exact entropy gradient needs them).
    """
    out_dtype = _out_dtype(logits.dtype)
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    chunk = _chunk_rows(flat.shape[0], flat.shape[1], chunk_rows)
    parts = []
    for start in range(0, flat.shape[0], chunk):
        z = flat[start : start + chunk].to(out_dtype)  # (n_chunk, V)
        top = z.detach().amax(dim=-1, keepdim=True)  # (n_chunk, 1): any shift gives the same H; this one keeps exp <= 1
        e = (z - top).exp_()  # (n_chunk, V) unnormalised probabilities
        total = e.sum(dim=-1)  # (n_chunk,)
        # logsumexp(z) - E_p[z], with logsumexp(z) = top + log(total) and E_p[z] = (e . z) / total
        parts.append(top.squeeze(-1) + total.log() - torch.linalg.vecdot(e, z) / total)
    if not parts:
        return torch.zeros(lead, dtype=out_dtype, device=logits.device)
    return torch.cat(parts).reshape(lead)


def logprobs_and_entropy(logits: Tensor, labels: Tensor, chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """`selected_log_probs` and a detached `entropy_from_logits` in one call.

    logits: (..., V); labels: (...). Returns log-probs (...) with gradient and
    entropy (...) without (PPO reports entropy but does not optimise it).
    """
    logp = selected_log_probs(logits, labels, chunk_rows)
    with torch.no_grad():
        ent = entropy_from_logits(logits.detach(), chunk_rows)
    return logp, ent

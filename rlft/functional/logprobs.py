"""Token log-probabilities and entropies from logits, without a full-vocabulary copy.

The naive way, ``log_softmax(logits.float()).gather(-1, labels)``, materialises a
fp32 tensor of shape (B, T, V) and autograd keeps it alive until backward. For a
49k vocabulary and 4 x 512 tokens that is 400 MB per forward. Here the selected
log-probability is computed as ``logit[label] - logsumexp(logits)``, row chunk by
row chunk, in fp32 per chunk only; the backward pass recomputes the softmax chunk
by chunk from the saved logits and the (B, T) log-normaliser. Peak extra memory
is one chunk of (rows x V) fp32 instead of the whole (B, T, V).
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
    """log p(label) = logits[label] - logsumexp(logits), chunked over rows.

    Forward:  logits (N, V), labels (N,) -> (N,) in fp32 (fp64 for fp64 input).
    Backward: d/dlogits = g * (onehot(label) - softmax(logits)), recomputed per chunk.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk_rows: int) -> Tensor:
        n, vocab = logits.shape
        out_dtype = _out_dtype(logits.dtype)
        lse = torch.empty(n, dtype=out_dtype, device=logits.device)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(out_dtype)  # (N,)
        for start in range(0, n, chunk_rows):
            rows = logits[start : start + chunk_rows].to(out_dtype)  # (n_chunk, V)
            lse[start : start + chunk_rows] = torch.logsumexp(rows, dim=-1)
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_rows = chunk_rows
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            end = start + ctx.chunk_rows
            probs = torch.exp(logits[start:end].to(lse.dtype) - lse[start:end, None])  # (n_chunk, V)
            g = grad_out[start:end, None].to(lse.dtype)
            chunk = -probs * g
            chunk.scatter_add_(-1, labels[start:end, None], g)
            grad[start:end] = chunk.to(grad.dtype)
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
    H = logsumexp(z) - sum_v softmax(z)_v z_v, evaluated per row chunk so that the
    fp32 softmax never exists for all rows at once. Differentiable (then the chunks
    are kept by autograd, as any exact entropy gradient needs them).
    """
    out_dtype = _out_dtype(logits.dtype)
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    chunk = _chunk_rows(flat.shape[0], flat.shape[1], chunk_rows)
    parts = []
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start : start + chunk].to(out_dtype)  # (n_chunk, V)
        lse = torch.logsumexp(rows, dim=-1, keepdim=True)
        probs = torch.exp(rows - lse)
        parts.append(lse.squeeze(-1) - (probs * rows).sum(-1))
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

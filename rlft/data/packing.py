"""Padding-free batches: re-lay the sequences of a padded batch into fewer, fuller rows.

A padded batch of n sequences costs n x L positions through every layer, however short most
sequences are. `pack_padded` places the sequences end to end into K <= n rows of the same
width L (first-fit decreasing), with ``position_ids`` restarting at 0 at each sequence and no
attention mask. transformers 5 models that build their causal mask from position ids
(``masking_utils.find_packed_sequence_indices``) then keep each sequence from attending to
the others, so every real token sees exactly the context it saw in the padded batch, and
the padding never goes through the model (Krell et al. 2021, "Efficient sequence packing
without cross-contamination"). `packed_attention_is_exact` checks that property on the actual
model before a trainer relies on it.

Notation: ``n`` sequences, ``L`` padded width, ``K`` packed rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Marks packed positions that hold no token of any sequence (the tail of a row).
NO_SEQUENCE = -1


@dataclass
class PackedRows:
    """n sequences laid end to end into K rows of width L.

    input_ids, position_ids: (K, L); position ids restart at 0 per sequence (and on the tail).
    seq: (K, L) index of the source sequence at each position, `NO_SEQUENCE` on the tail.
    pos: (K, L) index of the token inside its source row of the padded batch, 0 on the tail.
    starts: (K, L) True on the first token of every sequence.
    """

    input_ids: Tensor
    position_ids: Tensor
    seq: Tensor
    pos: Tensor
    starts: Tensor

    @property
    def kept(self) -> Tensor:
        """(K, L) True where a real token sits."""
        return self.seq != NO_SEQUENCE

    def gather(self, padded: Tensor, fill) -> Tensor:
        """Move a per-token tensor of the padded layout (n, L, ...) into the packed layout (K, L, ...)."""
        out = padded[self.seq.clamp(min=0), self.pos]  # (K, L, ...)
        mask = self.kept.reshape(self.kept.shape + (1,) * (padded.dim() - 2))
        return torch.where(mask, out, torch.as_tensor(fill, dtype=out.dtype, device=out.device))


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices whose lengths sum to at most ``capacity``, longest sequences first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_padded(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int) -> PackedRows | None:
    """Pack the real tokens of a padded batch (either padding side) into as few rows of width L as fit.

    input_ids, attention_mask: (n, L); each row's ones must be contiguous. Returns None when
    packing would not remove a row (nothing to gain) or a row's mask is not contiguous.
    """
    n, width = input_ids.shape
    mask = attention_mask.bool()
    lengths = mask.sum(1)  # (n,)
    first = torch.where(lengths > 0, mask.int().argmax(1), torch.zeros_like(lengths))  # (n,) first real position
    cols = torch.arange(width, device=mask.device)
    contiguous = (mask == ((cols >= first[:, None]) & (cols < (first + lengths)[:, None]))).all()
    if not bool(contiguous) or n < 2:
        return None
    bins = first_fit_decreasing(lengths.tolist(), width)
    if len(bins) >= n:
        return None
    k = len(bins)
    seq = torch.full((k, width), NO_SEQUENCE, dtype=torch.long)
    pos = torch.zeros((k, width), dtype=torch.long)
    position_ids = torch.zeros((k, width), dtype=torch.long)
    starts = torch.zeros((k, width), dtype=torch.bool)
    first_l, lengths_l = first.tolist(), lengths.tolist()
    for row, members in enumerate(bins):
        at = 0
        for i in members:
            m = lengths_l[i]
            seq[row, at : at + m] = i
            pos[row, at : at + m] = torch.arange(first_l[i], first_l[i] + m)
            position_ids[row, at : at + m] = torch.arange(m)
            starts[row, at] = m > 0
            at += m
        position_ids[row, at:] = torch.arange(width - at)  # the tail: one more "sequence", never read
    device = input_ids.device
    packed = PackedRows(None, position_ids.to(device), seq.to(device), pos.to(device), starts.to(device))
    packed.input_ids = packed.gather(input_ids, pad_token_id)
    return packed


def last_non_pad_positions(packed: PackedRows, n: int, pad_token_id: int) -> Tensor:
    """For each of the n sequences, the flat index (into K * L) of its rightmost token that is not ``pad_token_id``.

    The position a sequence-classification head reads in transformers (``last_non_pad_token``:
    the rightmost non-pad token of the row, which also skips an EOS used as pad). A sequence
    made only of pad tokens gets its first token, as the padded model's ``argmax`` of zeros
    gives a right-padded row's first position. Returns (n,) long.
    """
    flat = torch.arange(packed.seq.numel(), device=packed.seq.device).reshape(packed.seq.shape)  # (K, L)
    owner = packed.seq.clamp(min=0).reshape(-1)  # (K*L,)
    candidate = torch.where(packed.kept & (packed.input_ids != pad_token_id), flat, -1).reshape(-1)
    last = torch.full((n,), -1, dtype=torch.long, device=flat.device).scatter_reduce(0, owner, candidate, "amax")
    first = torch.full((n,), packed.seq.numel(), dtype=torch.long, device=flat.device).scatter_reduce(
        0, owner, torch.where(packed.kept, flat, packed.seq.numel()).reshape(-1), "amin"
    )
    return torch.where(last >= 0, last, first)


@torch.no_grad()
def packed_attention_is_exact(model, vocab_size: int | None = None, atol: float = 1e-4) -> bool:
    """True when ``model`` keeps packed sequences apart given only ``position_ids``.

    Runs two short sequences once separately and once packed into one row (no attention
    mask) and compares the second sequence's logits. Models whose attention ignores
    position ids (older or custom code) attend across the boundary and fail this check.
    The model's train/eval mode and the global random state are left as they were.
    """
    try:
        param = next(model.parameters())
    except (StopIteration, AttributeError):
        return False
    vocab = vocab_size or getattr(getattr(model, "config", None), "vocab_size", None) or 2
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(1, max(vocab, 2), (1, 5), generator=gen).to(param.device)
    b = torch.randint(1, max(vocab, 2), (1, 3), generator=gen).to(param.device)
    was_training = model.training
    model.eval()
    try:
        alone = _logits(model(input_ids=b, position_ids=torch.arange(3, device=b.device)[None], use_cache=False))
        both = _logits(model(
            input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=b.device),
            use_cache=False,
        ))
    except (TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    if alone is None or both is None:
        return False
    return bool(torch.allclose(alone[0].float(), both[0, 5:].float(), atol=atol, rtol=1e-3))


def _logits(out) -> Tensor | None:
    logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", None)
    return logits if isinstance(logits, Tensor) and logits.dim() == 3 else None

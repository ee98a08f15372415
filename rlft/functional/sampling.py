"""Drawing one token per row from a categorical distribution with one random number per row.

``torch.multinomial(probs, 1)`` on CPU draws an exponential random number for *every*
vocabulary entry (an exponential race: argmax of probs / E), which is V random numbers per row:
about 2 ms for 16 rows of an 8k vocabulary, a third of a tiny model's decoding step, and 24 ms
per step for 32 rows of a 49k vocabulary. Inverse-CDF sampling draws one uniform number per row
and finds where it falls in the cumulative distribution: the same distribution, V times fewer
random numbers. (On GPU both are cheap; the saving matters on CPU.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of ``probs`` (B, V), drawn with probability probs[b, i] / sum_i probs[b, i].

    Rows need not be normalised; entries must be finite and >= 0 with a positive sum. A zero
    entry is never drawn. The cumulative sum is taken in float64, so the drawn distribution
    matches ``probs`` to float64 rounding. Returns (B,) int64.
    """
    cdf = probs.to(torch.float64).cumsum(-1)  # (B, V), nondecreasing
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)  # [0, 1)
    # u * total can round up to total itself; the largest double below total still lands on the
    # first entry where the cdf reaches total, which has positive mass (the cdf rose there).
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # (B, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)  # first i with cdf_i > target


__all__ = ["sample_categorical"]

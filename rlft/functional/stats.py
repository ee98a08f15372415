"""Masked statistics used by every trainer: one masked mean, one variance, one whitening.

Conventions (see each function): a mask is 1 for kept elements and 0 for ignored
ones, broadcastable to ``values``. Masked-out elements never contribute, even
when they hold NaN or inf (they are selected out, not multiplied by zero).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Added to the variance before the reciprocal square root in whitening, so that a
#: constant input whitens to zeros instead of NaN. TRL 0.7 uses the same value.
WHITEN_EPS = 1e-8


def _kept(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    mask = mask.to(values.dtype) if values.is_floating_point() else mask.float()
    mask = torch.broadcast_to(mask, values.shape)
    # where() rather than values * mask: 0 * nan is nan, and masked-out padding may hold anything.
    return torch.where(mask != 0, values, torch.zeros((), dtype=values.dtype, device=values.device)) * mask, mask


def masked_sum(values: Tensor, mask: Tensor, axis: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is non-zero (weighted by the mask). Shapes broadcast."""
    kept, _ = _kept(values, mask)
    return kept.sum() if axis is None else kept.sum(dim=axis)


def masked_mean(values: Tensor, mask: Tensor, axis: int | None = None) -> Tensor:
    """Mean of ``values`` over the elements ``mask`` keeps.

    values: any shape; mask: broadcastable to it. With ``axis`` the mean is taken
    along that axis only. Defined edge case: a slice with no kept element has mean
    0 (not NaN), so that an empty row adds nothing to a loss instead of poisoning it.
    """
    kept, mask = _kept(values, mask)
    if axis is None:
        total, count = kept.sum(), mask.sum()
    else:
        total, count = kept.sum(dim=axis), mask.sum(dim=axis)
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(count.dtype).tiny), torch.zeros_like(total))


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the kept elements of ``values`` (a scalar).

    ``unbiased=True`` applies Bessel's correction n / (n - 1), as TRL 0.7 does.
    Defined edge cases: an all-zero mask raises ValueError (there is nothing to
    whiten; usually ``mini_batch_size`` is too small or every response is masked);
    a single kept element has variance 0.
    """
    count = torch.broadcast_to(mask, values.shape).to(torch.float32).sum()
    if count == 0:
        raise ValueError(
            "masked_var got a mask with no kept element. This happens when every response token is masked "
            "(empty responses, or response_masks of zeros) or the mini-batch is too small: check the responses "
            "and masks passed to step(), or increase mini_batch_size / gradient_accumulation_steps."
        )
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return bessel_correction(variance, count) if unbiased else variance


def bessel_correction(variance: Tensor, count: Tensor | float) -> Tensor:
    """The sample variance n / (n - 1) * variance from the population ``variance`` of n = ``count`` elements.

    variance: (); count: () or a number. Defined edge case: n <= 1 gives 0 (a single element does
    not vary), not a division by zero.
    """
    if count <= 1:
        return torch.zeros_like(variance)
    count = torch.as_tensor(count, dtype=torch.float32)
    return variance * (count / (count - 1)).to(variance.dtype)


def merge_moments(
    mean: float, var: float, count: float, batch_mean: float, batch_var: float, batch_count: float
) -> tuple[float, float, float]:
    """Mean, population variance and count of two samples together, from each one's moments.

    The pairwise update of Chan, Golub & LeVeque (1979, "Updating formulae and a pairwise
    algorithm for computing sample variances", eq. 2.1): the sums of squared deviations add,
    plus delta^2 * n_a * n_b / n for the shift between the two means. Equals the moments of
    the concatenated samples without keeping them. All arguments and results are numbers.
    """
    delta = batch_mean - mean
    total = count + batch_count
    m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total  # (eq. 2.1b)
    return mean + delta * batch_count / total, m2 / total, total


def whiten_with_moments(values: Tensor, mean: Tensor, var: Tensor, shift_mean: bool = True) -> Tensor:
    """(values - mean) / sqrt(var + eps): the whitening itself, given the moments to use.

    values: any shape; mean, var: () (or broadcastable). With ``shift_mean=False`` the mean is
    added back (only the scale is normalised). `masked_whiten` takes the moments of the kept
    elements; the cross-process whitening of the trainers takes them over every process.
    """
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(values - mean) / sqrt(var + eps) over the kept elements; same shape as ``values``.

    With ``shift_mean=False`` the mean is added back (only the scale is normalised),
    which is how PPO whitens rewards without changing their sign on average.
    """
    return whiten_with_moments(values, masked_mean(values, mask), masked_var(values, mask), shift_mean=shift_mean)


def whiten(values: Tensor, shift_mean: bool = True) -> Tensor:
    """`masked_whiten` with every element kept (unbiased variance)."""
    return masked_whiten(values, torch.ones_like(values), shift_mean=shift_mean)


def clip_by_value(x: Tensor, tensor_min: Tensor | float, tensor_max: Tensor | float) -> Tensor:
    """Element-wise clamp of ``x`` into [tensor_min, tensor_max]; the bounds may be tensors."""
    return torch.max(torch.min(x, torch.as_tensor(tensor_max, dtype=x.dtype, device=x.device)),
                     torch.as_tensor(tensor_min, dtype=x.dtype, device=x.device))

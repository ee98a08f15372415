import pytest
import torch

from rlft.core import clip_by_value, masked_mean, masked_var, masked_whiten, whiten


def test_masked_mean_hand_values():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # kept: 1, 2, 3, 5, 7 -> 18 / 5
    assert masked_mean(values, mask).item() == pytest.approx(3.6)
    torch.testing.assert_close(masked_mean(values, mask, axis=1), torch.tensor([1.5, 5.0]))


def test_masked_mean_matches_unmasked_on_kept_slice():
    values = torch.randn(4, 9)
    mask = torch.zeros(4, 9)
    mask[:, 2:6] = 1
    torch.testing.assert_close(masked_mean(values, mask), values[:, 2:6].mean())
    torch.testing.assert_close(masked_var(values, mask), values[:, 2:6].var(unbiased=True))
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), values[:, 2:6].var(unbiased=False))


def test_masked_out_nan_does_not_leak():
    values = torch.tensor([1.0, float("nan"), 3.0])
    mask = torch.tensor([1, 0, 1])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert torch.isfinite(masked_whiten(values, mask)[[0, 2]]).all()


def test_empty_row_has_mean_zero():
    values = torch.tensor([[1.0, 2.0], [5.0, 6.0]])
    mask = torch.tensor([[0, 0], [1, 1]])
    torch.testing.assert_close(masked_mean(values, mask, axis=1), torch.tensor([0.0, 5.5]))
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_all_zero_mask_raises_clearly():
    with pytest.raises(ValueError, match="no kept element"):
        masked_var(torch.randn(3, 4), torch.zeros(3, 4))


def test_masked_var_single_element_is_zero():
    values = torch.tensor([4.0, 9.0])
    assert masked_var(values, torch.tensor([0, 1])).item() == 0.0


def test_whiten_hand_values():
    values = torch.tensor([1.0, 2.0, 3.0])  # mean 2, unbiased var 1
    torch.testing.assert_close(whiten(values), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten(values, shift_mean=False), torch.tensor([1.0, 2.0, 3.0]), atol=1e-6, rtol=0)


def test_masked_whiten_matches_whiten_on_kept():
    values = torch.randn(3, 8)
    mask = torch.ones(3, 8)
    mask[:, 6:] = 0
    out = masked_whiten(values, mask)
    torch.testing.assert_close(out[:, :6], whiten(values[:, :6]), atol=1e-5, rtol=1e-5)


def test_bf16_input():
    values = torch.randn(2, 16).bfloat16()
    mask = torch.ones(2, 16)
    assert masked_mean(values, mask).dtype == torch.bfloat16
    torch.testing.assert_close(masked_mean(values, mask).float(), values.float().mean(), atol=1e-2, rtol=0)
    assert torch.isfinite(masked_whiten(values, mask).float()).all()


def test_clip_by_value():
    x = torch.tensor([-3.0, 0.5, 4.0])
    torch.testing.assert_close(clip_by_value(x, -1.0, 1.0), torch.tensor([-1.0, 0.5, 1.0]))
    lo, hi = torch.tensor([-5.0, 1.0, 0.0]), torch.tensor([0.0, 2.0, 3.0])
    torch.testing.assert_close(clip_by_value(x, lo, hi), torch.tensor([-3.0, 1.0, 3.0]))

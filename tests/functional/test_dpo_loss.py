"""DPO loss variants and sequence log-probs against values worked out by hand."""

import math

import pytest
import torch

from rlft.functional import dpo as D

BETA = 0.5


def _logps():
    # pi_c, pi_r, ref_c, ref_r for two pairs:
    # pair 0: chosen log-ratio = -1 - (-2) = 1, rejected log-ratio = -3 - (-1) = -2 -> h = 3
    # pair 1: chosen log-ratio = -2 - (-2) = 0, rejected log-ratio = -1 - (-2) = 1 -> h = -1
    pi_c = torch.tensor([-1.0, -2.0])
    pi_r = torch.tensor([-3.0, -1.0])
    ref_c = torch.tensor([-2.0, -2.0])
    ref_r = torch.tensor([-1.0, -2.0])
    return pi_c, pi_r, ref_c, ref_r


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_by_hand():
    losses, cr, rr = D.dpo_loss(*_logps(), beta=BETA, loss_type="sigmoid")
    # -log sigma(0.5 * 3) = 0.2014, -log sigma(0.5 * -1) = 0.9741
    expected = [-_log_sigmoid(1.5), -_log_sigmoid(-0.5)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert losses.tolist() == pytest.approx([0.201413, 0.974077], abs=1e-5)
    # rewards = beta * (pi - ref)
    assert cr.tolist() == pytest.approx([0.5, 0.0])
    assert rr.tolist() == pytest.approx([-1.0, 0.5])


def test_conservative_dpo_label_smoothing():
    eps = 0.2
    losses, _, _ = D.dpo_loss(*_logps(), beta=BETA, loss_type="sigmoid", label_smoothing=eps)
    # (1 - eps) * -log sigma(beta h) + eps * -log sigma(-beta h)
    expected = [(1 - eps) * -_log_sigmoid(b) + eps * -_log_sigmoid(-b) for b in (1.5, -0.5)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    # eps = 0.5 makes the loss symmetric in h: both pairs equal to -0.5 log(sigma(x) sigma(-x))
    half, _, _ = D.dpo_loss(*_logps(), beta=BETA, loss_type="sigmoid", label_smoothing=0.5)
    sym = D.sigmoid(-torch.tensor([3.0, -1.0]), BETA, 0.5)
    assert half.tolist() == pytest.approx(sym.tolist(), abs=1e-6)


def test_hinge_by_hand():
    losses, _, _ = D.dpo_loss(*_logps(), beta=BETA, loss_type="hinge")
    # relu(1 - 0.5 * 3) = 0, relu(1 - 0.5 * -1) = 1.5
    assert losses.tolist() == pytest.approx([0.0, 1.5])


def test_ipo_by_hand():
    losses, _, _ = D.dpo_loss(*_logps(), beta=BETA, loss_type="ipo")
    # (h - 1/(2 * 0.5))**2 = (3 - 1)**2 = 4, (-1 - 1)**2 = 4
    assert losses.tolist() == pytest.approx([4.0, 4.0])
    losses, _, _ = D.dpo_loss(*_logps(), beta=0.25, loss_type="ipo")
    # 1/(2 * 0.25) = 2: (3 - 2)**2 = 1, (-1 - 2)**2 = 9
    assert losses.tolist() == pytest.approx([1.0, 9.0])


def test_kto_pair_by_hand():
    losses, _, _ = D.dpo_loss(*_logps(), beta=BETA, loss_type="kto_pair")
    # chosen log-ratios [1, 0] -> mean 0.5 = chosen KL; rejected [-2, 1] -> mean -0.5, clamped to 0
    # desirable: 1 - sigma(0.5 * ([1, 0] - 0)) ; undesirable: 1 - sigma(0.5 * (0.5 - [-2, 1]))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1 - sig(0.5), 1 - sig(0.0), 1 - sig(1.25), 1 - sig(-0.25)]
    assert losses.shape == (4,)
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def test_reference_free_ignores_reference():
    pi_c, pi_r, ref_c, ref_r = _logps()
    losses, _, _ = D.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=BETA, reference_free=True)
    # h = pi_c - pi_r = [2, -1]
    assert losses.tolist() == pytest.approx([-_log_sigmoid(1.0), -_log_sigmoid(-0.5)], abs=1e-6)


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo, kto_pair"):
        D.dpo_loss(*_logps(), beta=BETA, loss_type="kto")


def test_rewards_are_detached():
    pi_c, pi_r, ref_c, ref_r = _logps()
    pi_c.requires_grad_(True)
    losses, cr, _ = D.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=BETA)
    assert losses.requires_grad and not cr.requires_grad


def _naive_sequence_logps(logits, labels, average, pad, enc_dec):
    if not enc_dec:
        logits, labels = logits[:, :-1], labels[:, 1:]
    out = []
    for b in range(labels.shape[0]):
        total, count = 0.0, 0
        for t in range(labels.shape[1]):
            if labels[b, t] != pad:
                total += torch.log_softmax(logits[b, t].double(), -1)[labels[b, t]].item()
                count += 1
        out.append(total / max(count, 1) if average else total)
    return out


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("enc_dec", [False, True])
def test_sequence_log_probs_matches_loop(average, enc_dec):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :2] = -100  # prompt
    labels[1, 4] = -100  # padding
    labels[2, :] = -100  # nothing labelled: 0, not NaN
    got = D.sequence_log_probs(logits, labels, average=average, is_encoder_decoder=enc_dec)
    assert got.tolist() == pytest.approx(_naive_sequence_logps(logits, labels, average, -100, enc_dec), abs=1e-5)
    assert got[2].item() == 0.0


def test_sequence_log_probs_by_hand_and_custom_pad():
    # Uniform logits over V = 4: every labelled token has log-prob log(1/4).
    # Pad id 7 (outside the vocabulary: it must never be gathered). Decoder-only
    # shift keeps labels[1:] = [7, 1, 2]: two labelled tokens.
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[7, 7, 1, 2]])
    total = D.sequence_log_probs(logits, labels, label_pad_token_id=7)
    assert total.item() == pytest.approx(2 * math.log(0.25))
    avg = D.sequence_log_probs(logits, labels, average=True, label_pad_token_id=7)
    assert avg.item() == pytest.approx(math.log(0.25))


def test_sequence_log_probs_gradient_matches_naive():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (2, 4), generator=g)
    labels[0, 1] = -100
    D.sequence_log_probs(logits, labels).sum().backward()
    fast = logits.grad.clone()
    logits.grad = None
    mask = labels[:, 1:] != -100
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (naive * mask).sum().backward()
    assert torch.allclose(fast, logits.grad, atol=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        D.sequence_log_probs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))

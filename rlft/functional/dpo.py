"""Direct preference optimisation losses and the sequence log-probabilities they consume.

Notation (shared by every function here):

    B       number of preference pairs in the batch
    T       label positions per sequence (prompt + response, padded)
    V       vocabulary size
    pi_c    log pi_theta(y_chosen | x), summed (or averaged) over response tokens, shape (B,)
    pi_r    the same for the rejected response, (B,)
    ref_c   log pi_ref(y_chosen | x), (B,)
    ref_r   log pi_ref(y_rejected | x), (B,)
    h       (pi_c - pi_r) - (ref_c - ref_r), the difference of implicit log-ratios, (B,)

The implicit reward of a response is ``beta * (pi - ref)`` (Rafailov et al. 2023,
eq. 5); every loss below is a function of ``h`` except ``kto_pair``, which needs
the two log-ratios separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .logprobs import selected_log_probs

#: Label value of positions that carry no loss (prompt and padding); PyTorch's
#: cross-entropy ignore index, which TRL and transformers use too.
IGNORE_INDEX = -100

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "kto_pair")


def sigmoid(logits: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """The DPO loss (Rafailov et al. 2023, eq. 7), optionally conservative (cDPO).

    logits: (B,) the log-ratio difference ``h``. Returns per-pair losses (B,).

    loss = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h).
    With ``label_smoothing`` eps > 0 the preference label is assumed flipped with
    probability eps (Mitchell 2023, "A note on DPO with noisy preferences"); eps = 0
    is plain DPO.
    """
    # Conservative DPO: expected binary cross-entropy under label noise eps.
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def hinge(logits: Tensor, beta: float) -> Tensor:
    """The SLiC hinge loss on the log-ratio difference (Zhao et al. 2023, eq. 1 with delta = 1/beta).

    logits: (B,). Returns max(0, 1 - beta * h): (B,).
    """
    return torch.relu(1 - beta * logits)


def ipo(logits: Tensor, beta: float) -> Tensor:
    """The IPO loss (Azar et al. 2023, eq. 17), with beta playing the paper's tau.

    logits: (B,), built from *length-averaged* log-probabilities (the paper's
    estimator; the trainer averages for ``loss_type="ipo"``). Returns
    (h - 1 / (2 * tau))**2: (B,).
    """
    # Regress the log-ratio gap onto 1/(2 tau) instead of pushing it to infinity.
    return (logits - 1 / (2 * beta)) ** 2


def kto_pair(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """The paired KTO loss of the HALOs report (Ethayarajh et al. 2023, sec. 3.2).

    chosen_logratios: (B,) pi_c - ref_c; rejected_logratios: (B,) pi_r - ref_r.
    Returns (2B,): the B desirable-example losses, then the B undesirable ones.

    The reference point z_ref is a batch estimate of KL(pi_theta || pi_ref),
    clamped at 0: the mean log-ratio of the *other* half of the pairs. It is not
    detached, as in TRL 0.7.10.
    """
    chosen_kl = chosen_logratios.mean().clamp(min=0)  # scalar z_ref for the undesirable half
    rejected_kl = rejected_logratios.mean().clamp(min=0)  # scalar z_ref for the desirable half
    desirable = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl))  # (B,)
    undesirable = 1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))  # (B,)
    return torch.cat((desirable, undesirable), dim=0)  # (2B,)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference losses and the implicit rewards of both responses.

    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
    reference_rejected_logps: (B,) sequence log-probabilities.
    beta: the KL-strength (tau for IPO). loss_type: one of `LOSS_TYPES`.
    label_smoothing: cDPO's eps, only for ``"sigmoid"``.
    reference_free: treat the reference as uniform (ref log-ratio 0).

    Returns (losses, chosen_rewards, rejected_rewards): losses is (B,), or (2B,)
    for ``"kto_pair"``; the rewards are (B,), detached, ``beta * (pi - ref)``.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - reference_rejected_logps  # (B,)
    pi_logratios = policy_chosen_logps - policy_rejected_logps  # (B,)
    ref_logratios = torch.zeros_like(pi_logratios) if reference_free else reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios  # (B,) = h

    if loss_type == "sigmoid":
        losses = sigmoid(logits, beta, label_smoothing)
    elif loss_type == "hinge":
        losses = hinge(logits, beta)
    elif loss_type == "ipo":
        losses = ipo(logits, beta)
    elif loss_type == "kto_pair":
        losses = kto_pair(chosen_logratios, rejected_logratios, beta)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}.")

    # Implicit rewards r = beta * log(pi / pi_ref) (Rafailov et al. 2023, eq. 5).
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def sequence_log_probs(
    logits: Tensor,
    labels: Tensor,
    *,
    average: bool = False,
    label_pad_token_id: int = IGNORE_INDEX,
    is_encoder_decoder: bool = False,
) -> Tensor:
    """Log-probability of each labelled sequence, summed or averaged over its labelled tokens.

    logits: (B, T, V); labels: (B, T) with ``label_pad_token_id`` where no loss is
    taken (prompt and padding). Returns (B,) in fp32.

    For a decoder-only model the logit at position t predicts the token at t + 1,
    so logits and labels are shifted against each other; an encoder-decoder's
    decoder logits are already aligned with its labels. Equals
    ``(log_softmax(logits.float()).gather(-1, labels) * mask).sum(-1)`` (divided by
    ``mask.sum(-1)`` when ``average``) without the fp32 (B, T, V) copy.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: expected (B, T, V) and (B, T).")
    if not is_encoder_decoder:
        labels = labels[:, 1:]  # (B, T-1): the token each position predicts
        logits = logits[:, :-1, :]  # (B, T-1, V)
    mask = labels != label_pad_token_id  # (B, T')
    safe_labels = labels.masked_fill(~mask, 0)  # any valid id; masked out below
    token_logps = selected_log_probs(logits, safe_labels) * mask  # (B, T')
    total = token_logps.sum(-1)  # (B,)
    if average:
        # A sequence with no labelled token averages to 0 rather than NaN.
        return total / mask.sum(-1).clamp(min=1)
    return total


def mean_label_logit(
    logits: Tensor, labels: Tensor, *, label_pad_token_id: int = IGNORE_INDEX, is_encoder_decoder: bool = False
) -> Tensor:
    """Mean logit over the vocabulary and over the labelled (response) positions; a detached fp32 scalar.

    logits: (B, T, V); labels: (B, T), aligned as in `sequence_log_probs` (decoder-only:
    position t is the one that scores label t + 1). The ``logits/chosen`` / ``logits/rejected``
    diagnostic of DPO. TRL 0.7.10 averaged over every position, prompt and padding included,
    which makes the number depend on how much padding a batch happened to have; later TRL
    (and rlft) average over the response tokens only. NaN when no position is labelled.
    """
    if not is_encoder_decoder:
        labels = labels[:, 1:]  # (B, T-1)
        logits = logits[:, :-1, :]  # (B, T-1, V)
    mask = labels != label_pad_token_id  # (B, T')
    return logits.detach()[mask].float().mean()


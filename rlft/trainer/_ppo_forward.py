"""The model side of a PPO step: ragged token lists to padded inputs, and one forward pass that keeps
only the logits (and values) at the response positions. Shapes as in `_ppo_types`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._helpers import pad_with_mask
from ._ppo_helpers import logits_to_keep
from ._ppo_types import PaddedBatch


def pad_batch(queries: list[Tensor], responses: list[Tensor], response_masks: Optional[list[Tensor]], *, pad_id: int, is_encoder_decoder: bool) -> PaddedBatch:
    """Pad ragged queries and responses into model inputs (see `PaddedBatch`)."""
    pad = pad_id
    if is_encoder_decoder:
        enc, enc_mask = pad_with_mask(queries, pad, "right")
        dec, dec_mask = pad_with_mask(responses, pad, "right")
        mask = dec_mask[:, 1:].clone()
        if response_masks is not None:
            mask *= pad_with_mask(response_masks, 0, "right")[0][:, 1:].to(mask.dtype)
        return PaddedBatch(enc, enc_mask, dec[:, 1:], mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    q_ids, q_mask = pad_with_mask(queries, pad, "left")
    r_ids, r_mask = pad_with_mask(responses, pad, "right")
    input_ids = torch.cat([q_ids, r_ids], dim=1)  # (n, Q + R)
    attention_mask = torch.cat([q_mask, r_mask], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding must not shift positions
    mask = r_mask.clone()
    if response_masks is not None:
        mask *= pad_with_mask(response_masks, 0, "right")[0].to(mask.dtype)
    return PaddedBatch(input_ids, attention_mask, r_ids, mask, position_ids=position_ids)

def forward_actions(model, batch: PaddedBatch, *, accepted: set[str], is_encoder_decoder: bool, return_values: bool = True):
    """One forward pass; returns (logits (n, T, V), values (n, T) or None) at the action positions."""
    T = batch.T
    if is_encoder_decoder:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
            decoder_attention_mask=batch.decoder_attention_mask,
        )
        logits = (out[0] if isinstance(out, tuple) else out.logits)[:, :-1]  # position j predicts token j+1
        values = out[2][:, :-1] if return_values and isinstance(out, tuple) else None
        return logits, values
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if "position_ids" in accepted:
        kwargs["position_ids"] = batch.position_ids
    keep = logits_to_keep(model, accepted, batch.input_ids.shape[1], T, batch.input_ids.device)
    if keep is not None:
        kwargs["logits_to_keep"] = keep  # only the response positions reach the LM head
    out = model(**kwargs)
    logits = out[0] if isinstance(out, tuple) else out.logits
    if not isinstance(keep, Tensor):
        logits = logits[:, -(T + 1) : -1]  # (n, T, V)
    values = out[2][:, -(T + 1) : -1] if return_values and isinstance(out, tuple) else None
    return logits, values

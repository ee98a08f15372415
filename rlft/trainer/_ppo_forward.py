"""The model side of a PPO step: ragged token lists to padded inputs, and one forward pass that keeps
only the logits (and values) at the response positions. Shapes as in `_ppo_types`."""

from __future__ import annotations

import contextlib
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


class BehaviourRecorder:
    """Forward hooks that record, while a causal ``generate`` call runs, the log-probability of each
    drawn token under the raw logits it was drawn from and (value-head models) the value of the state
    before it: what the rollout forward would recompute, without a second forward.

    Hooks on the transformers model ``base``: a forward pre-hook reads each call's input ids (the
    previous step's token, after the prefill); a pre-hook on its LM head keeps the last position's
    hidden state (the value head's input, the model's last hidden state; the head runs once over all
    steps in `result`); a forward hook keeps the last position's raw logits (``outputs.logits[:, -1]``,
    before any logits processor or warper: the logits TRL computes log-probs from). A step's (B, V)
    logits are reduced to the drawn token's log-prob as soon as that token arrives as the next call's
    input, so at most one step's logits are held. `result` checks the recorded tokens against the
    returned sequences and gives None on any mismatch (beam search, a decode step that bypassed the
    hooks, ...).
    """

    def __init__(self, base, value_head: Optional[torch.nn.Module] = None):
        self.base = base
        self.value_head = value_head
        self._handles: list = []
        self._reset(0)

    def _reset(self, width: int) -> None:
        self._width = width  # prompt columns of the batch being generated
        self._seen = 0  # input columns the model has consumed so far
        self._decoding = False  # whether the running forward call draws a token
        self._broken = False  # a call this recorder cannot follow (inputs_embeds)
        self._pending: Optional[Tensor] = None  # (B, V) fp32 raw logits of the last step, its token not yet known
        self.logprobs: list[Tensor] = []  # per decode step, (B,)
        self.tokens: list[Tensor] = []  # per resolved step, (B,): the token of that log-prob
        self.hidden: list[Tensor] = []  # per decode step, (B, d): the value head's input

    @contextlib.contextmanager
    def recording(self, width: int):
        """Record one ``generate`` call whose (padded) prompts are ``width`` columns wide."""
        self._reset(width)
        self._handles = [self.base.register_forward_pre_hook(self._on_input, with_kwargs=True),
                         self.base.register_forward_hook(self._on_output)]
        if self.value_head is not None:
            self._handles.append(self.base.get_output_embeddings().register_forward_pre_hook(self._on_head_input))
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def _on_input(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            self._broken = True
            return
        if self._pending is not None:  # the previous step's token is this call's last input column
            self._resolve(ids[:, -1])
        self._seen += ids.shape[1]
        self._decoding = self._seen >= self._width  # the prefill's last chunk draws the first token

    def _on_head_input(self, module, args):
        if self._decoding:
            self.hidden.append(args[0][:, -1])  # (B, d): the state before the token this step draws

    def _on_output(self, module, args, output):
        if self._decoding:
            logits = output.logits if hasattr(output, "logits") else output[0]  # (B, S, V)
            last = logits[:, -1]  # (B, V)
            # a copy when it is a view of a wider (B, S, V) prefill output, which would otherwise stay alive
            self._pending = last.to(dtype=torch.float32, copy=logits.shape[1] > 1)

    def _resolve(self, token: Tensor) -> None:
        logits = self._pending  # (B, V)
        # log_softmax(logits)[token] as two reductions: no (B, V) output written per step
        self.logprobs.append(logits.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))  # (B,)
        self.tokens.append(token)
        self._pending = None

    def result(self, sequences: Tensor) -> Optional[tuple[Tensor, Optional[Tensor]]]:
        """(log-probs (B, n), values (B, n) or None) of the n = ``sequences.shape[1] - width`` generated
        columns of ``sequences`` (B, width + n), or None when the record does not match them."""
        n = sequences.shape[1] - self._width
        if self._pending is not None and len(self.logprobs) < n:
            self._resolve(sequences[:, self._width + len(self.logprobs)])
        if self._broken or len(self.logprobs) < n or (self.value_head is not None and len(self.hidden) < n):
            return None
        if n == 0:
            empty = sequences.new_zeros((sequences.shape[0], 0), dtype=torch.float32)
            return empty, (empty if self.value_head is not None else None)
        tokens = torch.stack(self.tokens[:n], dim=1)  # (B, n)
        if tokens.shape != (sequences.shape[0], n) or not torch.equal(tokens, sequences[:, self._width :]):
            return None
        values = self.value_head(torch.stack(self.hidden[:n], dim=1)).float() if self.value_head is not None else None  # (B, n)
        return torch.stack(self.logprobs[:n], dim=1), values

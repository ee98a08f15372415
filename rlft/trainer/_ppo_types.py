"""Typed containers that carry one PPO step through `PPOTrainer`.

Shapes: B samples in the step, n samples in a minibatch, T response tokens (the longest
response of the batch or minibatch; for encoder-decoders, minus the decoder-start token),
Q query tokens, R response tokens with padding, V vocabulary.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from ._helpers import pad


@dataclass(frozen=True)
class PaddedBatch:
    """Model inputs for n samples, built from ragged query/response lists.

    Causal models: ``input_ids``, ``attention_mask``, ``position_ids`` are (n, Q + R),
    queries left-padded to Q, responses right-padded to R; ``actions`` = responses (n, T=R).
    Encoder-decoders: ``input_ids``/``attention_mask`` hold the queries (n, Q),
    ``decoder_input_ids``/``decoder_attention_mask`` the responses (n, R), whose
    first token is the decoder start; ``actions`` = responses[:, 1:] (n, T=R-1).
    ``mask`` (n, T) is 1 on real response tokens the user did not mask out.
    """

    input_ids: Tensor
    attention_mask: Tensor
    actions: Tensor
    mask: Tensor
    position_ids: Optional[Tensor] = None
    decoder_input_ids: Optional[Tensor] = None
    decoder_attention_mask: Optional[Tensor] = None

    @property
    def T(self) -> int:
        return self.actions.shape[1]


@dataclass(frozen=True)
class StepInputs:
    """What `step` was given, validated and on the trainer's device.

    queries, responses: B 1-D long tensors; scores: (B,) float32; response_masks: B 1-D 0/1
    tensors or None.
    """

    queries: list[Tensor]
    responses: list[Tensor]
    scores: Tensor
    response_masks: Optional[list[Tensor]] = None
    action_offset: int = 0
    """Response tokens that are not actions: 1 for an encoder-decoder's decoder-start token."""

    def take(self, idx: list[int]) -> tuple[list[Tensor], list[Tensor], Optional[list[Tensor]]]:
        """Queries, responses and masks of the samples at ``idx``."""
        masks = [self.response_masks[i] for i in idx] if self.response_masks is not None else None
        return [self.queries[i] for i in idx], [self.responses[i] for i in idx], masks


@dataclass(frozen=True)
class Minibatch:
    """The samples of one PPO minibatch: inputs plus their slice of the rollout, each (n, T) with
    T this minibatch's longest response."""

    queries: list[Tensor]
    responses: list[Tensor]
    response_masks: Optional[list[Tensor]]
    old_logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    mask: Tensor
    advantages: Tensor
    returns: Tensor


@dataclass(frozen=True)
class Rollout:
    """Everything `step` computes before the PPO epochs, built once; (B, T) unless noted.

    logprobs / ref_logprobs: log-probabilities of the response tokens under the policy that
    sampled them and under the reference; values: the critic's values (zeros without a critic);
    mask: kept tokens; kls: per-token KL estimate (``kl_penalty``); scores (B,): the prepared
    scores (scaled / normalised / clipped); rewards / non_score_rewards: per-token rewards with
    and without the score; advantages and returns.
    """

    inputs: StepInputs
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    mask: Tensor
    kls: Tensor
    scores: Tensor
    rewards: Tensor
    non_score_rewards: Tensor
    advantages: Tensor
    returns: Tensor

    def minibatch(self, idx: list[int]) -> Minibatch:
        """The typed slice of samples ``idx``, cut to their longest response."""
        queries, responses, masks = self.inputs.take(idx)
        T = max(r.numel() for r in responses) - self.inputs.action_offset
        cut = lambda t: t[idx, :T]  # noqa: E731  (B, T_step) -> (n, T)
        return Minibatch(
            queries, responses, masks, cut(self.logprobs), cut(self.ref_logprobs), cut(self.values),
            cut(self.mask), cut(self.advantages), cut(self.returns),
        )


@dataclass
class MinibatchSignals:
    """Control signals of one minibatch update, set by `loss` and `train_minibatch`.

    skipped: the mean ratio exceeded ``ratio_threshold`` (zero loss); nonfinite: what held
    NaN/inf (the accumulation window's gradients were dropped) or None; seconds: host-side
    clock of the loss ("forward"), backward ("backward") and optimizer ("optimizer").
    """

    skipped: bool = False
    nonfinite: Optional[str] = None
    seconds: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0, "optimizer": 0.0})


@dataclass(frozen=True)
class EpochsResult:
    """What the PPO epochs of one step give back.

    stats: one dict per applied minibatch; skipped: minibatches zeroed by ``ratio_threshold``;
    nonfinite: where NaN/inf stopped the epochs (None when they ran to the end); seconds:
    forward / backward / optimizer clocks summed over the minibatches.
    """

    stats: list[dict]
    skipped: int
    nonfinite: Optional[str]
    seconds: dict[str, float]


class BehaviourCache:
    """The behaviour log-probs (and values) `PPOTrainer.generate` recorded, for `step` to use instead of
    recomputing them (``PPOConfig.rollout_logprobs="generation"``).

    Keyed by content: a sample's query and response token ids. Valid only while the policy's
    parameters are unchanged: ``version`` is a fingerprint of them (the sum of their in-place
    version counters, which every optimizer step and weight load increases); records of another
    version are dropped. At most ``capacity`` records are kept, oldest dropped first.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.version: Optional[int] = None
        self._records: OrderedDict = OrderedDict()  # (query ids, response ids) -> (logprobs (T_i,), values (T_i,) or None)

    @staticmethod
    def _key(query: Tensor, response: Tensor) -> tuple:
        return tuple(query.tolist()), tuple(response.tolist())

    def add(self, query: Tensor, response: Tensor, logprobs: Tensor, values: Optional[Tensor], version: int) -> None:
        """Record one sample: query (Q,), response (T_i,) token ids; logprobs, values (T_i,)."""
        if version != self.version:
            self.clear()
            self.version = version
        key = self._key(query, response)
        self._records.pop(key, None)
        self._records[key] = (logprobs, values)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def take(self, queries: list[Tensor], responses: list[Tensor], version: int) -> Optional[tuple[Tensor, Optional[Tensor]]]:
        """The records of every sample, in order: logprobs (B, T) and values (B, T) or None, zero-padded
        on the right to the longest response T; None unless every sample has one of this ``version``."""
        if version != self.version or not self._records:
            return None
        found = [self._records.get(self._key(q, r)) for q, r in zip(queries, responses)]
        if any(f is None for f in found):
            return None
        # each record is as long as its response, so B x (T_i,) -> (B, T), T the longest response
        padded = lambda rows: pad([row.float() for row in rows], padding_value=0.0)  # noqa: E731
        values = [v for _, v in found]
        return padded([lp for lp, _ in found]), (None if any(v is None for v in values) else padded(values))

    def clear(self) -> None:
        self._records.clear()
        self.version = None

    def __len__(self) -> int:
        return len(self._records)

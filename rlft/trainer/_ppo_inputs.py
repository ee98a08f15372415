"""Input checks of `PPOTrainer.generate` and `PPOTrainer.step`: bad input raises here, before anything changes.

Every error names the problem and the fix. The trainer calls these with the limits of its model
(`InputLimits`), so this module holds no state of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ._model_helpers import unwrap_base_model
from ._ppo_types import StepInputs


@dataclass(frozen=True)
class InputLimits:
    """What a token batch must respect: the vocabulary, the context length, the model's kind."""

    vocab_size: Optional[int]
    context_length: Optional[int]
    is_encoder_decoder: bool

    @classmethod
    def of(cls, model, is_encoder_decoder: bool) -> "InputLimits":
        """Embedding rows and maximum positions of ``model`` (None where it has no fixed limit)."""
        inner = unwrap_base_model(model)
        try:
            vocab = int(inner.get_input_embeddings().num_embeddings)
        except (AttributeError, NotImplementedError, TypeError):
            vocab = None
        cfg = getattr(inner, "config", None)
        context = None
        for attr in ("n_positions", "max_position_embeddings"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                context = value
                break
        return cls(vocab, context, is_encoder_decoder)


def check_queries(queries: Sequence, limits: InputLimits) -> None:
    for i, q in enumerate(queries):
        if not isinstance(q, Tensor):
            raise TypeError(f"query {i} must be a torch.Tensor of token ids, got {type(q).__name__}.")
        check_token_tensor(q, f"query {i}", min_len=1)
    check_token_range(list(queries), "queries", limits)


def check_token_range(tensors: list[Tensor], what: str, limits: InputLimits) -> None:
    """Token ids must index the embedding: an out-of-range id would crash the forward (on CUDA, the process)."""
    if not tensors or limits.vocab_size is None:
        return
    lo, hi = torch.aminmax(torch.cat([t.detach().reshape(-1).cpu() for t in tensors]))
    if int(lo) < 0 or int(hi) >= limits.vocab_size:
        raise ValueError(
            f"{what} hold token ids in [{int(lo)}, {int(hi)}] but the model's vocabulary has {limits.vocab_size} "
            "entries (ids 0 .. vocab_size - 1). Tokenise with the model's tokenizer."
        )


def check_context(queries: list[Tensor], limits: InputLimits, max_new_tokens: Optional[int] = None, responses=None) -> None:
    """Queries (plus responses or max_new_tokens, for causal models) must fit the model's context."""
    limit = limits.context_length
    if limit is None:
        return
    for i, q in enumerate(queries):
        if limits.is_encoder_decoder:
            extra = responses[i].numel() if responses is not None else 0
            total, parts = max(q.numel(), extra), "the query (or response)"
        else:
            extra = responses[i].numel() if responses is not None else int(max_new_tokens or 0)
            total, parts = q.numel() + extra, "query + " + ("response" if responses is not None else "max_new_tokens")
        if total > limit:
            raise ValueError(
                f"sample {i}: {parts} is {total} tokens, longer than the model's context of {limit} positions. "
                "Truncate the queries (e.g. tokenizer(..., truncation=True, max_length=...)) or lower max_new_tokens."
            )


def check_lists(batch_size: int, named: dict) -> None:
    """TRL 0.7's step safety check: lists (or tuples) of exactly ``batch_size`` items."""
    for name, value in named.items():
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"step(): {name} must be a list, got {type(value).__name__}.")
        if len(value) != batch_size:
            raise ValueError(
                f"step(): got {len(value)} {name} but PPOConfig.batch_size is {batch_size}; "
                "pass exactly batch_size queries, responses and scores."
            )


def validate_step_inputs(
    queries, responses, scores, response_masks, *, batch_size: int, limits: InputLimits, device, num_generations: int = 1,
) -> StepInputs:
    """Check every input of `step` before anything is computed; returns them on ``device``, scores as (B,)."""
    named = {"queries": queries, "responses": responses, "scores": scores}
    if response_masks is not None:
        named["response_masks"] = response_masks
    check_lists(batch_size, named)
    check_queries(queries, limits)
    min_len = 2 if limits.is_encoder_decoder else 1
    for i, r in enumerate(responses):
        if not isinstance(r, Tensor) or r.dim() != 1:
            raise ValueError(f"response {i} must be a 1-D tensor of token ids, got {getattr(r, 'shape', type(r).__name__)}.")
        if r.numel() < min_len:
            raise ValueError(
                f"response {i} is empty: PPO needs at least one generated token per response"
                + (" after the decoder-start token" if limits.is_encoder_decoder else "")
                + ". Filter empty generations out (or set min_new_tokens) before calling step()."
            )
        check_token_tensor(r, f"response {i}", min_len=min_len)
    check_token_range(list(responses), "responses", limits)
    check_context(list(queries), limits, responses=list(responses))
    if num_generations > 1:
        check_groups(list(queries), num_generations)
    scores_t = torch.stack([score_value(s, i).to(device) for i, s in enumerate(scores)])  # (B,)
    if response_masks is not None:
        for i, (m, r) in enumerate(zip(response_masks, responses)):
            if not isinstance(m, Tensor) or m.shape != r.shape:
                raise ValueError(f"response_masks[{i}] must be a tensor of the response's shape {tuple(r.shape)}, got {getattr(m, 'shape', type(m).__name__)}.")
            if m.is_meta or m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"response_masks[{i}] must hold only 0 and 1 (1 = the token counts in the loss).")
        response_masks = [m.to(device) for m in response_masks]
    return StepInputs(
        queries=[q.to(device=device, dtype=torch.long) for q in queries],  # any integer dtype, any device
        responses=[r.to(device=device, dtype=torch.long) for r in responses],
        scores=scores_t,
        response_masks=response_masks,
        action_offset=1 if limits.is_encoder_decoder else 0,
    )


def check_groups(queries: list[Tensor], k: int) -> None:
    """Samples come in consecutive blocks of ``k`` that share a query (``PPOConfig.num_generations``)."""
    if len(queries) % k:
        raise ValueError(f"step(): {len(queries)} samples do not split into groups of num_generations={k}.")
    for g in range(0, len(queries), k):
        first = queries[g]
        for j in range(g + 1, g + k):
            q = queries[j]
            if q.shape != first.shape or not torch.equal(q.detach().cpu(), first.detach().cpu()):
                raise ValueError(
                    f"step(): samples {g}..{g + k - 1} form group {g // k} (PPOConfig.num_generations={k}) but the "
                    f"query of sample {j} differs from that of sample {g}. Pass each query's {k} responses "
                    f"consecutively, e.g. queries = [q for q in prompts for _ in range({k})] and "
                    f"generate(prompts, num_return_sequences={k}), or set num_generations=1."
                )


def check_token_tensor(t: Tensor, what: str, min_len: int) -> None:
    """A 1-D tensor of integer token ids with data (any device: it is moved to the trainer's)."""
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor of token ids, got shape {tuple(t.shape)}.")
    if t.is_meta:
        raise ValueError(f"{what} is on the 'meta' device and holds no data; pass real token ids.")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} holds floats ({t.dtype}); token ids must be integers.")
    if t.dtype == torch.bool:
        raise TypeError(f"{what} holds booleans; token ids must be integers (torch.long).")
    if t.numel() < min_len:
        raise ValueError(f"{what} is empty; every query needs at least one token.")


def score_value(s, i: int) -> Tensor:
    """One score (a number, a 0-d tensor or a 1-element 1-D tensor) as a 0-d float32 tensor.

    A score of two or more dimensions (``[[1.0]]``) is an error, as in TRL 0.7: it usually means
    a reward model's (batch, 1) output was not reduced per sample.
    """
    if isinstance(s, Tensor):
        if s.is_meta:
            raise ValueError(f"score {i} is on the 'meta' device and holds no data.")
        if s.numel() != 1 or s.dim() > 1:
            raise ValueError(
                f"score {i} must be a scalar (a 0-d tensor or a number), got a tensor of shape {tuple(s.shape)}; "
                "reduce it to one number per response, e.g. score.squeeze() or output[:, 0]."
            )
        if s.dtype == torch.bool or s.is_complex():
            raise TypeError(f"score {i} must be a real number, got a {s.dtype} tensor.")
        return s.detach().reshape(()).float()
    if isinstance(s, (bool, np.bool_, complex, np.complexfloating)) or not isinstance(s, (int, float, np.number)):
        raise TypeError(f"score {i} must be a number or a 0-d tensor, got {type(s).__name__}.")
    return torch.tensor(float(s))

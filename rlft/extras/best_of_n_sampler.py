"""Best-of-n sampling: draw n continuations per query, keep the ones a scorer likes best.

An alternative to RL fine-tuning for getting better outputs from a model at
inference time (rejection sampling; see e.g. Nakano et al. 2021, "WebGPT",
section 3 and Stiennon et al. 2020, section 4). The samples of several queries
are generated in one batch (left-padded), and the scorer sees each query's
samples in one call.
"""

from __future__ import annotations

import copy
import numbers
import random
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..core import set_seed
from ..trainer._helpers import pad_with_mask
from ..trainer._model_helpers import unwrap_base_model
from ..utils.sampling_generate import generate as sampling_generate, model_generation_config

TokenizedQuery = Union[Sequence[int], Tensor]

#: Queries whose samples share one ``model.generate`` call by default (BestOfNSampler.queries_per_generate).
QUERIES_PER_GENERATE = 8
#: Generation options under which rows of different queries cannot share a batch and be cut back
#: exactly to what each query's own batch returns: they are generated query by query.
_PER_QUERY_OPTIONS = frozenset({
    "attention_mask", "stopping_criteria", "stop_strings", "max_time", "max_length", "num_return_sequences",
    "prefix_allowed_tokens_fn", "inputs_embeds", "position_ids", "num_beams", "streamer", "assistant_model",
})


class BestOfNSampler:
    """Sample ``sample_size`` continuations per query and keep the ``n_candidates`` best.

    Args:
        model: a causal language model with ``generate`` (a transformers model, a
            peft model, or `rlft.AutoModelForCausalLMWithValueHead`).
        tokenizer: decodes the generated token ids to text for the scorer.
        queries_to_scores: callable taking a list of decoded texts (query and
            continuation) and returning one number per text; higher is better.
        length_sampler: callable returning the number of new tokens to generate
            for a query (e.g. `rlft.core.LengthSampler`); drawn once per query.
        sample_size: number of continuations sampled per query (default 4).
        seed: makes the sampling reproducible. With a seed, every call to
            `generate` runs under its own seed (``seed``, ``seed + 1``, ... per
            call) and leaves the global random state of Python, NumPy and torch as
            it found it, so two samplers built with the same seed return the same
            texts for the same calls.
        n_candidates: number of best texts returned per query (default 1).
        generation_config: a `transformers.GenerationConfig` with the default
            generation settings; keyword arguments given to `generate` override it.
    """

    def __init__(
        self,
        model,
        tokenizer,
        queries_to_scores: Callable[[list[str]], Any],
        length_sampler: Callable[[], int],
        sample_size: int = 4,
        seed: Optional[int] = None,
        n_candidates: int = 1,
        generation_config=None,
    ) -> None:
        # 1. check arguments
        if not hasattr(model, "generate"):
            raise TypeError(f"BestOfNSampler needs a model with a generate() method; got {type(model).__name__}.")
        if not callable(queries_to_scores):
            raise TypeError("queries_to_scores must be a callable mapping a list of texts to a list of scores.")
        if not callable(length_sampler):
            raise TypeError(
                "length_sampler must be a callable returning the number of new tokens, e.g. rlft.core.LengthSampler(4, 16)."
            )
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size must be a positive integer; got {sample_size!r}.")
        if not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"n_candidates must be a positive integer; got {n_candidates!r}.")
        if n_candidates > sample_size:
            raise ValueError(
                f"n_candidates ({n_candidates}) cannot exceed sample_size ({sample_size}): only sample_size texts are "
                "sampled per query. Lower n_candidates or raise sample_size."
            )
        if generation_config is not None:
            from transformers import GenerationConfig

            if not isinstance(generation_config, GenerationConfig):
                raise TypeError(
                    f"generation_config must be a transformers.GenerationConfig; got {type(generation_config).__name__}. "
                    "Pass plain generation options as keyword arguments of generate() instead."
                )

        self.model = model
        self.tokenizer = tokenizer
        self.queries_to_scores = queries_to_scores
        self.length_sampler = length_sampler
        self.sample_size = sample_size
        self.seed = seed
        self.n_candidates = n_candidates
        self.gen_config = generation_config
        self._calls = 0  # generate() calls so far; offsets the seed so successive calls differ
        # How many queries' samples go through one model.generate call: more is faster (one
        # decoding loop instead of several) and holds more rows in memory; 1 = query by query.
        self.queries_per_generate = QUERIES_PER_GENERATE

    @property
    def generation_config(self):
        return self.gen_config

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        tokenized_query: Union[TokenizedQuery, Sequence[TokenizedQuery]],
        skip_special_tokens: bool = True,
        device: Optional[Union[str, torch.device]] = None,
        **generation_kwargs,
    ) -> list[list[str]]:
        """Return, for each query, its ``n_candidates`` best texts (best first).

        Args:
            tokenized_query: one query as a list of token ids or a 1-D tensor, or
                several queries as a list of those or a 2-D tensor (one query per row).
            skip_special_tokens: drop special tokens (padding, EOS) when decoding.
            device: where the queries are sent before generating; defaults to the
                model's device.
            **generation_kwargs: forwarded to ``model.generate``; they override the
                sampler's ``generation_config``. ``max_new_tokens`` here overrides
                the length sampler.

        Returns:
            One list of ``n_candidates`` decoded texts (query plus continuation for
            causal models) per query, ordered from the highest score down.
        """
        queries = self._as_query_list(tokenized_query)
        if device is None:
            device = self._model_device()
        self._warn_if_greedy(generation_kwargs)

        if self.seed is None:
            return self._best_of_all(queries, skip_special_tokens, device, generation_kwargs)
        with _isolated_rng():
            set_seed(self.seed + self._calls)
            self._calls += 1
            return self._best_of_all(queries, skip_special_tokens, device, generation_kwargs)

    # ------------------------------------------------------------------ internals

    def _best_of_all(self, queries: list[Tensor], skip_special_tokens: bool, device, generation_kwargs: dict) -> list[list[str]]:
        """The best texts of every query, sampling several queries in one ``model.generate`` call.

        Each query's new-token budget is drawn first, in query order. Queries with the same
        budget are generated together, ``queries_per_generate`` at a time (`_sample_together`),
        and each query's rows are cut back to exactly what a batch of that query alone returns.
        Options that would make the rows of different queries interact, and encoder-decoder
        models, fall back to `_best_of_one` (query by query).
        """
        ids = self._batch_token_ids(generation_kwargs)
        if ids is None or self.queries_per_generate <= 1:
            return [self._best_of_one(query, skip_special_tokens, device, generation_kwargs) for query in queries]
        pad_id, eos_ids = ids
        budgets = []
        for _ in queries:
            drawn = int(self.length_sampler())  # drawn for every query, as query-by-query sampling does
            budgets.append(int(generation_kwargs.get("max_new_tokens", drawn)))
        by_budget: dict[int, list[int]] = {}
        for i, budget in enumerate(budgets):
            by_budget.setdefault(budget, []).append(i)
        outputs: list[Optional[Tensor]] = [None] * len(queries)
        for budget, members in by_budget.items():
            for start in range(0, len(members), self.queries_per_generate):
                chunk = members[start : start + self.queries_per_generate]
                rows = self._sample_together([queries[i] for i in chunk], budget, pad_id, eos_ids, device, generation_kwargs)
                for i, out in zip(chunk, rows):
                    outputs[i] = out
        # the scorer sees each query's samples in one call, in query order
        return [self._select(self.tokenizer.batch_decode(out, skip_special_tokens=skip_special_tokens)) for out in outputs]

    def _sample_together(
        self, queries: list[Tensor], budget: int, pad_id: int, eos_ids: set[int], device, generation_kwargs: dict
    ) -> list[Tensor]:
        """``sample_size`` continuations of each query from one left-padded generate call.

        Returns one (sample_size, T_query + T_new) tensor per query, equal in shape and layout to
        what ``model.generate`` returns for a batch of that query's copies alone: the left
        padding is removed and the columns after its last row finished are cut off.
        """
        n, width = self.sample_size, max(len(q) for q in queries)
        input_ids, attention_mask = pad_with_mask([q.cpu().long() for q in queries], pad_id, "left")  # (Q, width)
        input_ids, attention_mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)  # (Q * n, width)
        kwargs = dict(generation_kwargs, max_new_tokens=budget, attention_mask=attention_mask.to(device))
        kwargs.setdefault("pad_token_id", pad_id)
        kwargs = self._merged_with_config(kwargs)
        with torch.no_grad():
            output = sampling_generate(self.model, input_ids=input_ids.to(device), **kwargs)  # (Q * n, width + T_new)
        new = output[:, width:]  # (Q * n, T_new)
        # a row's own length: through its first EOS (HF fills the rest with pad_token_id)
        done = torch.full((new.shape[0],), new.shape[1], dtype=torch.long, device=new.device)
        if eos_ids and new.shape[1] > 0:
            is_eos = torch.isin(new, torch.tensor(sorted(eos_ids), device=new.device))
            first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, done)
            done = first
        rows = []
        for j, query in enumerate(queries):
            length = int(done[j * n : (j + 1) * n].max())  # the query's own batch stops when its last row is done
            rows.append(output[j * n : (j + 1) * n, width - len(query) : width + length])
        return rows

    def _batch_token_ids(self, generation_kwargs: dict) -> Optional[tuple[int, set[int]]]:
        """(pad id, EOS ids) that ``generate`` will use, or None when queries must be generated one by one."""
        model_config = getattr(unwrap_base_model(self.model), "config", None)
        if model_config is None or getattr(model_config, "is_encoder_decoder", False):
            return None
        if _PER_QUERY_OPTIONS & set(generation_kwargs):
            return None
        model_gen = model_generation_config(self.model)
        sources = [generation_kwargs, *(vars(c) for c in (self.gen_config, model_gen) if c is not None)]
        for config in (self.gen_config, model_gen):
            if config is not None and (getattr(config, "stop_strings", None) or getattr(config, "max_time", None)
                                       or (getattr(config, "num_return_sequences", 1) or 1) > 1
                                       or (getattr(config, "num_beams", 1) or 1) > 1):
                return None
        if model_gen is None:
            return None  # unknown model: which EOS it stops at is not known here

        def first(name):
            return next((src[name] for src in sources if src.get(name) is not None), None)

        eos = first("eos_token_id")
        eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])} if eos is not None else set()
        pad = first("pad_token_id")
        if pad is None:  # generate pads finished rows with the (first) EOS then
            pad = (eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else None
        return None if pad is None else (int(pad), eos_ids)

    def _merged_with_config(self, kwargs: dict) -> dict:
        if self.gen_config is None:
            return kwargs
        # Merge here rather than passing both: per-call options override the config's defaults,
        # and transformers deprecates receiving a generation_config together with loose options.
        config = copy.deepcopy(self.gen_config)
        kwargs = config.update(**kwargs)  # returns the options that are not generation settings
        kwargs["generation_config"] = config
        return kwargs

    def _select(self, texts: list[str]) -> list[str]:
        """Score one query's texts with one scorer call; the ``n_candidates`` best, best first."""
        scores = self._checked_scores(self.queries_to_scores(texts), len(texts))
        order = torch.sort(scores, descending=True, stable=True).indices[: self.n_candidates]  # ties: earlier sample wins
        return [texts[i] for i in order.tolist()]

    def _best_of_one(self, query: Tensor, skip_special_tokens: bool, device, generation_kwargs: dict) -> list[str]:
        """Sample ``sample_size`` continuations of one query (one batch), score them, keep the best."""
        # 1. one batch of sample_size copies of the query: (sample_size, T_query)
        input_ids = query.to(device).unsqueeze(0).repeat(self.sample_size, 1)
        kwargs = dict(generation_kwargs)
        kwargs.setdefault("max_new_tokens", int(self.length_sampler()))
        kwargs.setdefault("attention_mask", torch.ones_like(input_ids))  # queries are unpadded
        kwargs = self._merged_with_config(kwargs)
        # 2. generate: (sample_size, T_query + T_new) for causal models
        with torch.no_grad():
            output = sampling_generate(self.model, input_ids=input_ids, **kwargs)
        # 3. score the whole batch with one call, then keep the top n_candidates
        return self._select(self.tokenizer.batch_decode(output, skip_special_tokens=skip_special_tokens))

    def _checked_scores(self, scores: Any, expected: int) -> Tensor:
        """The scorer's output as a float tensor of shape (expected,), or a clear error."""
        if isinstance(scores, (Tensor, np.ndarray)):
            if scores.ndim > 1 and scores.shape[-1] == 1:
                scores = scores.reshape(-1)
            if scores.ndim != 1:
                raise ValueError(
                    f"queries_to_scores must return one score per text (a 1-D sequence); got shape {tuple(scores.shape)}."
                )
            scores = list(scores)
        elif isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
            raise TypeError(
                f"queries_to_scores must return a list of numbers (one per text); got {type(scores).__name__}."
            )
        if len(scores) != expected:
            raise ValueError(
                f"queries_to_scores returned {len(scores)} scores for {expected} texts; it must return exactly one "
                "score per text, in the same order."
            )
        values = [_as_float(score, index) for index, score in enumerate(scores)]
        result = torch.tensor(values, dtype=torch.float64)
        if torch.isnan(result).any():
            raise ValueError(f"queries_to_scores returned NaN scores: {values}. Scores must be comparable numbers.")
        return result

    def _as_query_list(self, tokenized_query) -> list[Tensor]:
        """Normalise the accepted query formats to a list of 1-D long tensors."""
        if isinstance(tokenized_query, Tensor):
            if tokenized_query.ndim == 1:
                return [_as_query(tokenized_query, 0)]
            if tokenized_query.ndim == 2:
                return [_as_query(row, i) for i, row in enumerate(tokenized_query)]
            raise ValueError(
                f"A query tensor must be 1-D (one query) or 2-D (one query per row); got shape {tuple(tokenized_query.shape)}."
            )
        if isinstance(tokenized_query, (list, tuple)):
            if len(tokenized_query) == 0:
                raise ValueError("generate() got an empty list of queries.")
            if all(_is_int(token) for token in tokenized_query):
                return [_as_query(tokenized_query, 0)]
            return [_as_query(query, i) for i, query in enumerate(tokenized_query)]
        raise TypeError(
            "tokenized_query must be a list of token ids, a tensor, or a list of either; "
            f"got {type(tokenized_query).__name__}. Tokenize text first, e.g. tokenizer.encode(text)."
        )

    def _model_device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    def _warn_if_greedy(self, generation_kwargs: dict) -> None:
        if self.sample_size == 1 or "do_sample" in generation_kwargs and generation_kwargs["do_sample"]:
            return
        config = self.gen_config if self.gen_config is not None else model_generation_config(self.model)
        do_sample = generation_kwargs.get("do_sample", getattr(config, "do_sample", None))
        num_beams = generation_kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
        if not do_sample and num_beams == 1:
            warnings.warn(
                "BestOfNSampler is generating greedily (do_sample is off), so all samples of a query are the "
                "same. Pass do_sample=True to generate() or in generation_config.",
                stacklevel=3,
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_query(query: Any, index: int) -> Tensor:
    tensor = query if isinstance(query, Tensor) else torch.as_tensor(list(query) if not isinstance(query, np.ndarray) else query)
    tensor = tensor.reshape(-1)
    if tensor.numel() == 0:
        raise ValueError(f"query {index} is empty; every query needs at least one token.")
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"query {index} holds {tensor.dtype} values; token ids must be integers.")
    return tensor.long()


def _as_float(score: Any, index: int) -> float:
    if isinstance(score, Tensor) and score.numel() == 1 and not score.dtype == torch.bool:
        return float(score.item())
    if isinstance(score, np.ndarray) and score.size == 1 and score.dtype.kind in "iuf":
        return float(score.item())
    if isinstance(score, numbers.Real) and not isinstance(score, bool):
        return float(score)
    raise TypeError(
        f"queries_to_scores returned a non-number at position {index}: {score!r} ({type(score).__name__}). "
        "It must return one number per text, e.g. [out['score'] for out in reward_pipe(texts)]."
    )


class _isolated_rng:
    """Context manager: restore Python's, NumPy's and torch's global random state on exit."""

    def __enter__(self):
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        self._torch = torch.random.fork_rng(devices=_cuda_devices())
        self._torch.__enter__()
        return self

    def __exit__(self, *exc):
        self._torch.__exit__(*exc)
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        return False


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []

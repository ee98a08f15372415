"""BestOfNSampler's cross-query batches against query-by-query generation (the straightforward path)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.core import LengthSampler
from rlft.extras import BestOfNSampler

GREEDY = dict(do_sample=False)
QUERIES = ["the value of", "return a new list of the", "a", "create the file and close it when"]


@pytest.fixture
def counting_lm(model_path):
    class Counting(AutoModelForCausalLM.from_pretrained(model_path("gpt2")).__class__):
        pass

    model = Counting.from_pretrained(model_path("gpt2")).eval()
    calls = []
    generate = model.generate

    def counted(**kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return generate(**kwargs)

    model.generate = counted
    return model, calls


def _all_texts(sampler, queries, **kw):
    seen = []

    def scorer(texts):
        seen.append(list(texts))
        return [0.0] * len(texts)

    sampler.queries_to_scores = scorer
    sampler.generate(queries, **kw)
    return seen


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_batched_texts_equal_query_by_query_texts(counting_lm, pad_tokenizer, skip_special_tokens):
    model, calls = counting_lm
    queries = [pad_tokenizer.encode(q) for q in QUERIES]
    # An EOS that query 0 reaches early (its third greedy token): its own batch stops there,
    # while the others run on; the batched rows must be cut back exactly.
    with torch.no_grad():
        greedy = model.generate(input_ids=torch.tensor([queries[0]]), max_new_tokens=3, do_sample=False,
                                pad_token_id=pad_tokenizer.pad_token_id)
    eos = int(greedy[0, -1])
    kw = dict(GREEDY, eos_token_id=eos, pad_token_id=pad_tokenizer.pad_token_id, skip_special_tokens=skip_special_tokens)

    def sampler(budgets):
        return BestOfNSampler(model, pad_tokenizer, lambda t: [0.0] * len(t), budgets, sample_size=3, n_candidates=3, seed=0)

    for budgets in (lambda: 6, LengthSampler(4, 8)):  # one shared budget; budgets drawn per query
        one_by_one = sampler(budgets)
        one_by_one.queries_per_generate = 1
        calls.clear()
        slow = _all_texts(one_by_one, queries, **kw)
        assert len(calls) == len(queries)
        calls.clear()
        fast = _all_texts(sampler(budgets), queries, **kw)
        assert slow == fast
        assert len(calls) < len(queries)  # queries shared generate calls


def test_one_generate_call_per_budget_and_scorer_per_query_in_order(counting_lm, pad_tokenizer):
    model, calls = counting_lm
    queries = [pad_tokenizer.encode(q) for q in QUERIES]
    scored = []

    def scorer(texts):
        scored.append(texts[0])
        return [float(len(t)) for t in texts]

    sampler = BestOfNSampler(model, pad_tokenizer, scorer, lambda: 5, sample_size=4, seed=1)
    out = sampler.generate(queries, do_sample=True, top_k=0, top_p=1.0)
    assert calls == [(len(queries) * 4, max(len(q) for q in queries))]  # one call, all samples, left-padded
    assert len(out) == len(queries) and [s.startswith(q) for s, q in zip(scored, QUERIES)] == [True] * len(QUERIES)


def test_per_query_options_fall_back_to_query_by_query(counting_lm, pad_tokenizer):
    model, calls = counting_lm
    queries = [pad_tokenizer.encode(q) for q in QUERIES[:2]]
    sampler = BestOfNSampler(model, pad_tokenizer, lambda t: [0.0] * len(t), lambda: 3, sample_size=2, seed=0)
    sampler.generate(queries, do_sample=True, stop_strings=["zzz"], tokenizer=pad_tokenizer)
    assert [c[0] for c in calls] == [2, 2]

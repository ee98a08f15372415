"""BestOfNSampler: batching, selection, reproducibility, argument errors, and the documented usage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from rlft import AutoModelForCausalLMWithValueHead
from rlft.core import LengthSampler
from rlft.extras import BestOfNSampler
from rlft.utils.sampling_generate import InverseCDFSampling

SAMPLE = dict(do_sample=True, top_k=0, top_p=1.0)


@pytest.fixture
def causal_lm(model_path):
    return AutoModelForCausalLM.from_pretrained(model_path("gpt2")).eval()


def count_a(texts):
    return [float(t.count("a")) for t in texts]


class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch shape of every generate() call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def generate(self, **kwargs):
        self.calls.append(tuple(kwargs["input_ids"].shape))
        return self.model.generate(**kwargs)


def test_one_generate_and_one_score_call_per_query(causal_lm, pad_tokenizer):
    model = CountingModel(causal_lm)
    scored = []

    def scorer(texts):
        scored.append(len(texts))
        return count_a(texts)

    sampler = BestOfNSampler(model, pad_tokenizer, scorer, LengthSampler(3, 6), sample_size=5, seed=0)
    queries = [pad_tokenizer.encode("the value of"), pad_tokenizer.encode("return a new list")]
    out = sampler.generate(queries, **SAMPLE)
    assert [len(q) for q in queries] == [c[1] for c in model.calls]
    assert [c[0] for c in model.calls] == [5, 5]  # all samples of one query in one batch
    assert scored == [5, 5]  # scorer called once per query batch
    assert len(out) == 2 and all(len(o) == 1 and isinstance(o[0], str) for o in out)


def test_chosen_candidates_are_exactly_the_top_scored(causal_lm, pad_tokenizer):
    seen = []

    def scorer(texts):
        seen.append(list(texts))
        return [float(len(t)) + 0.001 * i for i, t in enumerate(texts)]  # distinct scores, prefer long texts

    sampler = BestOfNSampler(
        causal_lm, pad_tokenizer, scorer, LengthSampler(4, 8), sample_size=6, n_candidates=3, seed=1
    )
    out = sampler.generate(pad_tokenizer.encode("the value of"), **SAMPLE)
    texts = seen[0]
    scores = scorer(texts)
    expected = [texts[i] for i in sorted(range(len(texts)), key=lambda i: -scores[i])[:3]]
    assert out == [expected]


def test_known_property_selects_best(causal_lm, pad_tokenizer):
    seen = []

    def scorer(texts):
        seen.append(list(texts))
        return count_a(texts)

    sampler = BestOfNSampler(causal_lm, pad_tokenizer, scorer, LengthSampler(8, 9), sample_size=8, seed=3)
    out = sampler.generate(torch.tensor(pad_tokenizer.encode("a")), **SAMPLE)
    assert out[0][0].count("a") == max(t.count("a") for t in seen[0])
    assert len(set(seen[0])) > 1  # sampling produced different candidates


def test_reproducible_with_seed_and_isolated_from_global_rng(causal_lm, pad_tokenizer):
    query = [pad_tokenizer.encode("the value of"), pad_tokenizer.encode("return")]

    def run(seed):
        sampler = BestOfNSampler(
            causal_lm, pad_tokenizer, count_a, LengthSampler(2, 10), sample_size=4, n_candidates=4, seed=seed
        )
        return sampler.generate(query, **SAMPLE), sampler.generate(query, **SAMPLE)

    torch.manual_seed(123)
    np.random.seed(5)
    before = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(5)
    first = run(7)
    after = torch.rand(1), np.random.rand()
    assert torch.equal(before[0], after[0]) and before[1] == after[1]  # global state untouched
    torch.manual_seed(999)
    assert run(7) == first
    assert first[0] != first[1]  # successive calls draw fresh samples
    assert run(8) != first


def test_query_formats_agree(causal_lm, pad_tokenizer):
    ids = pad_tokenizer.encode("the value of")
    kw = dict(sample_size=3, n_candidates=3, seed=0)
    as_list = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(3, 4), **kw).generate(ids, **SAMPLE)
    as_tensor = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(3, 4), **kw).generate(
        torch.tensor(ids), **SAMPLE
    )
    as_2d = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(3, 4), **kw).generate(
        torch.tensor([ids]), **SAMPLE
    )
    as_tensor_list = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(3, 4), **kw).generate(
        [torch.tensor(ids)], **SAMPLE
    )
    assert as_list == as_tensor == as_2d == as_tensor_list
    assert all(t.startswith("the value of") for t in as_list[0])  # causal LM output includes the query


def test_generation_config_defaults_and_kwarg_override(causal_lm, pad_tokenizer):
    calls = []
    model = CountingModel(causal_lm)
    original = model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    model.generate = spy
    config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, pad_token_id=pad_tokenizer.eos_token_id)
    sampler = BestOfNSampler(model, pad_tokenizer, count_a, LengthSampler(3, 4), sample_size=2, generation_config=config)
    sampler.generate(pad_tokenizer.encode("the"))
    used = calls[-1]["generation_config"]
    # plain sampling reaches transformers as greedy decoding over rlft's inverse-CDF draw
    # (rlft/utils/sampling_generate.py), which carries the config's sampling settings
    assert used.do_sample is False and used.max_new_tokens == 3
    draw = calls[-1]["logits_processor"][-1]
    assert isinstance(draw, InverseCDFSampling) and draw.warpers == []  # top_k=0, top_p=1, temperature 1: no warper
    sampler.generate(pad_tokenizer.encode("the"), top_k=7)
    assert [type(w).__name__ for w in calls[-1]["logits_processor"][-1].warpers] == ["TopKLogitsWarper"]
    with pytest.warns(UserWarning, match="greedily"):
        sampler.generate(pad_tokenizer.encode("the"), max_new_tokens=1, do_sample=False, top_k=5)
    used = calls[-1]["generation_config"]
    assert used.max_new_tokens == 1 and used.do_sample is False and used.top_k == 5
    assert config.do_sample is True and config.top_k == 0 and config.max_new_tokens is None  # defaults untouched


def test_value_head_model(model_path, pad_tokenizer):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("llama"))
    sampler = BestOfNSampler(model, pad_tokenizer, count_a, LengthSampler(2, 5), sample_size=3, n_candidates=2, seed=0)
    out = sampler.generate([pad_tokenizer.encode("a b"), pad_tokenizer.encode("c")], **SAMPLE)
    assert [len(o) for o in out] == [2, 2]


def test_greedy_generation_warns(causal_lm, pad_tokenizer):
    sampler = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(2, 3), sample_size=2)
    with pytest.warns(UserWarning, match="do_sample"):
        sampler.generate(pad_tokenizer.encode("the"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sample_size=2, n_candidates=3), ValueError, "n_candidates .3. cannot exceed sample_size .2."),
        (dict(sample_size=0), ValueError, "sample_size"),
        (dict(n_candidates=0), ValueError, "n_candidates"),
        (dict(generation_config={"do_sample": True}), TypeError, "GenerationConfig"),
    ],
)
def test_bad_constructor_arguments(causal_lm, pad_tokenizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(2, 3), **kwargs)


@pytest.mark.parametrize(
    "scorer, error, match",
    [
        (lambda texts: [1.0] * (len(texts) - 1), ValueError, "returned 3 scores for 4 texts"),
        (lambda texts: ["high"] * len(texts), TypeError, "non-number at position 0"),
        (lambda texts: [None] * len(texts), TypeError, "non-number"),
        (lambda texts: 1.0, TypeError, "list of numbers"),
        (lambda texts: [float("nan")] * len(texts), ValueError, "NaN"),
        (lambda texts: torch.ones(len(texts), 2), ValueError, "one score per text"),
    ],
)
def test_bad_scorer_output(causal_lm, pad_tokenizer, scorer, error, match):
    sampler = BestOfNSampler(causal_lm, pad_tokenizer, scorer, LengthSampler(2, 3), sample_size=4)
    with pytest.raises(error, match=match):
        sampler.generate(pad_tokenizer.encode("the"), **SAMPLE)


def test_scorer_may_return_tensor_or_array(causal_lm, pad_tokenizer):
    for convert in (torch.tensor, np.array, lambda s: [torch.tensor(x) for x in s]):
        sampler = BestOfNSampler(
            causal_lm, pad_tokenizer, lambda t, c=convert: c(count_a(t)), LengthSampler(2, 3), sample_size=2, seed=0
        )
        assert len(sampler.generate(pad_tokenizer.encode("the"), **SAMPLE)[0]) == 1


def test_bad_queries(causal_lm, pad_tokenizer):
    sampler = BestOfNSampler(causal_lm, pad_tokenizer, count_a, LengthSampler(2, 3), sample_size=2)
    with pytest.raises(TypeError, match="Tokenize text first"):
        sampler.generate("the value", **SAMPLE)
    with pytest.raises(ValueError, match="empty list"):
        sampler.generate([], **SAMPLE)
    with pytest.raises(TypeError, match="integers"):
        sampler.generate(torch.tensor([0.5, 1.0]), **SAMPLE)


def test_documented_usage_runs_unchanged(model_path, tokenizer):
    """The usage from the TRL 0.7.10 docs, with only the imports and the reward pipe replaced."""
    ref_model_name = model_path("gpt2")
    device = "cpu"
    from transformers import AutoTokenizer

    # --- documented usage (imports from rlft; a programmatic scorer replaces the sentiment pipeline)
    from rlft import AutoModelForCausalLMWithValueHead
    from rlft.core import LengthSampler
    from rlft.extras import BestOfNSampler

    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(ref_model_name)
    reward_pipe = lambda texts: [{"label": "POSITIVE", "score": t.count("e") / (1 + len(t))} for t in texts]  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(ref_model_name)
    tokenizer.pad_token = tokenizer.eos_token

    def queries_to_scores(list_of_strings):
        return [output["score"] for output in reward_pipe(list_of_strings)]

    model = ref_model
    output_length_sampler = LengthSampler(4, 8)
    query_tensors = [torch.tensor(tokenizer.encode(q)) for q in ("the value of", "return a", "if the")]
    gen_kwargs = {"min_length": -1, "top_k": 0.0, "top_p": 1.0, "do_sample": True, "pad_token_id": tokenizer.eos_token_id}

    best_of_n = BestOfNSampler(model, tokenizer, queries_to_scores, length_sampler=output_length_sampler)
    out = best_of_n.generate(query_tensors, device=device, **gen_kwargs)
    assert len(out) == 3 and all(len(o) == 1 for o in out)

    best_of_n = BestOfNSampler(model, tokenizer, queries_to_scores, length_sampler=output_length_sampler, sample_size=8)
    assert len(best_of_n.generate(query_tensors, device=device, **gen_kwargs)) == 3

    best_of_n = BestOfNSampler(model, tokenizer, queries_to_scores, length_sampler=output_length_sampler, n_candidates=2)
    assert all(len(o) == 2 for o in best_of_n.generate(query_tensors, device=device, **gen_kwargs))

    generation_config = GenerationConfig(
        min_length=-1, top_k=0.0, top_p=1.0, do_sample=True, pad_token_id=tokenizer.eos_token_id
    )
    best_of_n = BestOfNSampler(
        model, tokenizer, queries_to_scores, length_sampler=output_length_sampler, generation_config=generation_config
    )
    out = best_of_n.generate(query_tensors, device=device)
    assert len(out) == 3 and all(isinstance(o[0], str) for o in out)

"""Inverse-CDF sampling draws from the given distribution, and the generate path keeps transformers' rules."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.functional.sampling import sample_categorical
from rlft.utils.sampling_generate import InverseCDFSampling, generate, sampling_plan


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper tail of Pearson's chi-square statistic (categories with positive expected count only)."""
    n = counts.sum()
    keep = probs > 0
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    # Wilson-Hilferty normal approximation of the chi-square tail (accurate for dof >= 3)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_draws_follow_the_distribution_and_never_hit_zero_mass():
    torch.manual_seed(0)
    probs = torch.tensor([0.0, 0.05, 0.3, 0.0, 0.15, 0.2, 0.25, 0.05, 0.0])  # zeros at both ends and inside
    rows = probs.repeat(20000, 1) * 3.0  # unnormalised rows are fine
    draws = sample_categorical(rows)
    assert draws.shape == (20000,) and draws.dtype == torch.int64
    counts = torch.bincount(draws, minlength=len(probs)).double()
    assert counts[probs == 0].sum() == 0
    assert _chi_square_p_value(counts, probs.double()) > 1e-3
    # and against torch.multinomial's frequencies on the same rows (both within sampling noise of probs)
    reference = torch.bincount(torch.multinomial(rows, 1).squeeze(1), minlength=len(probs)).double()
    assert (counts / 20000 - reference / 20000).abs().max() < 0.02


def test_each_row_uses_its_own_distribution():
    torch.manual_seed(1)
    probs = torch.zeros(4, 6)
    probs[0, 2] = probs[1, 5] = probs[3, 0] = 1.0
    probs[2, 1] = probs[2, 4] = 0.5
    draws = torch.stack([sample_categorical(probs) for _ in range(200)])  # (200, 4)
    assert (draws[:, 0] == 2).all() and (draws[:, 1] == 5).all() and (draws[:, 3] == 0).all()
    assert set(draws[:, 2].tolist()) == {1, 4}


def test_a_uniform_draw_at_the_top_of_the_range_stays_on_positive_mass(monkeypatch):
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full((1, 1), 1.0, dtype=torch.float64))  # u * total == total
    assert sample_categorical(probs).tolist() == [1]


def test_processor_applies_transformers_warpers_before_the_draw():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(2)
    scores = torch.randn(3, 50)
    ids = torch.zeros(3, 1, dtype=torch.long)
    proc = InverseCDFSampling(temperature=0.7, top_k=10, top_p=0.8)
    warped = TopPLogitsWarper(0.8)(ids, TopKLogitsWarper(10)(ids, TemperatureLogitsWarper(0.7)(ids, scores.clone())))
    allowed = torch.isfinite(warped)
    for _ in range(50):
        out = proc(ids, scores.clone())
        token = out.argmax(-1)
        assert torch.isfinite(out).sum(-1).tolist() == [1, 1, 1]  # one-hot: greedy decoding takes the drawn token
        assert allowed.gather(1, token[:, None]).all()  # never outside top-k / top-p


def test_plan_takes_only_plain_sampling(model_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    assert sampling_plan(model, dict(do_sample=True, top_k=0, top_p=1.0)) == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert sampling_plan(model, dict(do_sample=True))["top_k"] == 50  # transformers' default
    assert sampling_plan(model, dict(do_sample=False)) is None
    assert sampling_plan(model, dict()) is None  # greedy by default
    assert sampling_plan(model, dict(do_sample=True, num_beams=2)) is None
    assert sampling_plan(model, dict(do_sample=True, min_p=0.1)) is None
    assert sampling_plan(model, dict(do_sample=True, typical_p=0.9)) is None
    assert sampling_plan(model, dict(do_sample=True, output_scores=True, return_dict_in_generate=True)) is None
    assert sampling_plan(model, dict(generation_config=GenerationConfig(do_sample=True, top_p=0.9)))["top_p"] == 0.9
    model.generation_config.do_sample = True  # the model's own config counts as transformers' does
    model.generation_config.temperature = 0.5
    assert sampling_plan(model, dict()) == {"temperature": 0.5, "top_k": 50, "top_p": 1.0}


def test_env_switch_restores_transformers_sampling(model_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"))
    monkeypatch.setenv("RLFT_SAMPLER", "transformers")
    assert sampling_plan(model, dict(do_sample=True)) is None


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_generate_matches_transformers_where_the_draw_is_forced(model_path, arch):
    """top_k=1 leaves one token per step: both paths must then produce the same, greedy, sequence."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    model = auto.from_pretrained(model_path(arch)).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (torch.arange(5) >= torch.tensor([[2], [0]])).long()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
              pad_token_id=model.generation_config.pad_token_id)
    with torch.no_grad():
        ours = generate(model, do_sample=True, top_k=1, **kw)
        greedy = model.generate(do_sample=False, **kw)
    assert torch.equal(ours, greedy)


def test_generate_samples_at_the_model_distribution(model_path):
    """First-token frequencies of the fast path and of transformers' multinomial agree (same logits)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path("gpt2"), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7]]).repeat(3000, 1)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids[:1]).logits[0, -1] / 0.1, -1).double()  # temperature 0.1: top 8 hold ~25%
        torch.manual_seed(3)
        ours = generate(model, input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                        temperature=0.1, max_new_tokens=1, pad_token_id=0)[:, -1]
    counts = torch.bincount(ours, minlength=probs.numel()).double()
    top = probs.argsort(descending=True)[:8]  # the 8 likeliest tokens, plus the rest as one category
    grouped_counts = torch.cat([counts[top], (counts.sum() - counts[top].sum()).reshape(1)])
    grouped_probs = torch.cat([probs[top], (1 - probs[top].sum()).reshape(1)])
    assert _chi_square_p_value(grouped_counts, grouped_probs) > 1e-3
    at_temperature_one = torch.softmax(model(input_ids=ids[:1]).logits[0, -1].detach(), -1).double()
    wrong = torch.cat([at_temperature_one[top], (1 - at_temperature_one[top].sum()).reshape(1)])
    assert _chi_square_p_value(grouped_counts, wrong) < 1e-6  # the check does see a missing temperature

"""Property tests: malformed input to PPOTrainer.step and generate gets a clear error (or the documented
behaviour) and never changes the model, the optimizer or the trainer's counters."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

CONTEXT = 256  # n_positions of the tiny GPT-2
VOCAB = 1024
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def trainer(model_path, tokenizer_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    cfg = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_consecutive_nonfinite_steps=10_000,
                    use_score_scaling=True)
    return PPOTrainer(cfg, model, None, tok)


def state_of(trainer):
    return ([p.detach().clone() for p in trainer.model.parameters()], trainer.current_step,
            dict(trainer.running.state_dict()), trainer.kl_ctl.value, len(trainer.optimizer.state))


def assert_same_state(trainer, before, steps_taken=0):
    params, step, running, kl, n_opt = before
    assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), params))
    assert trainer.current_step == step + steps_taken
    assert trainer.running.state_dict() == running and trainer.kl_ctl.value == kl
    assert len(trainer.optimizer.state) == n_opt


# --------------------------------------------------------------------------- step
BAD_TOKENS = {
    # kind -> (tensor builder, exception, message)
    "empty": (lambda: torch.tensor([], dtype=torch.long), ValueError, "empty"),
    "2-D": (lambda: torch.ones(2, 3, dtype=torch.long), ValueError, "1-D"),
    "0-D": (lambda: torch.tensor(5), ValueError, "1-D"),
    "float": (lambda: torch.ones(3), TypeError, "floats"),
    "bool": (lambda: torch.ones(3, dtype=torch.bool), TypeError, "booleans"),
    "meta": (lambda: torch.ones(3, dtype=torch.long, device="meta"), ValueError, "meta"),
    "negative id": (lambda: torch.tensor([3, -1, 4]), ValueError, "vocabulary"),
    "id past vocab": (lambda: torch.tensor([3, VOCAB, 4]), ValueError, "vocabulary"),
    "too long": (lambda: torch.full((CONTEXT + 1,), 7), ValueError, "context"),
    "list": (lambda: [3, 4, 5], (TypeError, ValueError), "torch.Tensor|1-D"),
}
BAD_SCORES = {
    "vector": (torch.tensor([1.0, 2.0]), ValueError, "scalar"),
    "string": ("0.5", TypeError, "number"),
    "None": (None, TypeError, "number"),
    "bool": (True, TypeError, "number"),
    "bool tensor": (torch.tensor(True), TypeError, "real number"),
    "complex": (1j, TypeError, "number"),
    "empty tensor": (torch.tensor([]), ValueError, "scalar"),
}
GOOD_SCORES = [1.0, 2, np.float32(0.5), torch.tensor(1.5), torch.tensor([0.5]), torch.tensor(3, dtype=torch.int32)]


def valid_batch(g):
    qs = [torch.randint(5, 900, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g) for _ in range(2)]
    rs = [torch.randint(5, 900, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g) for _ in range(2)]
    return qs, rs, [1.0, 0.0]


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    target=st.sampled_from(["queries", "responses"]),
    kind=st.sampled_from(sorted(BAD_TOKENS)),
    index=st.integers(0, 1),
)
def test_step_rejects_bad_tokens_without_side_effects(trainer, seed, target, kind, index):
    build, exc, match = BAD_TOKENS[kind]
    q, r, s = valid_batch(torch.Generator().manual_seed(seed))
    (q if target == "queries" else r)[index] = build()
    before = state_of(trainer)
    with pytest.raises(exc, match=match):
        trainer.step(q, r, s)
    assert_same_state(trainer, before)


@SETTINGS
@given(seed=st.integers(0, 2**16), kind=st.sampled_from(sorted(BAD_SCORES)), index=st.integers(0, 1))
def test_step_rejects_bad_scores_without_side_effects(trainer, seed, kind, index):
    bad, exc, match = BAD_SCORES[kind]
    q, r, s = valid_batch(torch.Generator().manual_seed(seed))
    s[index] = bad
    before = state_of(trainer)
    with pytest.raises(exc, match=match):
        trainer.step(q, r, s)
    assert_same_state(trainer, before)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    change=st.sampled_from(["drop", "extra", "tuple->tensor", "scores dict", "masks short", "mask values",
                            "mask shape"]),
)
def test_step_rejects_wrong_lengths_and_containers(trainer, seed, change):
    q, r, s = valid_batch(torch.Generator().manual_seed(seed))
    masks = None
    if change == "drop":
        q = q[:1]
    elif change == "extra":
        r = r + [torch.tensor([5, 6])]
    elif change == "tuple->tensor":
        q = torch.ones(2, 3, dtype=torch.long)
    elif change == "scores dict":
        s = {"a": 1.0, "b": 2.0}
    elif change == "masks short":
        masks = [torch.ones_like(r[0])]
    elif change == "mask values":
        masks = [torch.full_like(r[0], 2), torch.ones_like(r[1])]
    elif change == "mask shape":
        masks = [torch.ones(len(r[0]) + 1, dtype=torch.long), torch.ones_like(r[1])]
    before = state_of(trainer)
    with pytest.raises((ValueError, TypeError), match="batch_size|must be a list|response_masks"):
        trainer.step(q, r, s, masks)
    assert_same_state(trainer, before)


@SETTINGS
@given(seed=st.integers(0, 2**16), bad=st.sampled_from([math.nan, math.inf, -math.inf]), index=st.integers(0, 1))
def test_step_skips_nonfinite_scores_without_side_effects(trainer, seed, bad, index):
    q, r, s = valid_batch(torch.Generator().manual_seed(seed))
    s[index] = torch.tensor(bad) if seed % 2 else bad
    before = state_of(trainer)
    with pytest.warns(UserWarning, match="non-finite"):
        stats = trainer.step(q, r, s)
    assert stats["ppo/nonfinite/skipped"] == 1.0
    assert_same_state(trainer, before, steps_taken=1)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), score=st.sampled_from(GOOD_SCORES), as_tuple=st.booleans(),
       dtype=st.sampled_from([torch.long, torch.int32, torch.int16]))
def test_step_accepts_documented_input_forms(trainer, seed, score, as_tuple, dtype):
    q, r, s = valid_batch(torch.Generator().manual_seed(seed))
    q, r = [x.to(dtype) for x in q], [x.to(dtype) for x in r]
    s = [score, score]
    if as_tuple:
        q, r, s = tuple(q), tuple(r), tuple(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = trainer.step(q, r, s)
    assert stats["ppo/nonfinite/skipped"] == 0.0 and math.isfinite(stats["ppo/loss/total"])


# --------------------------------------------------------------------------- generate
@SETTINGS
@given(
    kind=st.sampled_from(["empty", "2-D batch", "float", "too long", "long + new tokens", "id past vocab", "not a tensor"]),
    as_list=st.booleans(),
)
def test_generate_rejects_bad_queries(trainer, kind, as_list):
    query = {
        "empty": torch.tensor([], dtype=torch.long),
        "2-D batch": torch.ones(2, 3, dtype=torch.long),
        "float": torch.ones(3),
        "too long": torch.full((CONTEXT + 5,), 7),
        "long + new tokens": torch.full((CONTEXT - 2,), 7),
        "id past vocab": torch.tensor([1, VOCAB + 3]),
        "not a tensor": "hello",
    }[kind]
    assume(not (kind == "2-D batch" and as_list))  # a 2-D tensor inside a list is the "1-D" error, tested above
    match = {"empty": "empty", "2-D batch": "1-D", "float": "floats", "too long": "context",
             "long + new tokens": "context", "id past vocab": "vocabulary", "not a tensor": "torch.Tensor"}[kind]
    before = state_of(trainer)
    with pytest.raises((ValueError, TypeError), match=match):
        trainer.generate([torch.tensor([5, 6]), query] if as_list else query, max_new_tokens=4, do_sample=False)
    assert_same_state(trainer, before)


def test_generate_empty_list_gives_empty_list(trainer):
    assert trainer.generate([], max_new_tokens=3) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_on_another_device_are_moved(model_path, tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1), model, None, tokenizer)
    assert trainer.current_device.type == "cuda"
    q = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]  # on the CPU
    r = trainer.generate(q, return_prompt=False, max_new_tokens=3, min_new_tokens=3, do_sample=True)
    stats = trainer.step(q, [x.cpu() for x in r], [torch.tensor(1.0).cuda(), 0.5])
    assert math.isfinite(stats["ppo/loss/total"])

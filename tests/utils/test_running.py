"""RunningMoments and PerPromptStatTracker against NumPy over every value seen, and the public paths they keep."""

from __future__ import annotations

import enum
import importlib
from collections import defaultdict

import numpy as np
import pytest
import torch

from rlft.functional.stats import merge_moments
from rlft.utils.running import PerPromptStatTracker, RunningMoments

BATCHES = [[1.0, 2.0, 4.0], [10.0], [-3.0, 0.5, 7.0, 2.0, 2.0], [0.25, 0.75]]


def test_merge_moments_equals_moments_of_the_concatenation():
    g = np.random.default_rng(0)
    a, b = g.normal(3, 2, 7), g.normal(-1, 5, 4)
    mean, var, count = merge_moments(a.mean(), a.var(), len(a), b.mean(), b.var(), len(b))
    both = np.concatenate([a, b])
    assert count == 11
    assert mean == pytest.approx(both.mean(), rel=1e-12)
    assert var == pytest.approx(both.var(), rel=1e-12)


def test_running_moments_match_numpy_over_all_updates():
    rm = RunningMoments()
    seen: list[float] = []
    for batch in BATCHES:
        batch_mean, batch_std = rm.update(torch.tensor(batch))
        seen += batch
        # TRL's convention: running mean and population variance of all values, sample (n - 1) std.
        assert rm.mean == pytest.approx(np.mean(seen), rel=1e-6, abs=1e-9)
        assert rm.var == pytest.approx(np.var(seen), rel=1e-6)
        assert rm.std == pytest.approx(np.std(seen, ddof=1), rel=1e-6)
        assert rm.count == pytest.approx(len(seen))
        # update() returns the moments of the batch itself (sample std; 0 for one value).
        assert batch_mean == pytest.approx(np.mean(batch), rel=1e-6)
        assert batch_std == pytest.approx(np.std(batch, ddof=1) if len(batch) > 1 else 0.0, rel=1e-6)


def test_running_moments_gather_merges_every_process():
    other = torch.tensor([5.0, 6.0, -2.0])  # what a second process would contribute
    rm = RunningMoments(gather=lambda xs: torch.cat([xs, other]))
    rm.update(torch.tensor([1.0, 2.0, 3.0]))
    everything = [1.0, 2.0, 3.0, 5.0, 6.0, -2.0]
    assert rm.mean == pytest.approx(np.mean(everything), rel=1e-6)
    assert rm.std == pytest.approx(np.std(everything, ddof=1), rel=1e-6)


def test_running_moments_state_round_trip():
    rm = RunningMoments()
    rm.update(torch.tensor(BATCHES[0]))
    clone = RunningMoments()
    clone.load_state_dict(rm.state_dict())
    for r in (rm, clone):
        r.update(torch.tensor(BATCHES[2]))
    assert clone.state_dict() == rm.state_dict()


def slow_tracker(history, buffer_size, min_count):
    """Per-prompt standardisation, recomputed from scratch for every update of ``history``."""
    window = defaultdict(list)
    out = []
    for prompts, rewards in history:
        adv = []
        for p in dict.fromkeys(prompts):  # first-seen order; the result does not depend on it
            window[p] = (window[p] + [r for q, r in zip(prompts, rewards) if q == p])[-buffer_size:]
        for p, r in zip(prompts, rewards):
            ref = np.array(rewards if len(window[p]) < min_count else window[p])
            adv.append((r - ref.mean()) / (ref.std() + 1e-6))
        out.append(np.array(adv))
    return out


def test_per_prompt_tracker_matches_slow_reference():
    history = [
        (["a", "a", "b"], [1.0, 3.0, 5.0]),  # "a" reaches min_count; "b" uses the batch
        (["b", "c", "a", "a"], [2.0, 0.0, 4.0, 8.0]),
        (["a"] * 5, [0.0, 1.0, 2.0, 3.0, 4.0]),  # the buffer keeps only the last 4 of "a"
        (["c", "b"], [1.0, -1.0]),
    ]
    tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    for (prompts, rewards), want in zip(history, slow_tracker(history, buffer_size=4, min_count=2)):
        np.testing.assert_allclose(tracker.update(prompts, rewards), want, rtol=1e-12, atol=1e-12)
    assert list(tracker.stats["a"]) == [1.0, 2.0, 3.0, 4.0]
    stats = tracker.get_stats()
    assert stats["a"] == {"mean": 2.5, "std": pytest.approx(np.std([1.0, 2.0, 3.0, 4.0])), "count": 4}


def test_per_prompt_tracker_state_round_trip():
    tracker = PerPromptStatTracker(4, 2)
    tracker.update(["a", "a", "b"], [1.0, 3.0, 5.0])
    clone = PerPromptStatTracker(4, 2)
    clone.load_state_dict(tracker.state_dict())
    np.testing.assert_array_equal(clone.update(["a", "b"], [1.0, 2.0]), tracker.update(["a", "b"], [1.0, 2.0]))


@pytest.mark.parametrize("module", ["rlft.trainer", "rlft.trainer.utils"])
def test_trl_paths_resolve_to_the_moved_classes(module):
    mod = importlib.import_module(module)
    assert mod.RunningMoments is RunningMoments
    if module == "rlft.trainer.utils":
        assert mod.PerPromptStatTracker is PerPromptStatTracker


#: Classes that may sit in rlft.functional: a custom autograd function is a function with a hand-written
#: backward; a NamedTuple is an immutable result; an Enum names options.
STATELESS_KINDS = (torch.autograd.Function, tuple, enum.Enum)


def test_functional_holds_no_stateful_class():
    import inspect
    import pkgutil

    import rlft.functional as functional

    for info in pkgutil.iter_modules(functional.__path__):
        mod = importlib.import_module(f"rlft.functional.{info.name}")
        classes = [name for name, obj in vars(mod).items() if inspect.isclass(obj) and obj.__module__ == mod.__name__
                   and not issubclass(obj, STATELESS_KINDS)]
        assert not classes, f"rlft.functional.{info.name} defines classes {classes}: stateful code belongs outside functional/"

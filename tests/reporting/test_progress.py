"""TrainingProgress shows the chosen metrics and tokens/s; graceful_interrupt turns Ctrl-C into a stop flag."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import pytest

from rlft.reporting import TrainingProgress, graceful_interrupt


def test_postfix_shows_chosen_metrics_tokens_and_time_left():
    out = io.StringIO()
    with TrainingProgress(10, "ppo", keys=("env/reward_mean", "objective/kl", "ppo/loss/total"), file=out) as bar:
        bar.update(1, tokens=100, **{"env/reward_mean": 0.5, "objective/kl": 0.0123, "other": 3})
        time.sleep(0.01)
        bar.update(1, tokens=100, **{"ppo/loss/total": 2e-5})
        shown = bar.postfix()
        assert shown["reward_mean"] == "0.5" and shown["kl"] == "0.0123" and shown["total"] == "2.00e-05"
        assert "other" not in shown and float(shown["tok/s"]) > 0
        assert bar.n == 2 and bar.seconds_left is not None and bar.seconds_left >= 0
    text = out.getvalue()
    assert "ppo" in text and "reward_mean=0.5" in text and "tok/s" in text and "2/10" in text


def test_clashing_short_names_keep_the_full_key_and_resume_starts_at_initial():
    with TrainingProgress(5, keys=("a/loss", "b/loss"), initial=3, disable=True) as bar:
        bar.update(1, **{"a/loss": 1, "b/loss": 2})
        assert bar.postfix() == {"a/loss": "1", "b/loss": "2"}
        assert bar.n == 4


def test_first_ctrl_c_sets_the_flag_second_raises():
    err = io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    with graceful_interrupt(file=err) as flag:
        assert not flag
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert flag.stop and flag.count == 1 and "Stopping" in err.getvalue()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_is_a_plain_flag():
    seen = []

    def run():
        with graceful_interrupt() as flag:
            seen.append(flag.stop)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [False]


def test_labels_can_be_chosen():
    with TrainingProgress(3, keys={"reward": "env/reward_mean", "loss": "ppo/loss/total"}, disable=True) as bar:
        bar.update(1, **{"env/reward_mean": 0.25, "ppo/loss/total": 1.5, "other": 1})
        assert bar.postfix() == {"reward": "0.25", "loss": "1.5"}

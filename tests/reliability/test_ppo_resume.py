"""PPOTrainer.save_checkpoint / load_checkpoint: a run interrupted after step k and resumed ends
exactly where an uninterrupted run ends (same parameters, same stats), for full and peft models."""

import json
import warnings

import numpy as np
import pytest

from rlft.utils.checkpoint import COMPLETE_MARKER, latest_checkpoint

from ._ppo_helpers import make_ppo, max_abs_diff, train_until, trainable

N_STEPS, SAVE_AT = 5, 2  # 3 batches per epoch: the resume crosses an epoch boundary


def _comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.startswith("time/")}


def _assert_same_stats(a: dict, b: dict):
    a, b = _comparable(a), _comparable(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "peft"])
def test_resumed_run_matches_uninterrupted_bitwise(model_path, tokenizer, tmp_path, peft):
    warnings.simplefilter("ignore", UserWarning)
    straight = make_ppo(model_path, tokenizer, peft=peft)
    history = train_until(straight, N_STEPS)

    first = make_ppo(model_path, tokenizer, peft=peft)
    train_until(first, SAVE_AT, save_dir=tmp_path, save_every=SAVE_AT)
    del first  # the "crash"
    resumed = make_ppo(model_path, tokenizer, peft=peft)
    ckpt = resumed.load_checkpoint(tmp_path)
    assert ckpt == tmp_path / f"checkpoint-{SAVE_AT}" and resumed.current_step == SAVE_AT
    rest = train_until(resumed, N_STEPS)

    assert len(rest) == N_STEPS - SAVE_AT
    # Bitwise: same kernels, same order of operations, same random streams on CPU.
    assert max_abs_diff(trainable(straight), trainable(resumed)) == 0.0
    _assert_same_stats(history[-1], rest[-1])
    _assert_same_stats(history[SAVE_AT], rest[0])
    assert resumed.kl_ctl.value == straight.kl_ctl.value
    assert resumed.running.state_dict() == straight.running.state_dict()
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()
    assert resumed.dataloader.state_dict() == straight.dataloader.state_dict()


def test_resume_without_restoring_the_rng_would_differ(model_path, tokenizer, tmp_path):
    """The bitwise test above can fail: dropping the saved random states breaks it."""
    warnings.simplefilter("ignore", UserWarning)
    straight = make_ppo(model_path, tokenizer)
    train_until(straight, 3)
    first = make_ppo(model_path, tokenizer)
    train_until(first, 1, save_dir=tmp_path, save_every=1)
    for rng_file in (tmp_path / "checkpoint-1").glob("random_states_*.pkl"):
        rng_file.unlink()
    (tmp_path / "checkpoint-1" / COMPLETE_MARKER).unlink()  # edited by hand: re-mark it complete
    from rlft.utils.checkpoint import write_complete_marker

    write_complete_marker(tmp_path / "checkpoint-1")
    resumed = make_ppo(model_path, tokenizer)
    resumed.load_checkpoint(tmp_path / "checkpoint-1")
    train_until(resumed, 3)
    assert max_abs_diff(trainable(straight), trainable(resumed)) > 0


def test_checkpoint_contents_and_peft_size(model_path, tokenizer, tmp_path):
    warnings.simplefilter("ignore", UserWarning)
    full = make_ppo(model_path, tokenizer)
    train_until(full, 1)
    path = full.save_checkpoint(tmp_path / "full")
    names = {p.name for p in path.iterdir()}
    assert {"policy.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
            "ppo_trainer_state.json", COMPLETE_MARKER} <= names
    state = json.loads((path / "ppo_trainer_state.json").read_text())
    assert state["step"] == 1 and state["dataloader"] == {"epoch": 0, "batches": 1, "started": True}
    from safetensors import safe_open

    with safe_open(str(path / "policy.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == {n for n, _ in full.model.named_parameters()}  # every parameter, tied ones once

    lora = make_ppo(model_path, tokenizer, peft=True)
    train_until(lora, 1)
    lpath = lora.save_checkpoint(tmp_path / "lora")
    with safe_open(str(lpath / "policy.safetensors"), "pt") as f:
        lsaved = set(f.keys())
    assert lsaved == {n for n, p in lora.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "v_head" in n for n in lsaved)
    assert (lpath / "policy.safetensors").stat().st_size < (path / "policy.safetensors").stat().st_size / 5


def test_load_checkpoint_picks_latest_complete_and_prunes(model_path, tokenizer, tmp_path):
    warnings.simplefilter("ignore", UserWarning)
    trainer = make_ppo(model_path, tokenizer, save_total_limit=2)
    train_until(trainer, 4, save_dir=tmp_path, save_every=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    # a save interrupted before its rename leaves only a hidden folder: ignored
    (tmp_path / ".checkpoint-5.incomplete").mkdir()
    # a folder with a checkpoint name but no marker (e.g. copied half-way): ignored
    (tmp_path / "checkpoint-6").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    fresh = make_ppo(model_path, tokenizer)
    assert fresh.load_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert max_abs_diff(trainable(fresh), trainable(trainer)) == 0.0
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        fresh.load_checkpoint(tmp_path / "checkpoint-6")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="No complete checkpoint-"):
        fresh.load_checkpoint(tmp_path / "empty_run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fresh.load_checkpoint(tmp_path / "nowhere")

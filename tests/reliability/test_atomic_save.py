"""A process killed (SIGKILL) in the middle of save_checkpoint never leaves a checkpoint that looks
complete but is not: the previous checkpoint is found and loads."""

import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlft.utils.checkpoint import (
    atomic_directory,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    write_complete_marker,
)

from ._ppo_helpers import make_ppo, max_abs_diff, trainable

SCRIPT = Path(__file__).with_name("_kill_during_save.py")
ROOT = Path(__file__).resolve().parents[2]


def run_child(model_dir, run_dir, kill_point, out_dir, kill_after=None):
    cmd = [sys.executable, str(SCRIPT), model_dir, str(run_dir), kill_point, str(out_dir)]
    if kill_after is None:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, cwd=ROOT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    proc.stdout.readline()  # the first checkpoint exists
    time.sleep(kill_after)
    proc.kill()
    proc.communicate(timeout=60)
    return proc


@pytest.fixture
def model_dir(model_path, tokenizer_path):
    return model_path("gpt2")


@pytest.mark.parametrize("kill_point", [
    "weights",  # the default suite kills one child (each takes several seconds); the other points are slow
    pytest.param("marker", marks=pytest.mark.slow),
    pytest.param("rename", marks=pytest.mark.slow),
    pytest.param("overwrite", marks=pytest.mark.slow),
])
def test_kill_during_save_keeps_previous_checkpoint(model_dir, tokenizer, tmp_path, kill_point):
    run = tmp_path / "run"
    out = run_child(model_dir, run, kill_point, tmp_path)
    assert out.returncode == -9, out.stdout + out.stderr[-3000:]  # SIGKILLed mid-save
    assert "saved 1" in out.stdout
    if kill_point == "overwrite":
        assert not (run / "checkpoint-1").exists()  # killed between the renames: only the copy aside remains
    else:
        assert not is_complete(run / "checkpoint-2") and latest_checkpoint(run).name == "checkpoint-1"
    warnings.simplefilter("ignore", UserWarning)
    trainer = make_ppo(lambda arch: model_dir, tokenizer, scheduler=False)
    loaded = trainer.load_checkpoint(run)
    assert loaded.name in ("checkpoint-1", ".checkpoint-1.replaced")
    assert trainer.current_step == 1
    assert max_abs_diff(trainable(trainer), load_file(str(tmp_path / "expected.safetensors"))) == 0.0
    # the next save cleans up after the killed one
    trainer.save_checkpoint(run)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1"]
    assert not any(p.name.endswith((".incomplete", ".replaced")) for p in run.iterdir())


@pytest.mark.slow
def test_kill_at_random_times_always_leaves_a_loadable_checkpoint(model_dir, tokenizer, tmp_path):
    rng = random.Random(0)
    warnings.simplefilter("ignore", UserWarning)
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        run_child(model_dir, run, "loop", tmp_path, kill_after=rng.uniform(0.0, 1.5))
        for path in run.iterdir():  # every visible checkpoint folder is complete
            if path.name.startswith("checkpoint-"):
                assert is_complete(path), path
        trainer = make_ppo(lambda arch: model_dir, tokenizer, scheduler=False)
        trainer.load_checkpoint(run)
        assert trainer.current_step >= 1


def test_atomic_directory_success_failure_and_truncation(tmp_path):
    final = tmp_path / "checkpoint-3"
    with atomic_directory(final, marker_extra={"step": 3}) as tmp:
        assert tmp.name == ".checkpoint-3.incomplete" and not final.exists()
        (tmp / "a.bin").write_bytes(b"x" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("hello")
    assert is_complete(final) and not tmp.exists()
    # failure inside: nothing is left, the old folder is untouched
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "a.bin").write_bytes(b"y")
        raise RuntimeError("boom")
    assert not tmp.exists() and (final / "a.bin").read_bytes() == b"x" * 100
    # overwrite replaces the whole folder
    with atomic_directory(final) as tmp:
        (tmp / "c.bin").write_bytes(b"z")
    assert sorted(p.name for p in final.iterdir()) == ["c.bin", "checkpoint_complete.json"]
    with pytest.raises(FileExistsError), atomic_directory(final, overwrite=False):
        pass
    # a truncated file (e.g. an interrupted copy of the run folder) makes the checkpoint incomplete
    with open(final / "c.bin", "wb") as f:
        f.write(b"")
    assert not is_complete(final) and latest_checkpoint(tmp_path) is None
    write_complete_marker(final)
    assert latest_checkpoint(tmp_path) == final


def test_transformers_style_checkpoints_are_recognised(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()  # killed before trainer_state.json
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-30").mkdir()  # killed while writing trainer_state.json
    (tmp_path / "checkpoint-30" / "trainer_state.json").write_text('{"global_st')
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"

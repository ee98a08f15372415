"""Value-head models on disk: saves are atomic, and loading a folder with missing or damaged files
either restores exactly what was saved or raises an error that names the folder or file."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlft import AutoModelForCausalLMWithValueHead
from rlft.models.modeling_base import VALUE_HEAD_FILE

FILES = ("config.json", "generation_config.json", "model.safetensors", VALUE_HEAD_FILE)


@pytest.fixture(scope="module")
def saved(model_path, tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_path("gpt2"))
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == sorted(FILES)
    return folder, model.v_head.summary.weight.detach().clone()


def _damage(path: Path, how: str, where: float, byte: int) -> None:
    data = bytearray(path.read_bytes())
    cut = int(where * (len(data) - 1))
    if how == "truncate":
        data = data[:cut]
    elif how == "flip":
        data[cut] ^= byte or 1  # a changed byte anywhere: header or tensor data
    elif how == "garbage":
        data = bytearray(b"\x00garbage" * (1 + cut % 7))
    path.write_bytes(bytes(data))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    removed=st.sets(st.sampled_from(FILES)),
    damaged=st.sampled_from([None, "config.json", "model.safetensors", VALUE_HEAD_FILE]),
    how=st.sampled_from(["truncate", "flip", "garbage"]),
    where=st.floats(0, 1),
    byte=st.integers(0, 255),
)
def test_missing_or_damaged_files_never_load_silently_wrong(saved, removed, damaged, how, where, byte):
    folder, v_head = saved
    work = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(folder, work)
    try:
        for name in removed:
            (work / name).unlink()
        if damaged is not None and damaged not in removed:
            _damage(work / damaged, how, where, byte)
        try:
            model = AutoModelForCausalLMWithValueHead.from_pretrained(str(work))
        except (OSError, ValueError) as err:  # FileNotFoundError is an OSError
            assert str(work) in str(err), err  # the message says where
            return
        # It loaded: that is only allowed when the weights are intact...
        assert "config.json" not in removed and "model.safetensors" not in removed
        if VALUE_HEAD_FILE in removed:
            return  # documented: no value-head file means a fresh value head (a plain LM folder)
        assert damaged != VALUE_HEAD_FILE or how == "flip"
        # ...and then the value head is exactly the saved one (a flipped byte is caught by the checksum)
        assert torch.equal(model.v_head.summary.weight, v_head)
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


def test_flipped_value_head_byte_is_caught_by_the_checksum(saved, tmp_path):
    folder, _ = saved
    work = tmp_path / "model"
    shutil.copytree(folder, work)
    path = work / VALUE_HEAD_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{VALUE_HEAD_FILE} is corrupt.*checksum"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(work))


def test_wrong_value_head_shape_names_the_file(saved, tmp_path):
    from safetensors.torch import save_file

    folder, _ = saved
    work = tmp_path / "model"
    shutil.copytree(folder, work)
    save_file({"v_head.summary.weight": torch.zeros(1, 3), "v_head.summary.bias": torch.zeros(1)}, str(work / VALUE_HEAD_FILE))
    with pytest.raises(ValueError, match=f"{VALUE_HEAD_FILE}.*shape"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(work))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))


def test_failed_save_leaves_the_previous_folder(saved, tmp_path, monkeypatch):
    import rlft.models.modeling_base as base

    folder, v_head = saved
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    (target / "tokenizer.json").write_text("{}")  # a file the model save does not own
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    with torch.no_grad():
        model.v_head.summary.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(base, "_save_wrapper_file", crash)  # dies after the transformers weights were written
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left
    monkeypatch.undo()
    model.save_pretrained(target)  # now it works, and keeps the tokenizer file
    assert (target / "tokenizer.json").read_text() == "{}"
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(target))
    assert torch.equal(reloaded.v_head.summary.weight, v_head + 1.0)


def test_resave_drops_old_shards_in_both_modes(saved, tmp_path):
    folder, _ = saved
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(folder))
    for nested in (False, True):
        target = tmp_path / f"model{int(nested)}"
        model.save_pretrained(target, max_shard_size="200KB")
        if nested:
            (target / "notes").mkdir()  # not a plain model folder: files are moved in one by one
            (target / "notes" / "a.txt").write_text("keep")
        assert (target / "model.safetensors.index.json").exists()
        model.save_pretrained(target)
        names = sorted(p.name for p in target.iterdir())
        assert not any(n.startswith("model-") or n.endswith("index.json") for n in names), names
        assert "model.safetensors" in names
        AutoModelForCausalLMWithValueHead.from_pretrained(str(target))
        if nested:
            assert (target / "notes" / "a.txt").read_text() == "keep"
            assert not any(n.startswith(".rlft-save") for n in names)

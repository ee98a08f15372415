"""RunDir: folder safety, config round trip, metrics lines (conversion, flushing, truncation), samples, model card."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import yaml

from rlft.reporting import RunDir


def test_creates_folder_and_refuses_a_non_empty_one(tmp_path):
    run = RunDir(tmp_path / "a" / "run")
    assert run.path.is_dir()
    run.log_metrics(0, {"loss": 1.0})
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        RunDir(run.path)
    # resume keeps the file; overwrite empties the folder
    assert RunDir(run.path, resume=True).read_metrics() == [{"step": 0, "loss": 1.0}]
    assert RunDir(run.path, overwrite=True).read_metrics() == []


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="does not look like a run directory"):
        RunDir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        RunDir(tmp_path / "file")
    with pytest.raises(ValueError, match="contradict"):
        RunDir(tmp_path / "new", resume=True, overwrite=True)


class Color:
    def __str__(self):
        return "blue"


@dataclass
class Cfg:
    lr: float = 1e-3
    name: str = "x"
    sizes: list = field(default_factory=lambda: [1, 2])
    extra: dict = field(default_factory=lambda: {"a": {"b": 1}})
    color: object = field(default_factory=Color)
    derived: int = field(default=0, init=False)


def test_save_config_dataclass_and_dict(tmp_path):
    run = RunDir(tmp_path)
    path = run.save_config(Cfg(), header="rlft test\nsecond line")
    text = path.read_text()
    assert text.startswith("# rlft test\n# second line\n")
    data = yaml.safe_load(text)
    assert data == {"lr": 1e-3, "name": "x", "sizes": [1, 2], "extra": {"a": {"b": 1}}, "color": "blue"}
    assert Cfg(**{k: v for k, v in data.items() if k != "color"}).lr == 1e-3  # loads back into the class
    assert run.load_config() == data
    run.save_config({"steps": 3, "p": tmp_path}, name="other.yaml")
    assert yaml.safe_load((tmp_path / "other.yaml").read_text()) == {"steps": 3, "p": str(tmp_path)}
    with pytest.raises(TypeError, match="dataclass instance or a dict"):
        run.save_config([1, 2])


def test_log_metrics_converts_and_flushes_each_line(tmp_path):
    run = RunDir(tmp_path)
    row = run.log_metrics(3, {
        "t": torch.tensor(0.5), "t1": torch.tensor([2.0]), "np": np.float32(0.25), "arr1": np.array([[4.0]]),
        "vector": np.arange(3.0), "tvec": torch.ones(2), "nan": float("nan"), "inf": torch.tensor(math.inf),
        "i": 7, "b": True, "s": "text", "none": None, "obj": object(), "step": 99,
    })
    assert row == {"step": 3, "t": 0.5, "t1": 2.0, "np": 0.25, "arr1": 4.0, "nan": None, "inf": None,
                   "i": 7, "b": True, "s": "text", "none": None}
    # the line is on disk before the next call (another process reading it sees it)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [row]
    run.log_metrics(4, {"loss": 0.1})
    assert [r["step"] for r in run.read_metrics()] == [3, 4]


def test_read_metrics_ignores_a_cut_last_line_and_truncate(tmp_path):
    run = RunDir(tmp_path)
    for step in range(1, 6):
        run.log_metrics(step, {"x": float(step)})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 6, "x"')  # a crash mid-write
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4, 5]
    assert run.truncate_metrics(3) == 2
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.metrics_path.read_text().endswith("}\n")
    run.log_metrics(4, {"x": 4.0})
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    with open(run.metrics_path, "a") as f:
        f.write("garbage\n{\"step\": 9}\n")
    with pytest.raises(ValueError, match="line 5 is not JSON"):
        run.read_metrics()


def test_samples_and_model_card(tmp_path):
    run = RunDir(tmp_path)
    path = run.save_samples("before", [{"query": "a", "score": torch.tensor(1.5), "ids": torch.tensor([1, 2])}])
    assert path == tmp_path / "samples" / "before.jsonl"
    run.append_samples("before", [{"query": "b", "score": np.float64(2.0)}])
    assert run.read_samples("before") == [{"query": "a", "score": 1.5, "ids": [1, 2]}, {"query": "b", "score": 2.0}]
    run.save_samples("before", [{"query": "c"}])
    assert run.read_samples("before") == [{"query": "c"}]
    with pytest.raises(ValueError, match="plain file name"):
        run.save_samples("../x", [])
    card = run.write_model_card("My model", "Trained **well**.", tags=["ppo"]).read_text()
    assert card.startswith("---\nlibrary_name: rlft\ntags:\n- rlft\n- ppo\n---\n\n# My model\n\nTrained **well**.")


def test_model_card_lists_each_tag_once_and_replaces_peft_readme_in_model(tmp_path):
    run = RunDir(tmp_path / "run")
    run.model_dir.mkdir()
    (run.model_dir / "README.md").write_text("- **Developed by:** [More Information Needed]\n")  # peft's template
    card = run.write_model_card("My model", "Body.", tags=["rlft", "ppo", "ppo"]).read_text()
    assert card.count("- rlft\n") == 1 and card.count("- ppo\n") == 1
    assert (run.model_dir / "README.md").read_text() == card

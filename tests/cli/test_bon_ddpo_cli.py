"""`rlft bon` and `rlft ddpo` end to end on the tiny fixtures."""

from __future__ import annotations

import pytest
import torch
import yaml

from rlft.cli import main
from rlft.reporting import RunDir

from . import rewards

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bon_args(model_path, data_files, out, *extra):
    return ["bon", "--model_name_or_path", model_path("gpt2"), "--dataset", data_files["prompts"], "--output_dir", str(out),
            "--reward", "tests.cli.rewards:count_e", "--sample_size", "3", "--max_new_tokens", "6", "--seed", "3", *extra]


def test_bon_writes_the_best_candidates_with_their_scores(model_path, data_files, tmp_path, capsys):
    out = tmp_path / "bon"
    assert main(bon_args(model_path, data_files, out, "--max_prompts", "3", "--n_candidates", "2")) == 0, capsys.readouterr().err
    run = RunDir(out, resume=True)
    rows, metrics = run.read_samples("best"), run.read_metrics()
    assert len(rows) == 3 and [m["step"] for m in metrics] == [1, 2, 3]
    for row, m in zip(rows, metrics):
        assert len(row["candidates"]) == 3 and len(row["best"]) == 2
        assert row["scores"] == pytest.approx([t.count("e") / 10 for t in row["candidates"]])
        assert row["best_scores"] == sorted(row["scores"], reverse=True)[:2]
        assert all(t.startswith(row["prompt"]) for t in row["candidates"])
        assert m["score/best"] == max(row["scores"]) and m["score/first"] == row["scores"][0]
    assert (out / "plots" / "bon_scores.png").read_bytes()[:8] == PNG_MAGIC
    assert "One sample against the best of n" in (out / "report.html").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["n_candidates"] == 2


def test_bon_resume_continues_with_the_same_samples(model_path, data_files, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(bon_args(model_path, data_files, whole, "--max_prompts", "3", "--no_plots")) == 0
    assert main(bon_args(model_path, data_files, split, "--max_prompts", "2", "--no_plots")) == 0
    assert main(["bon", "--output_dir", str(split), "--resume", "--max_prompts", "3"]) == 0
    a, b = RunDir(whole, resume=True), RunDir(split, resume=True)
    assert b.read_samples("best") == a.read_samples("best")
    assert [m["step"] for m in b.read_metrics()] == [1, 2, 3]


@pytest.fixture
def one_thread():
    # The tiny UNet is dominated by thread overhead on a shared CPU; one thread is several times faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_ddpo_tiny_run_and_resume(tmp_path, one_thread, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "ddpo"
    small = ["--sample_num_steps", "2", "--num_samples", "2", "--reward", "darkness"]
    assert main(["ddpo", "--tiny", "--output_dir", str(out), "--num_epochs", "1", *small]) == 0, capsys.readouterr().err
    run = RunDir(out, resume=True)
    rows = run.read_metrics()
    rewards_rows = [r for r in rows if "reward" in r]
    loss_rows = [r for r in rows if "loss" in r]
    assert len(rewards_rows) == 1 and len(loss_rows) == 2  # 2 samples / train_batch_size 1 = 2 optimizer steps
    assert 0 <= rewards_rows[0]["reward"] <= 1
    before = run.read_samples("before")
    assert len(before) == 2 and (out / before[0]["image"]).read_bytes()[:8] == PNG_MAGIC
    assert before[0]["reward"] == pytest.approx(1 - _mean_pixel(out / before[0]["image"]), abs=2e-3)
    assert (out / "model" / "model_index.json").is_file()
    assert (out / "checkpoints" / "checkpoint_0").is_dir()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # two plots and the before/after grid

    assert main(["ddpo", "--output_dir", str(out), "--resume", "--num_epochs", "2"]) == 0
    rows = RunDir(out, resume=True).read_metrics()
    assert [r["epoch"] for r in rows if "reward" in r] == [0, 1]
    assert [r["step"] for r in rows if "loss" in r] == [0, 1, 2, 3]
    assert RunDir(out, resume=True).read_samples("before") == before  # the untrained samples are kept


def _mean_pixel(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return float(np.asarray(im.convert("RGB"), dtype=np.float64).mean() / 255)

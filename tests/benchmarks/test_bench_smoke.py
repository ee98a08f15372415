"""The benchmark's fixtures build, and one rlft workload runs in-process for a step (nothing is timed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from workloads import fixtures, spec, worker  # noqa: E402


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return str(fixtures.build_all(tmp_path_factory.mktemp("bench-fixtures")))


def test_fixtures_are_fixed_and_load(fixture_dir, tmp_path):
    tok = fixtures.load_tokenizer(fixture_dir)
    data = fixtures.load_data(fixture_dir)
    assert len(data["texts"]) == fixtures.N_TEXTS and len(data["pairs"]["prompt"]) == fixtures.N_PAIRS
    assert all(4 <= len(p) <= 12 for p in data["prompts"])
    for arch in fixtures.ARCHS:
        model = fixtures.load_model(fixture_dir, arch)
        assert model.config.vocab_size == fixtures.VOCAB
        assert 4.5e6 < sum(p.numel() for p in model.parameters()) < 6e6  # "about 5M parameters"
    # a second build with the same seed gives the same data and weights
    again = fixtures.build_all(tmp_path / "again")
    assert fixtures.load_data(again) == data
    assert tok("the value")["input_ids"] == fixtures.load_tokenizer(again)("the value")["input_ids"]
    import torch

    a = torch.load(Path(fixture_dir) / "gpt2.causal.pt", weights_only=True)
    b = torch.load(Path(again) / "gpt2.causal.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workload,arch", [("dpo", "gpt2"), ("best_of_n", "gpt2"), ("ppo_peft_ref", "llama")])
def test_one_rlft_workload_runs_one_step(fixture_dir, workload, arch, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        result = worker.main(["--impl", "rlft", "--workload", workload, "--fixtures", fixture_dir, "--arch", arch,
                              "--warmup", "1", "--steps", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith(worker.RESULT_PREFIX)][-1]
    assert json.loads(line[len(worker.RESULT_PREFIX):])["workload"] == workload
    assert result["tokens"] > 0 and result["model_flops"] > 0 and len(result["step_s"]) == 1
    assert result["peak_rss_delta_mib"] >= 0 and 0 <= result["foreign_cpu"] <= 1


def test_every_workload_has_both_implementations():
    from workloads import impl_rlft, impl_trl

    assert {spec.base_name(n) for n in spec.WORKLOADS} == set(impl_rlft.RUNNERS) == set(impl_trl.RUNNERS)


def test_matmul_peak_is_the_best_kernel_and_mfu_is_restated_per_kernel():
    import compare
    import torch
    from workloads import measure

    peak = measure.matmul_peak_flops("cpu", seconds_per_size=0.01)
    kernels = {key.split(" ")[0] for key in peak["rates"]}
    assert "matmul" in kernels and ("onednn" in kernels) == torch.backends.mkldnn.is_available()
    assert peak["peak_flops"] == max(peak["rates"].values()) == max(peak["kernel_peaks"].values())
    # a table row's MFU, restated against a kernel with half the best peak, doubles
    fake = {"peak_flops": 400e9, "kernel_peaks": {"matmul": 200e9, "onednn": 400e9}}
    row = {"workload": "ppo", "sides": {"rlft": {"mfu": 0.25}, "trl": {"mfu": 0.10}}}
    assert "matmul kernel's peak alone (200.0 GFLOP/s): ppo 50.0% / 20.0%" in compare.format_mfu_by_kernel([row], fake)
    assert compare.format_mfu_by_kernel([row], {"peak_flops": 400e9, "kernel_peaks": {"matmul": 400e9}}) == ""


def test_profile_counts_onednn_linear_as_matmul():
    """rlft's linear layers run as ``mkldnn::_linear_pointwise``: the profile groups it with the matmuls."""
    from types import SimpleNamespace

    events = [SimpleNamespace(key="mkldnn::_linear_pointwise", self_cpu_time_total=3e6),
              SimpleNamespace(key="aten::mm", self_cpu_time_total=1e6),
              SimpleNamespace(key="aten::mul", self_cpu_time_total=1e6)]
    breakdown = worker._profile_breakdown(SimpleNamespace(key_averages=lambda: events), wall=10.0)
    assert breakdown["categories"]["matmul"] == pytest.approx(0.4)
    assert breakdown["categories"]["python / framework (outside ops)"] == pytest.approx(0.5)
    assert breakdown["top_ops"][0] == ("mkldnn::_linear_pointwise", pytest.approx(0.3))

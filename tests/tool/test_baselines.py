"""Baselines: compared with a tolerance, mismatches named with both versions, corrupt files refused."""
import pytest

from harness.measure import baselines
from harness.util.errors import HarnessError

VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0", "bitsandbytes": "0.50.2"}


def record(**figures):
    base = {"static_allocated_bytes": 5_920_000_000, "peak_allocated_bs1_bytes": 6_950_000_000,
            "status_bs4": "ok", "step_time_bs1_ms": 800.0, "host_rss_bs1_bytes": 2_600_000_000}
    return {"case": "qwen2.5-vl-7b-nf4-dq-r64", "gpu": "nvidia-h200", "versions": VERSIONS, "figures": {**base, **figures}}


def test_figures_within_tolerance_pass_and_times_and_host_memory_do_not_gate():
    measured = record(static_allocated_bytes=5_950_000_000, step_time_bs1_ms=2000.0, host_rss_bs1_bytes=9_000_000_000)
    assert baselines.compare(measured, record()) == []


def test_a_memory_regression_names_figure_values_and_versions():
    measured = {**record(peak_allocated_bs1_bytes=7_500_000_000), "versions": {**VERSIONS, "transformers": "5.23.0"}}
    (problem,) = baselines.compare(measured, record())
    assert problem.startswith("qwen2.5-vl-7b-nf4-dq-r64: peak_allocated_bs1_bytes measured 6.985 GiB vs baseline 6.473 GiB")
    assert "baseline versions torch 2.11.0, transformers 5.17.0" in problem
    assert "measured versions torch 2.11.0, transformers 5.23.0" in problem


def test_oom_versus_success_must_match():
    (problem,) = baselines.compare(record(status_bs4="oom"), record())
    assert "status_bs4 measured 'oom' vs baseline 'ok'" in problem


def test_a_missing_baseline_reads_as_none_and_a_corrupt_one_is_refused(tmp_path):
    assert baselines.read_baseline(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(HarnessError, match=r"baseline .*bad.json is not valid JSON .* --update-baselines"):
        baselines.read_baseline(bad)


def test_writing_a_baseline_round_trips(tmp_path):
    path = baselines.baseline_path(tmp_path, "nvidia-h200-140gib-cuda13.0", "case-a")
    baselines.write_baseline(path, record())
    assert baselines.read_baseline(path) == record()


def test_a_small_figure_moved_by_one_allocator_block_passes_but_a_real_change_does_not():
    small = record(static_allocated_bytes=32 * 2**20)
    assert baselines.compare(record(static_allocated_bytes=34 * 2**20), small) == []
    (problem,) = baselines.compare(record(static_allocated_bytes=80 * 2**20), small)
    assert "static_allocated_bytes" in problem and "at least 32 MiB" in problem


def test_reserved_memory_is_recorded_but_does_not_gate():
    assert baselines.compare(record(static_reserved_bytes=4 * 2**30), record(static_reserved_bytes=2**30)) == []

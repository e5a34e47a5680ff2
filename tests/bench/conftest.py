"""The benchmark tier: `pytest -m gpu --benchmark-save=NAME`, then `--benchmark-compare` (pytest-benchmark).

Timings are synchronised with the GPU and measured in pedantic mode after warm-up rounds; each benchmark's
extra_info carries its settings and peak VRAM, machine_info the GPU fingerprint and library versions.
"""
from __future__ import annotations

import pytest

from harness.measure import probe
from harness.util import env


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gpu_fingerprint"] = env.gpu_fingerprint()
    machine_info["library_versions"] = env.library_versions()


@pytest.fixture
def timed(benchmark):
    """The pytest-benchmark fixture, refusing to run disabled (it records nothing then)."""
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled here (--benchmark-disable, or -n/--dist): run the benchmarks serially")
    return benchmark


@pytest.fixture
def peak_vram():
    """Reset the GPU's peak counter; return a function reading the peak since, in bytes."""
    import torch

    probe.release()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated

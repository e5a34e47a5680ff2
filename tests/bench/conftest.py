"""The benchmark tier: `pytest -m gpu --benchmark-save=NAME`, then `--benchmark-compare` (pytest-benchmark).

Timings are synchronised with the GPU and measured in pedantic mode after warm-up rounds; each benchmark's
extra_info carries its settings and peak VRAM, machine_info the GPU fingerprint and library versions.

Started beside the rest of the GPU tier (.ci/gpu-run does), the session waits before its first test until the
file $QLORA_HARNESS_START_AFTER exists: its imports, collection and CUDA start overlap the tier, and so does what no
benchmark times: it asks for the benchmark checkpoint's files to be read into the page cache meanwhile, and loads the
model once, untimed, as soon as the checkpoint is built (the load benchmark's warm-up round, which it then skips:
the first load of a process imports the model's code and starts the 4-bit kernels). Nothing it times overlaps the tier.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.measure import probe
from harness.measure.matrix import BENCHMARK_CASE
from harness.plugin import phases
from harness.util import env

START_AFTER = "QLORA_HARNESS_START_AFTER"


@pytest.fixture(scope="session", autouse=True)
def gpu_to_ourselves(cache_dir) -> dict:
    """Wait until the file $QLORA_HARNESS_START_AFTER exists (when set): the run's other GPU work is done. Return
    what was done meanwhile: {"model_loaded": whether the benchmark model was loaded once, untimed}."""
    path, start, done = os.environ.get(START_AFTER), time.perf_counter(), {"model_loaded": False}
    if not path:
        return done
    from harness.families import get_family
    from harness.model import disk, synth

    if env.has_cuda():
        probe.warm_up()  # CUDA and cuBLAS start here, untimed
    family, size, _ = BENCHMARK_CASE
    folder, read_at = synth.checkpoint_folder(get_family(family), size, cache_dir), 0.0
    while not Path(path).exists():
        if time.monotonic() >= read_at and synth.is_complete(folder):
            disk.read_ahead(folder)  # again every 30 s: the tier's own builds push pages out
            read_at = time.monotonic() + 30
            if not done["model_loaded"] and env.has_cuda():
                _load_once(cache_dir)
                done["model_loaded"] = True
        time.sleep(0.5)
    phases.add("waiting for the tier", time.perf_counter() - start)
    return done


def _load_once(cache_dir: Path) -> None:
    """Load the benchmark model (its checkpoint held meanwhile) and free it."""
    from harness.model import pipeline
    from harness.recipe import default_recipe

    _, model = pipeline.load_base(pipeline.case(*BENCHMARK_CASE[:2], default_recipe(BENCHMARK_CASE[0])), cache_dir,
                                  device="cuda")
    del model
    probe.release()


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

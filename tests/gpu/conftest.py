"""The GPU tier: `pytest -m gpu` (add --update-baselines on a new GPU, --gpu-budget 24GiB to emulate a smaller card).

Full-size synthetic checkpoints are built on the GPU, loaded in 4-bit through from_pretrained, and
profiled once per case: static VRAM, training steps at three batch sizes, OOM recorded rather than fatal.
One full-size model is held at a time; it is freed before the next case loads.
"""
from __future__ import annotations

import shutil

import pytest

from harness import env, pipeline, probe
from harness.recipe import default_recipe

# family, size, batch sizes to profile
GPU_MATRIX = [
    ("qwen2.5-vl", "7b", (1, 2, 4)), ("qwen2.5-vl", "3b", (1, 2, 4)),
    ("qwen2-vl", "7b", (1, 2, 4)), ("qwen2-vl", "2b", (1, 2, 4)),
    ("clip", "vit-l-14", (8, 16, 32)), ("clip", "vit-b-16", (8, 16, 32)),
    ("qwen2.5", "7b", (1, 2, 4)), ("qwen2.5", "0.5b", (1, 2, 4)),
]


def gpu_cases():
    return [(pipeline.case(f, s, default_recipe(f)), sizes) for f, s, sizes in GPU_MATRIX]


def pytest_generate_tests(metafunc):
    if "gpu_case" in metafunc.fixturenames:
        cases = gpu_cases()
        metafunc.parametrize("gpu_case", cases, ids=[c.id for c, _ in cases], scope="session")


@pytest.fixture(scope="session")
def cuda():
    if not env.has_cuda():
        pytest.skip("needs a CUDA GPU")
    import torch

    return torch.device("cuda", 0)


@pytest.fixture(scope="session")
def budget(pytestconfig, cuda):
    text = pytestconfig.getoption("--gpu-budget")
    limit = probe.parse_bytes(text) if text else None
    probe.apply_budget(limit)
    return limit


class _Held:
    """The one full-size case in GPU memory, and its profile."""

    key = None
    profile = None
    checkpoint = None


@pytest.fixture(scope="session")
def gpu_profile(gpu_case, cuda, budget, cache_dir, pytestconfig):
    from harness.profile import profile_case

    case, batch_sizes = gpu_case
    if _Held.key != case.id:
        _Held.profile = None
        probe.release()
        if _Held.checkpoint is not None and pytestconfig.getoption("--evict-checkpoints"):
            shutil.rmtree(_Held.checkpoint, ignore_errors=True)
        _Held.profile = profile_case(case, batch_sizes, cache_dir)
        _Held.key, _Held.checkpoint = case.id, _Held.profile.checkpoint
    return _Held.profile

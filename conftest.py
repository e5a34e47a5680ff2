"""qlora-harness test tiers.

    pytest -m smoke                         CPU, seconds: every family at tiny size under its default recipe
    pytest                                  everything that can run here; GPU tests skip with a reason
    pytest -m gpu --benchmark-save=NAME     a CUDA GPU: full sizes, VRAM and timings against baselines/

Options: --cache-dir (or $QLORA_HARNESS_CACHE) for synthetic checkpoints; --recipe PATH to test your own
recipe file; --checkpoint PATH to run on your own checkpoint folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.model.synth import default_cache_dir
from harness.plugin import isolation

# pytest-xdist workers share the cores: give each worker its share of torch threads rather than every core
# (oversubscribed, `-n 2` on a 2-core machine ran six times slower than serially). Set before torch is imported.
_xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _xdist_workers:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _xdist_workers)))

# The options (--recipe, --cache-dir, --checkpoint, --gpu-budget...) and the check of their values, exit 4 on bad
# input: a plugin, so that an installed harness registers them before pytest reads the command line.
pytest_plugins = ("harness.plugin.options",)

TIERS = {"smoke": ("smoke",), "gpu": ("gpu",), "bench": ("gpu", "benchmark"), "slow": ("slow",)}


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # --dist loadgroup under -n N: the tests of one smoke case share a worker (xdist_group), so its model loads
    # once. Set only when -n is given, never in addopts: pytest-benchmark switches itself off whenever --dist is set.
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") == "no":
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    # Workers parse the command line, not the controller's options: tell them to mark tests with their group.
    node.workerinput["loadgroup"] = node.config.option.dist == "loadgroup"


def pytest_configure(config):
    if getattr(config, "workerinput", {}).get("loadgroup"):
        config.option.loadgroup = True  # read by pytest-xdist's worker when it names tests for scheduling


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    # After a test and its fixtures are torn down: drop the frames a failure keeps alive and, on the GPU tier,
    # return the memory, so that one failing or out-of-memory test does not starve the rest of the session.
    isolation.after_test(on_gpu=item.get_closest_marker("gpu") is not None)


def pytest_collection_modifyitems(config, items):
    # A test's tier is the folder it lives in: tests/smoke -> smoke, tests/gpu -> gpu, tests/bench -> gpu + benchmark.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, markers in TIERS.items():
            if folder in parts:
                for marker in markers:
                    item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def cache_dir(pytestconfig) -> Path:
    """The folder synthetic checkpoints are built into and reused from."""
    chosen = pytestconfig.getoption("--cache-dir")
    return Path(chosen).expanduser() if chosen else default_cache_dir(os.environ)


@pytest.fixture(scope="session")
def cuda():
    """The CUDA device; tests that need one skip without it."""
    from harness.util import env

    if not env.has_cuda():
        pytest.skip("needs a CUDA GPU")
    import torch

    return torch.device("cuda", 0)

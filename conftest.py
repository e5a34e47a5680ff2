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
from harness.util.errors import HarnessError

# pytest-xdist workers share the cores: give each worker its share of torch threads rather than every core
# (oversubscribed, `-n 2` on a 2-core machine ran six times slower than serially). Set before torch is imported.
_xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _xdist_workers:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _xdist_workers)))

# the per-phase wall-time line at the end of a GPU session; on several GPUs one xdist worker per card
pytest_plugins = ["harness.plugin.phases", "harness.plugin.gpus"]

TIERS = {"smoke": ("smoke",), "gpu": ("gpu",), "bench": ("gpu", "benchmark"), "slow": ("slow",)}


def pytest_addoption(parser):
    group = parser.getgroup("qlora-harness")
    group.addoption("--cache-dir", default=None,
                    help="folder for synthetic checkpoints (default: $QLORA_HARNESS_CACHE or ~/.cache/qlora-harness)")
    group.addoption("--recipe", action="append", default=[],
                    help="a recipe YAML file to test in addition to the defaults (repeatable)")
    group.addoption("--checkpoint", default=None,
                    help="a local checkpoint folder (save_pretrained layout or Hugging Face cache entry) to test")
    group.addoption("--update-baselines", action="store_true",
                    help="write baselines/<gpu>/<case>.json from this run instead of comparing with them")
    group.addoption("--baselines-dir", default=None,
                    help="where baselines are read and written (default: baselines/ of this checkout)")
    group.addoption("--results-dir", default=None,
                    help="also write each GPU case's measured record here (any mode)")
    group.addoption("--gpu-budget", default=None,
                    help="cap this process's GPU memory, e.g. 24GiB or a card name (T4, L4, A10G, RTX 4090, "
                         "A100-40GB, ...: harness/util/cards.py): does the recipe fit it?")
    group.addoption("--evict-checkpoints", action="store_true",
                    help="delete each full-size synthetic checkpoint once its tests are done (saves disk)")


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
    # A bad --recipe file is a usage error: its message and a non-zero exit, not a traceback at collection.
    from harness.recipe import load_recipe

    for path in config.getoption("--recipe"):
        try:
            load_recipe(path)
        except HarnessError as e:
            raise pytest.UsageError(f"--recipe {path}: {e}") from None


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

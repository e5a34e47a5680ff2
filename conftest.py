"""qlora-harness test tiers.

    pytest -m smoke                         CPU, seconds: every family at tiny size under its default recipe
    pytest -m smoke -n 2 --dist loadgroup   the same on two workers, each case's tests in one (its model loads once)
    pytest                                  everything that can run here; GPU tests skip with a reason
    pytest -m gpu --benchmark-save=NAME     a CUDA GPU: full sizes, VRAM and timings against baselines/

Options: --cache-dir (or $QLORA_HARNESS_CACHE) for synthetic checkpoints; --recipe PATH to add your recipe to the
smoke grid; --checkpoint PATH to run on your own checkpoint folder. The machinery is the package's pytest plugin
(harness/plugin/pytest_plugin.py, entry point pytest11), which any project with qlora-harness installed gets:
`pytest --qlora-recipe my.yaml`. This file only adds what is particular to this repository's tiers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.plugin import pytest_plugin

# the per-phase wall-time line at the end of a GPU session; on several GPUs one xdist worker per card
pytest_plugins = ["harness.plugin.phases", "harness.plugin.gpus"]

TIERS = {"smoke": ("smoke",), "gpu": ("gpu",), "bench": ("gpu", "benchmark"), "slow": ("slow",)}
PLUGIN = "qlora_harness"  # the pytest11 entry point's name (pyproject.toml)


def pytest_addhooks(pluginmanager):
    # Installed, pytest has loaded the plugin through its entry point already; from a bare checkout (PYTHONPATH)
    # it is registered here, under the same name: one plugin either way, its options registered once.
    registered = pluginmanager.is_registered(pytest_plugin) or pluginmanager.has_plugin(PLUGIN)
    if not registered and not pluginmanager.is_blocked(PLUGIN):
        pluginmanager.register(pytest_plugin, PLUGIN)


def pytest_addoption(parser):
    group = parser.getgroup("qlora-harness")
    group.addoption("--cache-dir", dest="qlora_cache_dir", default=None,
                    help="folder for synthetic checkpoints (default: $QLORA_HARNESS_CACHE or ~/.cache/qlora-harness); "
                         "the same as --qlora-cache-dir")
    group.addoption("--recipe", action="append", default=[],
                    help="a recipe YAML file to test in addition to the defaults (repeatable)")
    group.addoption("--checkpoint", default=None,
                    help="a local checkpoint folder (save_pretrained layout or Hugging Face cache entry) to test")
    group.addoption("--update-baselines", action="store_true",
                    help="write baselines/<gpu>/<case>.json from this run instead of comparing with them")
    group.addoption("--baselines-dir", default=None,
                    help="where baselines are read and written (default: baselines/ in the rootdir)")
    group.addoption("--results-dir", default=None,
                    help="also write each GPU case's measured record here (any mode)")
    group.addoption("--gpu-budget", default=None,
                    help="cap this process's GPU memory, e.g. 24GiB or a card name (T4, L4, A10G, RTX 4090, "
                         "A100-40GB, ...: harness/util/cards.py): does the recipe fit it?")
    group.addoption("--evict-checkpoints", action="store_true",
                    help="delete each full-size synthetic checkpoint once its tests are done (saves disk)")


def pytest_configure(config):
    # A bad --recipe file is a usage error: its message and a non-zero exit, not a traceback at collection.
    pytest_plugin.recipes_or_usage_error(config, "--recipe")


def pytest_collection_modifyitems(config, items):
    # A test's tier is the folder it lives in: tests/smoke -> smoke, tests/gpu -> gpu, tests/bench -> gpu + benchmark.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, markers in TIERS.items():
            if folder in parts:
                for marker in markers:
                    item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def cache_dir(qlora_cache_dir) -> Path:
    """The folder synthetic checkpoints are built into and reused from (the plugin's qlora_cache_dir)."""
    return qlora_cache_dir


@pytest.fixture(scope="session")
def cuda():
    """The CUDA device; tests that need one skip without it."""
    from harness.util import env

    if not env.has_cuda():
        pytest.skip("needs a CUDA GPU")
    import torch

    return torch.device("cuda", 0)

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

# The repository's options (--recipe, --cache-dir, --checkpoint, --gpu-budget...) and the check of their values, exit
# 4 on bad input: a plugin, so that an installed harness registers them before pytest reads the command line; the
# per-phase wall-time line at the end of a GPU session; on several GPUs one xdist worker per card. Registered in
# pytest_addhooks below, not through pytest_plugins: `pytest --qlora-recipe` run from another folder on an editable
# install collects harness/plugin/recipe_checks.py from this checkout, which loads this file as a non-root conftest,
# where pytest refuses pytest_plugins.
REPOSITORY_PLUGINS = ("harness.plugin.options", "harness.plugin.phases", "harness.plugin.gpus")

TIERS = {"smoke": ("smoke",), "gpu": ("gpu",), "bench": ("gpu", "benchmark"), "slow": ("slow",)}
PLUGIN = "qlora_harness"  # the pytest11 entry point's name (pyproject.toml)


def pytest_addhooks(pluginmanager):
    # Installed, pytest has loaded the plugin through its entry point already; from a bare checkout (PYTHONPATH)
    # it is registered here, under the same name: one plugin either way, its options registered once.
    registered = pluginmanager.is_registered(pytest_plugin) or pluginmanager.has_plugin(PLUGIN)
    if not registered and not pluginmanager.is_blocked(PLUGIN):
        pluginmanager.register(pytest_plugin, PLUGIN)
    for name in REPOSITORY_PLUGINS:  # the entry point of harness.plugin.options bears the module's name
        pluginmanager.import_plugin(name)  # does nothing when a plugin of that name is registered or blocked


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

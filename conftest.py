"""qlora-harness test tiers.

    pytest -m smoke                         CPU, seconds: every family at tiny size under its default recipe
    pytest -m smoke -n 2 --dist loadgroup   the same on two workers, each case's tests in one (its model loads once)
    pytest -m tool                          the harness's own machinery: commands, plugin, reports, workers, bad input
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

from harness.plugin import against_baselines, gpus, options, phases, pytest_plugin

# Registered in pytest_addhooks rather than by pytest_plugins, which pytest refuses in a conftest that is not the
# rootdir's (a user's project collecting the shipped checks reads this file as such): the repository's options
# (--recipe, --cache-dir, --checkpoint, --gpu-budget...) checked up front, exit 4 on bad input (installed, the
# options come through their own entry point before pytest reads the command line); the per-phase wall-time line
# and the timeline at the end of a GPU session, and its memory figures against the baselines; on several GPUs one
# xdist worker per card.
REPOSITORY_PLUGINS = (options, phases, against_baselines, gpus)

TIERS = {"smoke": ("smoke",), "tool": ("tool",), "gpu": ("gpu",), "bench": ("gpu", "benchmark"), "slow": ("slow",)}
TIER_MARKERS = {m for markers in TIERS.values() for m in markers}
TESTS = Path(__file__).resolve().parent / "tests"
PLUGIN = "qlora_harness"  # the pytest11 entry point's name (pyproject.toml)


def pytest_addhooks(pluginmanager):
    # Installed, pytest has loaded the plugin through its entry point already; from a bare checkout (PYTHONPATH)
    # it is registered here, under the same name: one plugin either way, its options registered once.
    registered = pluginmanager.is_registered(pytest_plugin) or pluginmanager.has_plugin(PLUGIN)
    if not registered and not pluginmanager.is_blocked(PLUGIN):
        pluginmanager.register(pytest_plugin, PLUGIN)
    for module in REPOSITORY_PLUGINS:  # by module name: the options' entry point is named so
        if not pluginmanager.is_registered(module) and not pluginmanager.has_plugin(module.__name__):
            pluginmanager.register(module, module.__name__)


def pytest_ignore_collect(collection_path, config):
    # `pytest -m smoke` (any one tier's marker) leaves the other tiers' folders unread: importing and parametrizing
    # them only to deselect every test took about 13 s of each xdist worker's start.
    wanted = config.getoption("markexpr")
    markers = TIERS.get(collection_path.name)
    if markers and wanted in TIER_MARKERS and wanted not in markers and collection_path.parent == TESTS:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    # A test's tier is the folder it lives in: tests/smoke -> smoke, tests/tool -> tool, tests/gpu -> gpu,
    # tests/bench -> gpu + benchmark.
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

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

from harness.synth import default_cache_dir

TIERS = {"smoke": "smoke", "gpu": "gpu", "bench": "benchmark"}


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
                    help="cap this process's GPU memory, e.g. 24GiB: does the recipe fit a smaller card?")
    group.addoption("--evict-checkpoints", action="store_true",
                    help="delete each full-size synthetic checkpoint once its tests are done (saves disk)")


def pytest_collection_modifyitems(config, items):
    # A test's tier is the folder it lives in: tests/smoke -> smoke, tests/gpu -> gpu, tests/bench -> benchmark.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in TIERS.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def cache_dir(pytestconfig) -> Path:
    """The folder synthetic checkpoints are built into and reused from."""
    chosen = pytestconfig.getoption("--cache-dir")
    return Path(chosen).expanduser() if chosen else default_cache_dir(os.environ)

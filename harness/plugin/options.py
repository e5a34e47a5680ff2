"""The harness's pytest options, and their values checked before collection: bad input is a usage error (exit 4, one
line), never a traceback or a test that skips with the problem unseen.

Registered both by the root conftest (`pytest_plugins`) and, once the package is installed, by the `pytest11` entry
point of the same name: pytest then knows the options before it reads the command line, so the space form
`pytest --recipe /abs/path.yaml` is not taken for a test path (a conftest's options come too late for that).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.util.errors import HarnessError


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


def check_options(config) -> None:
    """Raise HarnessError naming the first option whose value cannot work: a recipe file that is not a valid recipe
    (its LoRA targets checked on the meta device), a cache or checkpoint folder that is not one, a GPU budget that is
    not a size. Checked whether or not the tests that use them will run or skip."""
    import os

    from harness.model.load import resolve_checkpoint
    from harness.model.synth import default_cache_dir
    from harness.util.atomic import check_folder
    from harness.util.units import parse_bytes

    cache = config.getoption("--cache-dir")
    check_folder(Path(cache).expanduser() if cache else default_cache_dir(os.environ),
                 "--cache-dir" if cache else "the cache folder ($QLORA_HARNESS_CACHE or ~/.cache/qlora-harness)")
    budget = config.getoption("--gpu-budget")
    if budget is not None:
        try:
            if parse_bytes(budget) < 2**30:
                raise HarnessError("below 1GiB, which holds no model: give a card's memory, e.g. 24GiB")
        except HarnessError as e:
            raise HarnessError(f"--gpu-budget {budget}: {e}") from None
    checkpoint = config.getoption("--checkpoint")
    if checkpoint is not None:
        try:
            resolve_checkpoint(checkpoint)
        except HarnessError as e:
            raise HarnessError(f"--checkpoint {checkpoint}: {e}") from None
    recipes = config.getoption("--recipe")
    if recipes:
        from harness.model.preflight import load_checked

        for path in recipes:
            try:
                load_checked(path)
            except HarnessError as e:
                raise HarnessError(f"--recipe {path}: {e}") from None


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if getattr(config, "workerinput", None) is not None:
        return  # the controller checked them
    try:
        check_options(config)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None

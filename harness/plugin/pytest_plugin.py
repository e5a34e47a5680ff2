"""The qlora-harness pytest plugin, active in any project where qlora-harness is installed (entry point pytest11).

    pytest --qlora-recipe my.yaml                          the harness's checks on your recipe (a tiny synthetic model)
    pytest --qlora-recipe my.yaml --qlora-checkpoint DIR   the same on your own checkpoint folder
    pytest -n 2 --dist loadgroup                           each case's tests in one worker: its model loads once

Fixtures for your own tests, one parametrization per --qlora-recipe: qlora_case (family, size, recipe),
qlora_loaded (the case loaded in 4-bit with LoRA, once per process: read it), qlora_processor, qlora_batch (an
example batch), qlora_audit (the per-role audit), qlora_fresh (loaded anew: train it), qlora_cache_dir.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.plugin import cases, isolation
from harness.util.errors import HarnessError

# pytest-xdist workers share the cores: give each worker its share of torch threads rather than every core
# (oversubscribed, `-n 2` on a 2-core machine ran six times slower than serially). Set before torch is imported;
# PYTEST_XDIST_WORKER_COUNT is the variable xdist documents for its workers.
_xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _xdist_workers:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _xdist_workers)))

CASES = pytest.StashKey[list]()
NO_RECIPE = "needs a recipe: pytest --qlora-recipe my.yaml [--qlora-checkpoint DIR]"


def pytest_addoption(parser):
    group = parser.getgroup("qlora-harness")
    group.addoption("--qlora-recipe", action="append", default=[], metavar="YAML",
                    help="run the harness's checks on this recipe file, and give it to the qlora_* fixtures (repeatable)")
    group.addoption("--qlora-checkpoint", default=None, metavar="DIR",
                    help="load the recipes' model from this checkpoint folder (save_pretrained layout or a Hugging "
                         "Face cache entry) instead of a synthetic one")
    group.addoption("--qlora-size", default="tiny", help="model size of the synthetic checkpoints (default: tiny)")
    group.addoption("--qlora-cache-dir", default=None, metavar="DIR",
                    help="folder for synthetic checkpoints (default: $QLORA_HARNESS_CACHE or ~/.cache/qlora-harness)")


def load_arguments() -> list[str]:
    """Return the pytest arguments that load this plugin: none where its entry point is installed, else -p MODULE."""
    from importlib.metadata import entry_points

    autoload = not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    if autoload and any(ep.value == __name__ for ep in entry_points(group="pytest11")):
        return []
    return ["-p", __name__]


def checks_module() -> Path:
    """Return the test module holding the harness's checks, collected for every --qlora-recipe."""
    from harness.plugin import recipe_checks

    return Path(recipe_checks.__file__)


def recipes_or_usage_error(config, option: str, size: str = "tiny", checkpoint=None) -> list:
    """Return the cases of an option's recipe files; a bad file is a usage error (its message, exit 4), not a traceback."""
    found = []
    for path in config.getoption(option):
        try:
            found += cases.recipe_cases([path], size, checkpoint)
        except HarnessError as e:
            raise pytest.UsageError(f"{option} {path}: {e}") from None
    return found


def pytest_configure(config):
    isolation.quick_exit()
    if not config.pluginmanager.hasplugin("xdist"):  # the plugin marks cases for it; --strict-markers must accept it
        config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist keeps in one worker (--dist loadgroup)")
    found = recipes_or_usage_error(config, "--qlora-recipe", config.getoption("--qlora-size"),
                                   config.getoption("--qlora-checkpoint"))
    config.stash[CASES] = found
    if found and str(checks_module()) not in config.args:
        config.args.append(str(checks_module()))


def pytest_report_header(config):
    found = config.stash.get(CASES, [])
    if found:
        return f"qlora-harness: checks on {', '.join(c.id for c in found)}"
    return None


def pytest_generate_tests(metafunc):
    if "qlora_case" in metafunc.fixturenames:
        found = metafunc.config.stash.get(CASES, [])
        params = found or [pytest.param(None, marks=pytest.mark.skip(reason=NO_RECIPE))]
        metafunc.parametrize("qlora_case", params, ids=[c.id for c in found] or ["no-recipe"], scope="session")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # A case's tests carry its xdist_group: under -n N --dist loadgroup they share a worker, so its model loads once.
    # Without bitsandbytes nothing loads in 4-bit: tests that load a checkpoint skip, saying so.
    from harness import doctor

    no_bnb = doctor.missing("bitsandbytes")
    for item in items:
        case = cases.case_of(item.callspec.params if hasattr(item, "callspec") else {})
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(case.id))
        if no_bnb and "qlora_cache_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=no_bnb))


@pytest.hookimpl(tryfirst=True)  # before pytest's own setup builds the case's fixtures (its model load)
def pytest_runtest_setup(item):
    # A case whose family this transformers lacks (Qwen3.5 before 5.2) or whose classes do not import (SmolVLM's
    # processor without torchvision under 4.57) skips with the reason; asked here, once per family and process,
    # rather than at collection, where every xdist worker would import every family's modules.
    case = cases.case_of(item.callspec.params if hasattr(item, "callspec") else {})
    why = case.family.unavailable() if case is not None else None
    if why:
        pytest.skip(why)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    # After a test and its fixtures are torn down: drop the frames a failure keeps alive and, on the GPU tier,
    # return the memory, so that one failing or out-of-memory test does not starve the rest of the session.
    isolation.after_test(on_gpu=item.get_closest_marker("gpu") is not None)


@pytest.fixture(scope="session")
def qlora_cache_dir(pytestconfig) -> Path:
    """The folder synthetic checkpoints are built into and reused from."""
    from harness.model.synth import default_cache_dir

    chosen = pytestconfig.getoption("--qlora-cache-dir")
    return Path(chosen).expanduser() if chosen else default_cache_dir(os.environ)


@pytest.fixture(scope="session")
def qlora_loaded(qlora_case, qlora_cache_dir):
    """The case loaded in 4-bit, prepared for training, LoRA applied: once per process. Read it, do not train it."""
    return cases.shared(qlora_case, qlora_cache_dir)


@pytest.fixture(scope="session")
def qlora_processor(qlora_loaded):
    """The checkpoint's processor (the tokenizer alone for a language model)."""
    return qlora_loaded.processor


@pytest.fixture
def qlora_batch(qlora_case, qlora_processor):
    """An example batch for the case's model: a drawn image and a prompt (VLM), text (LLM), image-caption pairs (CLIP)."""
    from harness.checks import inputs

    return inputs.example_batch(qlora_case.family, qlora_processor)


@pytest.fixture(scope="session")
def qlora_audit(qlora_loaded):
    """The per-role audit of the loaded model: `qlora_audit.violations(recipe)` is [] when it keeps the recipe."""
    from harness.checks.audit import audit

    return audit(qlora_loaded.model, qlora_loaded.case.family, qlora_loaded.case.recipe, qlora_loaded.case.id)


@pytest.fixture
def qlora_fresh(qlora_case, qlora_cache_dir):
    """The case loaded anew, for a test that trains or otherwise changes the weights."""
    from harness.model import pipeline

    return pipeline.harness(qlora_case, qlora_cache_dir)


@pytest.fixture(scope="session")
def qlora_facts(qlora_case, qlora_cache_dir) -> dict:
    """Every check of the harness on the case, by name (what the gate and `qlora-harness check` judge)."""
    from harness.gate.facts import case_facts

    return {f["check"]: f for f in case_facts(qlora_case, qlora_cache_dir)}


@pytest.fixture
def qlora_loads() -> dict:
    """How many times this process loaded each case (by case id) through qlora_loaded and the smoke fixtures."""
    return cases.load_counts()

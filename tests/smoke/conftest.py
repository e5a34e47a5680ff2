"""The smoke tier: `pytest -m smoke`. Every family at its tiny size under its default recipe, on CPU.

Each case is loaded once per session (4-bit, prepared for training, LoRA applied); tests that change
weights get a fresh load of their own, which takes a fraction of a second at tiny size.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness import doctor
from harness.families import FAMILIES
from harness.model import pipeline
from harness.recipe import default_recipe, load_recipe


def smoke_cases(config) -> list[pipeline.Case]:
    """Return the grid: each family's default recipe at tiny size, plus any --recipe files."""
    cases = [pipeline.case(name, "tiny", default_recipe(name)) for name in FAMILIES]
    for path in config.getoption("--recipe"):
        recipe = load_recipe(path)
        cases.append(pipeline.case(recipe.family, "tiny", recipe))
    ids = [c.id for c in cases]  # two recipe files of one name: told apart by what they say
    return [dataclasses.replace(c, variant=c.recipe.fingerprint()) if ids.count(c.id) > 1 and not c.recipe.shipped
            else c for c in cases]


def pytest_generate_tests(metafunc):
    for fixture, keep in (("case", lambda c: True),
                          ("vlm_case", lambda c: c.family.kind == "vlm"),
                          ("generating_case", lambda c: c.family.generates),
                          ("dual_case", lambda c: c.family.kind == "dual-encoder")):
        if fixture in metafunc.fixturenames:
            cases = [c for c in smoke_cases(metafunc.config) if keep(c)]
            metafunc.parametrize(fixture, cases, ids=[c.id for c in cases], scope="session")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    # Under -n N (--dist loadgroup, set in the root conftest), a case's tests share one worker: its model loads once.
    # Without bitsandbytes nothing loads in 4-bit: tests that load a checkpoint skip, saying so.
    no_bnb = doctor.missing("bitsandbytes")
    for item in items:
        if "smoke" not in Path(str(item.fspath)).parts:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        case = next((v for v in params.values() if isinstance(v, pipeline.Case)), None)
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(case.id))
        if no_bnb and "cache_dir" in item.fixturenames:
            item.add_marker(pytest.mark.skip(reason=no_bnb))


_loaded: dict[tuple, pipeline.Harnessed] = {}


def _shared(c: pipeline.Case, cache_dir) -> pipeline.Harnessed:
    # keyed by the whole recipe, never by the id alone: a recipe must not pass on another recipe's model
    if c.key not in _loaded:
        _loaded[c.key] = pipeline.harness(c, cache_dir)
    return _loaded[c.key]


@pytest.fixture(scope="session")
def qlora(case, cache_dir) -> pipeline.Harnessed:
    """The case loaded once for the session: read it, do not train it."""
    return _shared(case, cache_dir)


@pytest.fixture(scope="session")
def vlm(vlm_case, cache_dir) -> pipeline.Harnessed:
    return _shared(vlm_case, cache_dir)


@pytest.fixture(scope="session")
def generator(generating_case, cache_dir) -> pipeline.Harnessed:
    return _shared(generating_case, cache_dir)


@pytest.fixture(scope="session")
def dual(dual_case, cache_dir) -> pipeline.Harnessed:
    return _shared(dual_case, cache_dir)


@pytest.fixture
def fresh(case, cache_dir) -> pipeline.Harnessed:
    """The case loaded anew, for tests that train or otherwise change the weights."""
    return pipeline.harness(case, cache_dir)

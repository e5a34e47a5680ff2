"""The smoke tier: `pytest -m smoke`. Every family at its tiny size under its default recipe, on CPU.

Each case is loaded once per process (4-bit, prepared for training, LoRA applied); tests that change weights get
a fresh load of their own, which takes a fraction of a second at tiny size. The machinery is the package's pytest
plugin (harness.plugin): this file only says which cases the smoke tier runs and names their fixtures.
"""
from __future__ import annotations

import dataclasses

import pytest

from harness.families import FAMILIES
from harness.model import pipeline
from harness.plugin import cases
from harness.recipe import default_recipe


def smoke_cases(config) -> list[pipeline.Case]:
    """Return the grid: each family's default recipe at tiny size, plus any --recipe files."""
    grid = [pipeline.case(name, "tiny", default_recipe(name)) for name in FAMILIES] + cases.recipe_cases(
        config.getoption("--recipe"))
    ids = [c.id for c in grid]  # two recipe files of one name: told apart by what they say
    return [dataclasses.replace(c, variant=c.recipe.fingerprint()) if ids.count(c.id) > 1 and not c.recipe.shipped
            else c for c in grid]


def pytest_generate_tests(metafunc):
    for fixture, keep in cases.CASE_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            # a family this transformers lacks skips at setup, saying why (the plugin's pytest_runtest_setup)
            chosen = [c for c in smoke_cases(metafunc.config) if keep(c)]
            metafunc.parametrize(fixture, chosen, ids=[c.id for c in chosen], scope="session")


@pytest.fixture(scope="session")
def qlora(case, cache_dir) -> pipeline.Harnessed:
    """The case loaded once for the session: read it, do not train it."""
    return cases.shared(case, cache_dir)


@pytest.fixture(scope="session")
def vlm(vlm_case, cache_dir) -> pipeline.Harnessed:
    return cases.shared(vlm_case, cache_dir)


@pytest.fixture(scope="session")
def generator(generating_case, cache_dir) -> pipeline.Harnessed:
    return cases.shared(generating_case, cache_dir)


@pytest.fixture(scope="session")
def dual(dual_case, cache_dir) -> pipeline.Harnessed:
    return cases.shared(dual_case, cache_dir)


@pytest.fixture
def fresh(case, cache_dir) -> pipeline.Harnessed:
    """The case loaded anew, for tests that train or otherwise change the weights."""
    return pipeline.harness(case, cache_dir)

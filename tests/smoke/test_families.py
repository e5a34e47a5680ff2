"""Families are data: real architectures at every size, roles that match, names that help."""
import dataclasses
import json

import pytest

from harness import cli
from harness.families import FAMILIES, FamilySpec, get_family
from harness.measure.matrix import GPU_MATRIX
from harness.model.load import check_roles, meta_model
from harness.model.synth import make_config
from harness.recipe import default_recipe
from harness.util.errors import HarnessError


def _available(name):
    """A family param that skips, saying which transformers it needs, where the running one lacks its architecture."""
    why = get_family(name).unavailable()
    return pytest.param(name, id=name, marks=[pytest.mark.skip(reason=why)] if why else [])


FULL_SIZES = [(f, s) for f, spec in FAMILIES.items() for s in spec.size_names()]
AVAILABLE = [_available(name) for name in FAMILIES]
SIZES = [pytest.param(f, s, id=f"{f}-{s}", marks=_available(f).marks)
         for f, spec in FAMILIES.items() for s in spec.size_names(include_tiny=True)]


def test_every_family_has_a_tiny_size_full_sizes_a_recipe_and_gpu_sizes_among_its_full_sizes():
    assert len(FAMILIES) >= 12
    for name, spec in FAMILIES.items():
        assert spec.name == name and "tiny" in spec.sizes and spec.size_names(), name
        assert default_recipe(name).family == name
        assert set(spec.gpu_sizes) <= set(spec.size_names()), name


def test_the_gpu_matrix_is_every_flagged_full_size_of_the_registry():
    flagged = {(f, s) for f, spec in FAMILIES.items() for s in spec.gpu_sizes}
    assert {(f, s) for f, s, _ in GPU_MATRIX} == flagged
    assert {f for f, _, _ in GPU_MATRIX} == {f for f, spec in FAMILIES.items() if spec.gpu_sizes}


@pytest.mark.parametrize("family,size", SIZES)
def test_every_declared_role_matches_modules_of_the_built_model(family, size):
    spec = get_family(family)
    counts = check_roles(meta_model(spec, make_config(spec, size)), spec)
    assert set(counts) == set(spec.roles) and all(n > 0 for n in counts.values())


def test_list_json_counts_match_the_published_models_within_one_percent(capsys):
    assert cli.main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["family"], r["size"]) for r in rows} == set(FULL_SIZES)
    compared = [r for r in rows if r["published_params"] and r["params"] is not None]
    for r in compared:
        assert abs(r["params"] / r["published_params"] - 1) < 0.01, r
    assert len({r["family"] for r in compared}) >= 12
    for r in rows:  # a count is missing only where the family says why (an architecture this transformers lacks)
        assert r["params"] is not None or r["unavailable"], r
    seven_b = next(r for r in rows if (r["family"], r["size"]) == ("qwen2.5-vl", "7b"))
    assert round(seven_b["params"] / 1e9, 2) == 8.29


def test_a_family_newer_than_the_running_transformers_says_which_release_it_needs():
    spec = next(iter(FAMILIES.values()))
    newer = dataclasses.replace(spec, min_transformers="99.0")
    assert newer.unavailable("5.24.0") == (f"family {spec.name} ({spec.model_class}) needs transformers >= 99.0, "
                                           "found 5.24.0")
    assert spec.unavailable("4.57.1") is None


def test_an_unknown_family_suggests_the_nearest_name():
    with pytest.raises(HarnessError, match=r"unknown model family 'qwen25-vl' \(did you mean qwen2.5-vl\?\)"):
        get_family("qwen25-vl")


def test_a_role_pattern_that_matches_nothing_is_an_error():
    spec = get_family("qwen2.5-vl")
    broken = FamilySpec(**{**spec.__dict__, "roles": {**spec.roles, "projector": r"(^|\.)visual\.projector$"}})
    with pytest.raises(HarnessError, match=r"role projector of family qwen2.5-vl: pattern .* matches no module"):
        check_roles(meta_model(broken, make_config(broken, "tiny")), broken)


@pytest.mark.parametrize("name", AVAILABLE)
def test_tiny_linear_layers_fit_whole_4bit_blocks(name):
    spec = get_family(name)
    model = meta_model(spec, make_config(spec, "tiny"))
    linear = [m for m in model.modules() if type(m).__name__ == "Linear"]
    assert linear and all(m.weight.numel() % 64 == 0 for m in linear), name
    # bitsandbytes' CPU inference kernel packs output rows 32 at a time
    assert all(m.out_features % 32 == 0 for m in linear), [m for m in linear if m.out_features % 32]


@pytest.mark.parametrize("name", AVAILABLE)
def test_building_a_config_leaves_the_family_s_data_as_it_was(name):
    import copy

    from harness.model import synth

    family = get_family(name)
    before = copy.deepcopy(family.sizes)
    key = synth.checkpoint_key(family, "tiny", 0)
    for size in family.sizes:
        synth.make_config(family, size)
    assert family.sizes == before  # transformers 5 rewrites a rope_scaling dict it is handed
    assert synth.checkpoint_key(family, "tiny", 0) == key

"""Families are data: real architectures at every size, roles that match, names that help."""
import json

import pytest

from harness import cli
from harness.families import FAMILIES, FamilySpec, get_family
from harness.model.load import check_roles, meta_model
from harness.model.synth import make_config
from harness.util.errors import HarnessError

FULL_SIZES = [(f, s) for f, spec in FAMILIES.items() for s in spec.size_names()]


def test_the_registry_holds_four_families_and_ten_full_sizes():
    assert set(FAMILIES) == {"qwen2.5-vl", "qwen2-vl", "clip", "qwen2.5"}
    assert len(FULL_SIZES) == 10


@pytest.mark.parametrize("family,size", FULL_SIZES + [(f, "tiny") for f in FAMILIES], ids=lambda x: x)
def test_every_declared_role_matches_modules_of_the_built_model(family, size):
    spec = get_family(family)
    counts = check_roles(meta_model(spec, make_config(spec, size)), spec)
    assert set(counts) == set(spec.roles) and all(n > 0 for n in counts.values())


def test_list_json_counts_match_the_published_models_within_one_percent(capsys):
    assert cli.main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["family"], r["size"]) for r in rows} == set(FULL_SIZES)
    for r in rows:
        assert abs(r["params"] / r["published_params"] - 1) < 0.01, r
    seven_b = next(r for r in rows if (r["family"], r["size"]) == ("qwen2.5-vl", "7b"))
    assert round(seven_b["params"] / 1e9, 2) == 8.29


def test_an_unknown_family_suggests_the_nearest_name():
    with pytest.raises(HarnessError, match=r"unknown model family 'qwen25-vl' \(did you mean qwen2.5-vl\?\)"):
        get_family("qwen25-vl")


def test_a_role_pattern_that_matches_nothing_is_an_error():
    spec = get_family("qwen2.5-vl")
    broken = FamilySpec(**{**spec.__dict__, "roles": {**spec.roles, "projector": r"(^|\.)visual\.projector$"}})
    with pytest.raises(HarnessError, match=r"role projector of family qwen2.5-vl: pattern .* matches no module"):
        check_roles(meta_model(broken, make_config(broken, "tiny")), broken)


def test_tiny_linear_layers_fit_whole_4bit_blocks():
    for name, spec in FAMILIES.items():
        model = meta_model(spec, make_config(spec, "tiny"))
        sizes = [m.weight.numel() for m in model.modules() if type(m).__name__ == "Linear"]
        assert sizes and all(n % 64 == 0 for n in sizes), name


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl", "qwen2.5", "clip"])
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

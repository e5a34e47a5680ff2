"""Recipes are data: the defaults parse, and a malformed or contradictory recipe is refused by name."""
import pytest
import yaml

from harness.families import FAMILIES
from harness.recipe import RECIPES_DIR, default_recipe, load_recipe, parse_recipe
from harness.util.errors import HarnessError


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_a_default_recipe_with_an_expectation_per_role(family):
    recipe = default_recipe(family)
    assert recipe.family == family
    assert set(recipe.expect) == set(FAMILIES[family].roles)


def test_the_vlm_default_mirrors_the_seed_work():
    r = default_recipe("qwen2.5-vl")
    assert (r.quantization.quant_type, r.quantization.double_quant, r.quantization.compute_dtype) == ("nf4", True, "bfloat16")
    assert (r.lora.r, r.lora.alpha, r.lora.dropout) == (64, 16, 0.1)
    assert r.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert r.lora.target_roles == ("language_backbone",)
    assert r.expect["vision_tower"].train == r.expect["projector"].train == "frozen"


def base(**changes):
    data = yaml.safe_load((RECIPES_DIR / "qwen2.5-vl.yaml").read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    return data


@pytest.mark.parametrize("changes,message", [
    ({"lora__r": 0}, r"lora.r must be a positive integer, found 0"),
    ({"lora__alpha": -16}, r"lora.alpha must be positive, found -16"),
    ({"quantization__quant_type": "int4"}, r"quant_type must be one of nf4, fp4, found 'int4'"),
    ({"lora__rank": 8}, r"lora: unknown key 'rank'"),
    ({"lora__target_roles": ["vision"]}, r"found 'vision' \(did you mean vision_tower\?\)"),
    ({"family": "qwen2.5vl"}, r"did you mean qwen2.5-vl"),
    ({"quantization__keep_16bit": ["head", "vision_tower"]}, r"expect.vision_tower.weights is 4bit, but the recipe keeps vision_tower 16-bit"),
    ({"lora__target_roles": ["language_backbone", "projector"]}, r"expect.projector.train is frozen, but lora.target_roles lists projector"),
], ids=["r0", "negative-alpha", "quant-type", "unknown-key", "unknown-role", "unknown-family", "keep16-vs-4bit", "frozen-vs-target"])
def test_a_bad_recipe_is_refused_with_the_reason(changes, message):
    with pytest.raises(HarnessError, match=message):
        parse_recipe(base(**changes), source="bad.yaml")


def test_a_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(HarnessError, match=r"recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_a_recipe_file_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(base(lora__r=8)))
    recipe = load_recipe(path)
    assert recipe.lora.r == 8 and recipe.test_id("tiny") == "qwen2.5-vl-tiny-nf4-dq-r8-qwen2.5-vl-qlora"

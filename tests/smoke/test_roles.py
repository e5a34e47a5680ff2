"""The vision tower, projector, backbone, embeddings and head follow the recipe's declared policy."""
import dataclasses

from harness.checks.audit import audit
from harness.recipe import Expectation


def test_every_role_keeps_the_recipes_expectations(qlora):
    report = audit(qlora.model, qlora.case.family, qlora.case.recipe, qlora.case.id)
    assert report.violations(qlora.case.recipe) == []


def test_no_lora_outside_the_targeted_roles(qlora):
    report = audit(qlora.model, qlora.case.family, qlora.case.recipe, qlora.case.id)
    for role, found in report.roles.items():
        if role not in qlora.case.recipe.lora_roles:
            assert found.lora_modules == [], role
            assert found.trainable_params == 0, role


def test_a_broken_expectation_is_named_with_role_expected_and_found(vlm):
    recipe = vlm.case.recipe
    wrong = dataclasses.replace(recipe, expect={**recipe.expect, "vision_tower": Expectation("16bit", "lora")})
    report = audit(vlm.model, vlm.case.family, wrong, "qwen-under-test")
    found = report.roles["vision_tower"]
    assert report.violations(wrong) == [
        f"vision tower of qwen-under-test: expected 16-bit, found {len(found.linear4bit)} Linear4bit modules: "
        + ", ".join(found.linear4bit[:3]) + f" (+{len(found.linear4bit) - 3} more)",
        "vision tower of qwen-under-test: expected LoRA, found no LoRA module",
    ]

"""The harness's checks on a recipe, as a test module the plugin collects for each `pytest --qlora-recipe FILE`.

The same checks the gate compares and `qlora-harness check` prints (harness.gate.facts): each test asserts that one
of them found no problem, and its failure says what was expected and what was found.
"""
from __future__ import annotations

import pytest

from harness.families import VLM


def problems(facts: dict, name: str) -> list[str]:
    """Return the problems of the checks called name (or starting with it, for 'role '); fail if none ran."""
    found = [f for check, f in facts.items() if check == name or (name.endswith(" ") and check.startswith(name))]
    assert found, f"no check named {name!r} ran; checks run: {', '.join(facts)}"
    return [p for f in found for p in f["problems"]]


def test_every_role_keeps_its_expectation(qlora_facts):
    expect_none(problems(qlora_facts, "role "))


def test_nothing_trains_outside_the_roles(qlora_facts):
    expect_none(problems(qlora_facts, "nothing trains outside the roles"))


def test_only_lora_trains_with_the_expected_count(qlora_facts):
    expect_none(problems(qlora_facts, "trainable params"))


def test_zero_initialised_lora_leaves_the_logits_unchanged(qlora_facts):
    expect_none(problems(qlora_facts, "zero-init LoRA leaves logits unchanged"))


def test_a_training_step_leaves_every_frozen_byte(qlora_facts):
    expect_none(problems(qlora_facts, "step leaves frozen weights"))


def test_every_lora_parameter_gets_a_gradient(qlora_facts):
    expect_none(problems(qlora_facts, "every LoRA parameter gets a gradient"))


def test_a_saved_adapter_reloads_with_identical_outputs(qlora_facts):
    expect_none(problems(qlora_facts, "adapter round-trip"))


def test_image_placeholders_match_the_merged_patches(qlora_case, qlora_facts):
    if qlora_case.family.kind != VLM:
        pytest.skip(f"{qlora_case.family.name} takes no image placeholders")
    expect_none(problems(qlora_facts, "placeholders match merged patches"))
    expect_none(problems(qlora_facts, "placeholder mismatch refused"))


def expect_none(found: list[str]) -> None:
    """Fail with the problems found, one per line (this module is not always assertion-rewritten when installed)."""
    assert not found, "\n".join(found)

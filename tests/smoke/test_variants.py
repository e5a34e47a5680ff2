"""Comparison variants are recipes too: derived, validated, loaded as they declare, and costed by inventory."""
import pytest

from harness.checks.audit import audit
from harness.measure import memory, variants
from harness.model import pipeline
from harness.model.lora import prepare_for_training
from harness.recipe import default_recipe, parse_recipe
from harness.report import table
from harness.util.errors import HarnessError


def test_bf16_lora_expects_every_role_16bit():
    recipe = variants.derive(default_recipe("qwen2.5-vl"), variants.get_variant("bf16-lora"))
    assert not recipe.quantization.load_in_4bit and not recipe.training.gradient_checkpointing
    assert {e.weights for e in recipe.expect.values()} == {"16bit"}


def test_a_variant_keeps_only_roles_its_family_has():
    vision16 = variants.get_variant("qlora-gc-vision16")
    vl = variants.derive(default_recipe("qwen2.5-vl"), vision16)
    llm = variants.derive(default_recipe("qwen2.5"), vision16)
    assert {"vision_tower", "projector"} <= set(vl.quantization.keep_16bit)
    assert vl.expect["vision_tower"].weights == vl.expect["projector"].weights == "16bit"
    assert llm.quantization.keep_16bit == default_recipe("qwen2.5").quantization.keep_16bit


def test_an_unknown_variant_is_named_with_a_suggestion():
    with pytest.raises(HarnessError, match=r"unknown comparison variant 'qlora-cg'.*did you mean qlora-gc"):
        variants.get_variant("qlora-cg")


def test_a_16bit_vision_tower_loads_as_the_variant_declares(cache_dir):
    recipe = variants.derive(default_recipe("qwen2.5-vl"), variants.get_variant("qlora-gc-vision16"))
    case = pipeline.case("qwen2.5-vl", "tiny", recipe, variant="qlora-gc-vision16")
    report = audit(pipeline.harness(case, cache_dir).model, case.family, recipe, case.id)
    assert case.id.endswith("--qlora-gc-vision16")
    assert report.violations(recipe) == []


def test_kbit_preparation_adds_the_predicted_fp32_bytes(cache_dir):
    recipe = default_recipe("qwen2.5").replace(training={"prepare_for_kbit_training": True})
    _, model = pipeline.load_base(pipeline.case("qwen2.5", "tiny", recipe), cache_dir)
    before, predicted = memory.model_bytes(model), memory.upcast_bytes(model)
    model = prepare_for_training(model, recipe)
    assert predicted > 0
    assert memory.model_bytes(model) - before == predicted


def test_a_recipe_gpu_budget_must_be_a_size():
    data = {"name": "x", "family": "qwen2.5", "training": {"gpu_budget": "lots"}}
    with pytest.raises(HarnessError, match="memory size 'lots'"):
        parse_recipe(data)


def test_the_comparison_table_shows_oom_and_the_dynamic_part():
    gib = 2**30
    ok = {"figures": {"static_allocated_bytes": 5 * gib, "status_bs1": "ok", "peak_allocated_bs1_bytes": 7 * gib,
                      "status_bs2": "ok", "peak_allocated_bs2_bytes": 9 * gib, "step_time_bs1_ms": 500.0}}
    oom = {"figures": {"static_allocated_bytes": 15 * gib, "status_bs1": "ok", "peak_allocated_bs1_bytes": 20 * gib,
                       "status_bs2": "oom"}}
    lines = table.comparison_table([("QLoRA", ok), ("bf16 LoRA", oom)]).splitlines()
    assert lines[0].startswith("| variant | static GiB | peak bs1 GiB | peak bs2 GiB | dynamic bs2 GiB |")
    assert lines[2].startswith("| QLoRA | 5.00 | 7.00 | 9.00 | 4.00 | 500 |")
    assert lines[3].startswith("| bf16 LoRA | 15.00 | 20.00 | OOM | - |")

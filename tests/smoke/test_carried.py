"""Artifacts carried between environments: an adapter loads every tensor (and one saved under renamed keys is caught),
adapters written by older releases load here, a merged checkpoint is plain 16-bit with the base's vision tensors,
a 4-bit model saved pre-quantized keeps its quant states; the gate's carry rows fail in the right direction."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.checks import carried
from harness.gate import artifacts
from harness.gate.compare import CHANGED, FAIL, PASS
from harness.gate.facts import CHECK, fact
from harness.model import merge, pipeline
from harness.recipe import default_recipe

pytestmark = pytest.mark.smoke

ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture
def llm(cache_dir):
    return pipeline.case("qwen2.5", "tiny", default_recipe("qwen2.5"))


def _trained(c, cache_dir):
    """The case built with non-zero LoRA B (as after training), so a dropped or unmerged adapter shows."""
    h = pipeline.harness(c, cache_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in h.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    return h


def _trained_adapter(c, cache_dir, folder):
    _trained(c, cache_dir).model.save_pretrained(folder)
    return folder


def test_an_adapter_loads_every_tensor_of_its_file(llm, cache_dir, tmp_path):
    folder = _trained_adapter(llm, cache_dir, tmp_path / "adapter")
    _, base = pipeline.load_base(llm, cache_dir)

    _, result = carried.load_adapter(base, folder)

    assert result.problems(llm.id) == [] and result.saved_keys == 16 and result.nonzero_b == 8


def test_an_adapter_saved_under_renamed_keys_is_caught_naming_the_keys(llm, cache_dir, tmp_path):
    folder = _trained_adapter(llm, cache_dir, tmp_path / "adapter")
    tensors = load_file(folder / ADAPTER_FILE)
    save_file({k.replace(".lora_A.", ".lora_down."): v for k, v in tensors.items()}, folder / ADAPTER_FILE)
    _, base = pipeline.load_base(llm, cache_dir)

    _, result = carried.load_adapter(base, folder)
    problems = result.problems(llm.id)

    assert len(result.missing) == 8 and all(".lora_A." in n for n in result.missing)
    assert len(result.unexpected) == 8 and all(".lora_down." in k for k in result.unexpected)
    assert problems[0].startswith(f"adapter of {llm.id}: 8 LoRA parameters found no tensor in the saved file (saved keys "
                                  "renamed?): ['base_model.model.model.layers.0.self_attn.k_proj.lora_A.default.weight'")
    assert any("loading warned: Found missing adapter keys" in p for p in problems)


def test_an_all_zero_adapter_is_refused_as_proving_nothing(llm, cache_dir, tmp_path):
    h = pipeline.harness(llm, cache_dir)
    h.model.save_pretrained(tmp_path / "zero")
    _, base = pipeline.load_base(llm, cache_dir)

    _, result = carried.load_adapter(base, tmp_path / "zero")

    assert result.problems(llm.id) == [f"adapter of {llm.id}: every saved lora_B tensor is zero, so the adapter does "
                                       "nothing and a dropped adapter would not show; save a trained adapter"]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen2-vl", "qwen2.5"])
def test_adapters_written_by_older_releases_load_every_tensor_here(family, cache_dir):
    c = pipeline.case(family, "tiny", default_recipe(family))
    folders = artifacts.fixture_folders(family)
    assert folders, f"no adapter fixture for {family} under {artifacts.FIXTURES}"

    facts = artifacts.fixture_facts(c, cache_dir, "cpu")

    assert len(facts) == len(folders)
    for f, folder in zip(facts, folders):
        written = json.loads((folder / "written_by.json").read_text())
        assert f["ok"], f["problems"]
        assert f["value"]["missing"] == 0 and written["peft"] != "" and f["value"]["saved"] > 0


def test_adapter_fixtures_are_skipped_at_a_full_size_their_tiny_shapes_cannot_fit(monkeypatch, cache_dir):
    # The gate at full size once loaded the tiny fixtures into a 2B model and stopped both sides with a shape error.
    def full_size_load(*args, **kwargs):
        raise RuntimeError("size mismatch for lora_A: copying a param with shape [2, 128], current model [2, 1536]")

    monkeypatch.setattr(artifacts.pipeline, "load_base", full_size_load)
    c = pipeline.case("qwen2-vl", "2b", default_recipe("qwen2-vl"))

    facts = artifacts.fixture_facts(c, cache_dir, "cpu")

    assert [(f["check"], f["kind"]) for f in facts] == [("adapter fixtures load", "skipped")]
    assert "saved for its tiny size, this case is 2b" in facts[0]["shown"]


def test_a_merged_checkpoint_is_plain_16_bit_with_the_base_vision_tensors_and_a_changed_one_is_named(cache_dir, tmp_path):
    c = pipeline.case("qwen2.5-vl", "tiny", default_recipe("qwen2.5-vl"))
    h = pipeline.harness(c, cache_dir)
    merge.save_merged(merge.merged_model(h.model), h.processor, tmp_path / "merged")
    _, base = pipeline.load_base(c, cache_dir)
    roles = ["vision_tower", "projector"]
    expected = carried.base_tensors_of_roles(base, c.family, roles)

    model, warned = carried.load_merged(tmp_path / "merged", c.family)
    counted, changed = carried.compare_roles(model, expected, c.family, dequantized_roles=roles)

    assert (carried.quantization_marks(model.config), carried.linear4bit_names(model), warned, changed) == ([], [], [], [])
    assert counted["vision_tower"] > 0 and counted["projector"] > 0
    name = next(n for n in expected if n.endswith("attn.qkv.weight"))
    expected[name] = expected[name] * 1.05
    assert carried.compare_roles(model, expected, c.family, dequantized_roles=roles)[1] == [name]
    model.config.quantization_config = {"load_in_4bit": True}
    assert carried.quantization_marks(model.config) == ["quantization_config"]


def test_a_4bit_model_saved_pre_quantized_keeps_its_quant_states_and_an_altered_one_is_named(llm, cache_dir, tmp_path):
    _, base = pipeline.load_base(llm, cache_dir)
    base.save_pretrained(tmp_path / "q")
    saved = carried.quant_states(base)

    reloaded, warned = carried.load_prequantized(tmp_path / "q", llm.family)
    assert warned == [] and carried.quant_state_problems(saved, carried.quant_states(reloaded), llm.id) == []

    weights = next(tmp_path.joinpath("q").glob("*.safetensors"))
    tensors = load_file(weights)
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.weight.absmax"))
    tensors[key] = tensors[key] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    problems = carried.quant_state_problems(saved, carried.quant_states(carried.load_prequantized(tmp_path / "q", llm.family)[0]),
                                            llm.id)
    assert len(problems) == 1 and "1 Linear4bit modules dequantize to other weights" in problems[0]
    assert key.removesuffix(".weight.absmax") in problems[0]


def _carry_file(*facts, transformers="5.24.0"):
    return {"versions": {"transformers": transformers}, "cases": {"case": {"error": None, "facts": list(facts)}}}


def test_carry_rows_fail_when_the_candidate_cannot_load_and_soften_only_old_reading_new_checkpoints():
    broken_merged = fact("merged 16-bit checkpoint saved by the candidate loads", CHECK, None, "raised", ["it raised"])
    broken_adapter = fact("adapter saved by the candidate loads", CHECK, None, "raised", ["keys missing"])
    ok = fact("adapter saved by the reference loads", CHECK, None, "16 of 16 tensors loaded")

    rows = artifacts.carried_rows(_carry_file(broken_merged, broken_adapter, transformers="4.57.1"), _carry_file(ok))
    status = {r.check: r.status for r in rows}

    assert status["adapter saved by the reference loads in the candidate"] == PASS
    assert status["merged 16-bit checkpoint saved by the candidate loads in the reference"] == CHANGED
    assert status["adapter saved by the candidate loads in the reference"] == FAIL
    broken_in_candidate = fact("merged 16-bit checkpoint saved by the reference loads", CHECK, None, "raised", ["x"])
    (row,) = artifacts.carried_rows(_carry_file(), _carry_file(broken_in_candidate))
    assert row.status == FAIL and row.message == "x"


def test_a_merge_may_rewrite_only_the_vision_modules_that_trained(cache_dir, tmp_path):
    # Judged by what was built: with LoRA on the vision tower (all-linear, a regex...) the merge rewrites those
    # weights, and only those; a frozen vision tensor that changed is still named.
    base_recipe = default_recipe("qwen2.5-vl")
    recipe = base_recipe.replace(lora={"target_roles": ["language_backbone", "vision_tower"],
                                       "target_modules": [*base_recipe.lora.target_modules, "qkv"]})
    c = pipeline.case("qwen2.5-vl", "tiny", recipe)
    h = _trained(c, cache_dir)
    trained = carried.trained_modules(h.model)
    assert any(c.family.role_of(m) == "vision_tower" for m in trained)
    merge.save_merged(merge.merged_model(h.model), h.processor, tmp_path / "merged")
    _, base = pipeline.load_base(c, cache_dir)
    model, _ = carried.load_merged(tmp_path / "merged", c.family)
    roles = ["vision_tower", "projector"]

    everything = carried.base_tensors_of_roles(base, c.family, roles)
    untouched = carried.base_tensors_of_roles(base, c.family, roles, skip_modules=trained)

    rewritten = carried.compare_roles(model, everything, c.family, dequantized_roles=roles)[1]
    assert rewritten and all(n.rpartition(".")[0] in trained for n in rewritten)  # what the old check called changed
    counted, changed = carried.compare_roles(model, untouched, c.family, dequantized_roles=roles)
    assert changed == [] and counted["vision_tower"] > 0
    frozen = next(n for n in untouched if c.family.role_of(n.rpartition(".")[0]) == "vision_tower")
    untouched[frozen] = untouched[frozen] + 1
    assert carried.compare_roles(model, untouched, c.family, dequantized_roles=roles)[1] == [frozen]

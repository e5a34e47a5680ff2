"""Literal recipes: the user's own keyword arguments, checked against the installed libraries, made as written; the
role shorthand compiles to the same kind of calls; named causes are read off the re-runs."""
import json

import pytest

from harness import cli
from harness.checks.audit import audit
from harness.families import FAMILIES, get_family
from harness.gate import causes
from harness.gate.compare import CHANGED, FAIL, PASS, Row
from harness.model import calls, load, pipeline
from harness.model.synth import make_config
from harness.recipe import RECIPES_DIR, default_recipe, load_recipe, parse_recipe
from harness.util.errors import HarnessError

LITERAL = {name: RECIPES_DIR / f"literal-{name}.yaml" for name in FAMILIES}


def literal(**sections):
    return {"name": "mine", "family": "qwen2-vl", "peft": {"target_modules": ["q_proj", "v_proj"]}, **sections}


def test_every_family_has_a_literal_recipe_with_expectations():
    for name, path in LITERAL.items():
        recipe = load_recipe(path)
        assert recipe.family == name and recipe.is_literal and recipe.expect, name


def test_recipe_show_prints_the_calls_as_written(capsys):
    assert cli.main(["recipe", "show", str(LITERAL["qwen2-vl"])]) == 0
    text = capsys.readouterr().out
    assert "bnb_4bit_compute_dtype=torch.bfloat16," in text and "target_modules=['q_proj', 'v_proj']," in text
    assert "task_type='CAUSAL_LM'," in text and "llm_int8_skip_modules" not in text
    load_call = text[text.index(".from_pretrained("):text.index(")\n", text.index(".from_pretrained("))]
    assert "dtype" not in load_call  # left out: the library's default
    assert "model.gradient_checkpointing_enable()\n" in text  # no kwargs: the library's default


def test_the_shorthand_compiles_to_literal_calls(capsys):
    family = get_family("qwen2.5-vl")
    compiled = calls.compile_calls(default_recipe(family.name), family, load.meta_model(family, make_config(family, "tiny")))
    assert compiled.load == {"dtype": "bfloat16"}
    assert compiled.bitsandbytes["llm_int8_skip_modules"] == ["lm_head"]
    assert compiled.peft["target_modules"] == r"(?:model\.language_model\.layers)(?:\..*)?\.(?:q_proj|k_proj|v_proj|o_proj)"
    assert compiled.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("sections,message", [
    ({"bitsandbytes": {"load_in_4bit": True, "bnb_4bit_compute_type": "bfloat16"}},
     r"bitsandbytes.bnb_4bit_compute_type: BitsAndBytesConfig of the installed transformers .* takes no keyword "
     r"'bnb_4bit_compute_type' \(did you mean bnb_4bit_compute_dtype\?\)"),
    ({"peft": {"target_module": ["q_proj"]}}, r"peft.target_module: LoraConfig of the installed peft .* \(did you mean target_modules\?\)"),
    ({"load": {"torch_dtyp": "bfloat16"}}, r"load.torch_dtyp: from_pretrained .* \(did you mean torch_dtype\?\)"),
    ({"load": {"quantization_config": {}}}, r"load.quantization_config is set by the harness: write BitsAndBytesConfig's"),
    ({"bitsandbytes": {"bnb_4bit_compute_dtype": "bf16"}}, r"must be a dtype name .* found 'bf16'"),
    ({"lora": {"r": 8}}, r"the literal sections \(peft\) and the role shorthand \(lora\) both state the calls"),
], ids=["bnb-typo", "lora-typo", "load-typo", "owned", "dtype", "mixed"])
def test_a_literal_keyword_the_installed_library_does_not_take_is_named(sections, message):
    with pytest.raises(HarnessError, match=message):
        parse_recipe(literal(**sections), "mine.yaml")


def test_peft_keywords_can_come_from_a_saved_adapter_config(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "inference_mode": True,
         "base_model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct"}))
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nfamily: qwen2-vl\npeft: {from: adapter}\n")
    recipe = load_recipe(path)
    assert recipe.peft == {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    assert "file keys left out: peft_type, base_model_name_or_path, inference_mode" in recipe.notes[0]


def test_a_literal_recipe_loads_as_written_and_is_judged_by_what_was_built(cache_dir):
    recipe = load_recipe(LITERAL["qwen2-vl"])
    h = pipeline.harness(pipeline.case("qwen2-vl", "tiny", recipe), cache_dir)
    report = audit(h.model, h.case.family, recipe, h.case.id)
    assert report.violations(recipe) == []
    assert h.model.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    assert len(h.targets) == 4 and report.trainable_params == report.lora_params == h.expected_trainable
    assert h.model.get_base_model().config.quantization_config.llm_int8_skip_modules is None  # the library decides


def row(check, status):
    return Row("case", check, status, "", "")


def test_a_library_that_alone_moves_a_check_is_named_and_several_together_are_said():
    ref, cand = {"transformers": "4.57.1", "peft": "0.17.1"}, {"transformers": "5.24.0", "peft": "0.21.2"}
    rows = [row("logits", FAIL), row("greedy tokens", CHANGED), row("trainable set", PASS)]
    seen = {}

    def rerun(wanted):
        seen.update(wanted)
        return {"transformers": [row("logits", FAIL), row("greedy tokens", PASS)],
                "peft": [row("logits", PASS), row("greedy tokens", PASS)]}

    causes.name_causes(rows, ref, cand, {"transformers": "5.24.0", "peft": "0.21.2"}, ["transformers", "peft"], rerun)
    assert seen == {"transformers": ["peft==0.17.1"], "peft": ["transformers==4.57.1"]}
    assert rows[0].cause == "transformers 4.57.1 → 5.24.0: the reference with only this library from the candidate fails it the same way"
    assert rows[1].cause == "several libraries together: no one of transformers 4.57.1 → 5.24.0, peft 0.17.1 → 0.21.2 alone moves it"
    assert rows[2].cause == ""


def test_with_one_library_different_it_is_the_cause_without_a_rerun():
    rows = [row("logits", FAIL)]
    causes.name_causes(rows, {"peft": "0.17.1"}, {"peft": "0.21.2"}, {}, ["peft"], lambda wanted: pytest.fail("re-ran"))
    assert rows[0].cause == "peft 0.17.1 → 0.21.2, the only library that differs"


def test_a_library_the_reference_cannot_run_with_alone_is_named_by_elimination():
    ref, cand = {"transformers": "4.57.1", "peft": "0.17.1"}, {"transformers": "5.24.0", "peft": "0.21.2"}
    rows = [row("logits", FAIL)]
    causes.name_causes(rows, ref, cand, cand, ["transformers", "peft"], lambda wanted: {
        "transformers": "peft 0.17.1 does not import", "peft": [row("logits", PASS)]})
    assert rows[0].cause == ("transformers 4.57.1 → 5.24.0, by elimination: no one of peft 0.17.1 → 0.21.2 alone moves it, "
                             "and the reference cannot run with this library alone (peft 0.17.1 does not import)")

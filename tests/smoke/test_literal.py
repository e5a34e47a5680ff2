"""Literal recipes: one per family, the user's own keyword arguments checked against the installed libraries and
made as written (`recipe show` prints them); named causes are read off the re-runs of the reference."""
import pytest

from harness import cli
from harness.checks.audit import audit
from harness.families import FAMILIES
from harness.gate import causes
from harness.gate.compare import CHANGED, FAIL, PASS, Row
from harness.model import pipeline
from harness.recipe import RECIPES_DIR, load_recipe, parse_recipe
from harness.util.errors import HarnessError

LITERAL = {name: RECIPES_DIR / f"literal-{name}.yaml" for name in FAMILIES}


def literal(**sections):
    return {"name": "mine", "family": "qwen2-vl", "peft": {"target_modules": ["q_proj", "v_proj"]}, **sections}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_a_literal_recipe_with_expectations(name):
    recipe = load_recipe(LITERAL[name])
    assert recipe.family == name and set(recipe.literal) >= {"bitsandbytes", "peft"} and recipe.expect


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recipe_show_prints_every_literal_recipe_as_the_calls_it_makes(name, capsys):
    why = FAMILIES[name].unavailable(processor=False)
    if why:  # e.g. qwen3.5 under transformers 4.57: the next test shows what is said instead
        pytest.skip(why)
    assert cli.main(["recipe", "show", str(LITERAL[name])]) == 0
    text = capsys.readouterr().out
    assert "bnb_config = BitsAndBytesConfig(load_in_4bit=True" in text and "lora_config = LoraConfig(" in text
    assert f"model = transformers.{FAMILIES[name].model_class}.from_pretrained(CHECKPOINT" in text


def test_recipe_show_of_a_family_this_transformers_lacks_says_so_in_one_line(monkeypatch, capsys):
    lacking = "family qwen3.5 (Qwen3_5ForConditionalGeneration) needs transformers >= 5.2.0, found 4.57.1"
    monkeypatch.setattr(type(FAMILIES["qwen3.5"]), "unavailable",
                        lambda self, *a, **k: lacking if self.name == "qwen3.5" else None)

    assert cli.main(["recipe", "show", str(LITERAL["qwen3.5"])]) == 2
    assert capsys.readouterr().err == (f"qlora-harness: error: recipe show {LITERAL['qwen3.5']}: {lacking}; show it "
                                       "under a transformers that has the family\n")


def test_recipe_show_leaves_out_what_the_recipe_leaves_out(capsys):
    assert cli.main(["recipe", "show", str(LITERAL["qwen2.5-vl"])]) == 0
    text = capsys.readouterr().out
    load_call = text[text.index(".from_pretrained("):text.index(")\n", text.index(".from_pretrained("))]
    assert "dtype" not in load_call and "llm_int8_skip_modules" not in text  # left out: the library's default
    assert "model.gradient_checkpointing_enable()\n" in text  # no kwargs: the library's default
    assert r"target_modules='^(?!.*visual).*\\.(q_proj|k_proj|v_proj|o_proj)$'" in text


@pytest.mark.parametrize("sections,message", [
    ({"bitsandbytes": {"load_in_4bit": True, "bnb_4bit_compute_type": "bfloat16"}},
     r"bitsandbytes.bnb_4bit_compute_type is not a keyword argument of BitsAndBytesConfig in the installed "
     r"transformers .* \(did you mean bnb_4bit_compute_dtype\?\)"),
    ({"peft": {"target_module": ["q_proj"]}}, r"peft.target_module .* LoraConfig in the installed peft .* \(did you mean target_modules\?\)"),
    ({"load": {"torch_dtyp": "bfloat16"}}, r"load.torch_dtyp .* from_pretrained .* \(did you mean torch_dtype\?\)"),
    ({"load": {"quantization_config": {}}}, r"load.quantization_config is not a recipe's to set"),
    ({"bitsandbytes": {"bnb_4bit_compute_dtype": "bf16"}}, r"must be a dtype name .* found 'bf16'"),
    ({"lora": {"r": 8}}, r"both lora: and peft: are given"),
], ids=["bnb-typo", "lora-typo", "load-typo", "owned", "dtype", "mixed"])
def test_a_literal_keyword_the_installed_library_does_not_take_is_named(sections, message):
    with pytest.raises(HarnessError, match=message):
        parse_recipe(literal(**sections), "mine.yaml")


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


def test_a_case_that_raises_in_a_rerun_is_named_with_its_error():
    ref, cand = {"transformers": "4.57.1", "peft": "0.17.1"}, {"transformers": "5.24.0", "peft": "0.21.2"}
    rows = [row("logits", FAIL)]
    raised = Row("case", "case runs", FAIL, "ran", "raised",
                 "case: the candidate raised ImportError: cannot import name 'HybridCache' from 'transformers'")
    causes.name_causes(rows, ref, cand, cand, ["transformers", "peft"], lambda wanted: {
        "transformers": [raised], "peft": [row("logits", PASS)]})
    assert rows[0].cause.startswith("transformers 4.57.1 → 5.24.0, by elimination: no one of peft 0.17.1 → 0.21.2 alone")
    assert rows[0].cause.endswith("(the case raised ImportError: cannot import name 'HybridCache' from 'transformers')")

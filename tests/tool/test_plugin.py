"""The pytest plugin in a user's project: `pytest --qlora-recipe my.yaml` runs the harness's checks on the recipe, and
the qlora_* fixtures let a user test their own model in a few lines. Each run is pytest on a fresh project folder."""
from __future__ import annotations

import pytest
import yaml

from harness.plugin import pytest_plugin
from harness.recipe import RECIPES_DIR

USER_TEST = '''
def test_my_recipe_keeps_its_roles(qlora_case, qlora_audit):
    assert qlora_audit.violations(qlora_case.recipe) == []

def test_my_model_gives_finite_logits(qlora_loaded, qlora_batch):
    assert qlora_loaded.model(**qlora_batch).logits.isfinite().all()
'''


UNFROZEN_EMBEDDINGS = '''
from harness.model import lora

real = lora.apply_lora


def unfrozen_embeddings(model, family, recipe, targets=None):
    model = real(model, family, recipe, targets)
    model.get_input_embeddings().weight.requires_grad_(True)
    return model


lora.apply_lora = unfrozen_embeddings
'''


def user_recipe(folder, r: int = 8) -> str:
    """Write a user's recipe file (the qwen2.5 default at another rank, under the user's name) and return its name."""
    data = yaml.safe_load((RECIPES_DIR / "qwen2.5.yaml").read_text())
    data["name"], data["lora"]["r"] = "my-llm", r
    (folder / "my.yaml").write_text(yaml.safe_dump(data))
    return "my.yaml"


def run(pytester, *args):
    # A process of its own, as a user's pytest is (two sessions' models in one process are not what users run).
    return pytester.runpytest_subprocess(*pytest_plugin.load_arguments(), "-p", "no:cacheprovider", *args)


def test_the_checks_and_a_users_own_test_pass_on_their_recipe(pytester, cache_dir):
    pytester.makepyfile(test_mine=USER_TEST)
    result = run(pytester, "--qlora-recipe", user_recipe(pytester.path), "--qlora-cache-dir", str(cache_dir), "-v")
    # 8 shipped checks (placeholders skip: an LLM has none) + the user's 2 tests
    result.assert_outcomes(passed=9, skipped=1)
    result.stdout.fnmatch_lines(["*qlora-harness: checks on qwen2.5-tiny-nf4-dq-r8*",
                                 "*test_mine.py::test_my_model_gives_finite_logits*PASSED*",
                                 "*recipe_checks.py::test_only_lora_trains_with_the_expected_count*PASSED*"])


def test_a_model_that_trains_outside_its_lora_fails_the_checks(pytester, cache_dir):
    # The broken case: the user's project leaves the embeddings trainable after LoRA is applied.
    pytester.makeconftest(UNFROZEN_EMBEDDINGS)
    result = run(pytester, "--qlora-recipe", user_recipe(pytester.path), "--qlora-cache-dir", str(cache_dir))
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 3, result.stdout.str()  # the embeddings role, the trainable count, the trainable set
    result.stdout.fnmatch_lines(["*embeddings of qwen2.5-tiny-nf4-dq-r8*: expected frozen*",
                                 "*trainable params of qwen2.5-tiny-nf4-dq-r8*: expected 14,336*"])


def test_a_bad_recipe_file_is_a_usage_error(pytester):
    (pytester.path / "bad.yaml").write_text("name: x\nfamily: qwen25\n")
    result = run(pytester, "--qlora-recipe", "bad.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qlora-recipe bad.yaml: *qwen25*did you mean*"])


def test_without_a_recipe_the_users_fixtures_skip_saying_what_to_give(pytester):
    pytester.makepyfile(test_mine=USER_TEST)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([f"*{pytest_plugin.NO_RECIPE}*"])


CLASSES_DO_NOT_IMPORT = '''
from harness.families.base import FamilySpec

real = FamilySpec.unavailable


def unavailable(self, transformers_version=None, processor=True):
    if self.name == "qwen2.5" and transformers_version is None:
        return "family qwen2.5: transformers cannot import Qwen2Tokenizer (ModuleNotFoundError: No module named 'x')"
    return real(self, transformers_version, processor)


FamilySpec.unavailable = unavailable
'''


def test_a_family_whose_classes_do_not_import_here_skips_every_test_with_the_reason(pytester, cache_dir):
    # As SmolVLM under transformers 4.57 (its processor needs torchvision): asked at setup, not at collection.
    pytester.makeconftest(CLASSES_DO_NOT_IMPORT)
    pytester.makepyfile(test_mine=USER_TEST)
    result = run(pytester, "--qlora-recipe", user_recipe(pytester.path), "--qlora-cache-dir", str(cache_dir), "-rs")
    result.assert_outcomes(skipped=10)
    result.stdout.fnmatch_lines(["*SKIPPED [[]*family qwen2.5: transformers cannot import Qwen2Tokenizer*"])

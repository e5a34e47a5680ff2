"""`qlora-harness check RECIPE`: the checks on one recipe without pytest: progress per check, a verdict, exit 0/1/2."""
from __future__ import annotations

import json

from harness import cli
from harness.recipe import RECIPES_DIR

RECIPE = str(RECIPES_DIR / "qwen2.5.yaml")


def test_a_shipped_recipe_passes_every_check(capsys, cache_dir):
    assert cli.main(["check", RECIPE, "--cache-dir", str(cache_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    (entry,) = report["cases"]
    results = {c["check"]: c["result"] for c in entry["checks"]}
    assert report["failed"] == [] and entry["error"] is None
    assert results["trainable params"] == results["adapter round-trip"] == "pass"
    assert "fail" not in results.values()
    assert "pass  qwen2.5-tiny-nf4-dq-r16  trainable params: 28,672" in err  # the progress line of one check


def test_a_missing_checkpoint_or_recipe_is_bad_input(capsys, tmp_path):
    assert cli.main(["check", str(tmp_path / "none.yaml")]) == 2
    assert "recipe file" in capsys.readouterr().err
    assert cli.main(["check", RECIPE, "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_a_model_that_trains_outside_its_lora_fails_with_exit_1(capsys, cache_dir, monkeypatch):
    from harness.model import lora

    real = lora.apply_lora

    def unfrozen_embeddings(model, family, recipe, targets=None):  # the broken case: embeddings left trainable
        model = real(model, family, recipe, targets)
        model.get_input_embeddings().weight.requires_grad_(True)
        return model

    monkeypatch.setattr(lora, "apply_lora", unfrozen_embeddings)
    assert cli.main(["check", RECIPE, "--cache-dir", str(cache_dir)]) == 1
    out, err = capsys.readouterr()
    assert "failed: qwen2.5-tiny-nf4-dq-r16" in out
    assert "fail  qwen2.5-tiny-nf4-dq-r16  trainable params: trainable params of qwen2.5-tiny-nf4-dq-r16: expected 28,672" in err

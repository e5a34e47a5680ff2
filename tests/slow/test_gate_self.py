"""The gate run whole on a VLM with both sides this interpreter: nothing fails or changes (about a minute: each
side's collectors load the tiny Qwen2.5-VL several times). Moved here from the smoke tier, which is for seconds."""
import json
import sys

import pytest

from harness import cli
from harness.recipe import RECIPES_DIR

pytestmark = pytest.mark.slow


def test_the_gate_passes_when_both_sides_are_this_interpreter(tmp_path, cache_dir, capsys):
    recipe = str(RECIPES_DIR / "qwen2.5-vl.yaml")
    status = cli.main(["gate", "--reference", sys.executable, "--candidate", sys.executable, "--recipe", recipe,
                       "--out", str(tmp_path), "--cache-dir", str(cache_dir)])

    result = json.loads((tmp_path / "verdict.json").read_text())
    assert status == 0, capsys.readouterr().out
    assert result["verdict"] == "pass" and result["counts"]["fail"] == result["counts"]["changed"] == 0
    checks = {r["check"] for r in result["rows"]}
    assert {"role vision_tower (4bit, frozen)", "trainable params", "every LoRA parameter gets a gradient",
            "placeholder mismatch refused", "adapter round-trip", "logits", "greedy tokens"} <= checks
    assert next(r for r in result["rows"] if r["check"] == "logits")["candidate"] == "identical"
    assert "# qlora-harness gate: PASS" in (tmp_path / "verdict.md").read_text()

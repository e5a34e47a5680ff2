"""The gate reports a regression, naming its cause, when the candidate environment really differs.

The candidate is a venv layered over this interpreter whose site-packages holds a small package, imported at
startup through a .pth file, that does what real upgrades have done: transformers forgets which modules stay
16-bit (the vision tower gets quantized) and peft no longer initialises LoRA B to zero. About a minute on CPU.
"""
import json

import pytest

from harness import cli

pytestmark = pytest.mark.slow

BREAKER = '''
import torch
import transformers
from peft.tuners.lora import layer

_bnb_init = transformers.BitsAndBytesConfig.__init__
_reset = layer.LoraLayer.reset_lora_parameters


def quantize_everything(self, *args, **kwargs):
    kwargs["llm_int8_skip_modules"] = []
    _bnb_init(self, *args, **kwargs)


def nonzero_lora_b(self, adapter_name, *args, **kwargs):
    _reset(self, adapter_name, *args, **kwargs)
    if adapter_name in self.lora_B:
        torch.nn.init.normal_(self.lora_B[adapter_name].weight, std=0.5)


transformers.BitsAndBytesConfig.__init__ = quantize_everything
layer.LoraLayer.reset_lora_parameters = nonzero_lora_b
'''

VISION_16BIT = """
name: qwen-vision-tower-16bit
family: qwen2.5-vl
quantization: {keep_16bit: [vision_tower, head]}
lora: {r: 8, alpha: 16, target_roles: [language_backbone], target_modules: [q_proj, v_proj]}
expect:
  vision_tower: {weights: 16bit, train: frozen}
  projector: {weights: 4bit, train: frozen}
  language_backbone: {weights: 4bit, train: lora}
  embeddings: {weights: 16bit, train: frozen}
  head: {weights: 16bit, train: frozen}
"""


@pytest.fixture
def broken_python(tmp_path, breaker_venv):
    return breaker_venv(tmp_path / "broken-venv", "qlora_gate_breaker", BREAKER)


def test_a_candidate_that_quantizes_the_vision_tower_and_breaks_lora_init_fails_naming_both(broken_python, tmp_path, cache_dir):
    recipe = tmp_path / "vision-16bit.yaml"
    recipe.write_text(VISION_16BIT)
    out = tmp_path / "verdict"

    status = cli.main(["gate", "--candidate", str(broken_python), "--recipe", str(recipe), "--out", str(out),
                       "--cache-dir", str(cache_dir), "--no-carry"])  # what it breaks shows before any artifact

    result = json.loads((out / "verdict.json").read_text())
    failed = {r["check"]: r for r in result["rows"] if r["status"] == "fail"}
    assert status == 1 and result["verdict"] == "fail"
    vision = failed["role vision_tower (16bit, frozen)"]
    assert vision["message"].startswith("vision tower of qwen2.5-vl-tiny-nf4-dq-r8-qwen-vision-tower-16bit: expected 16-bit, found 10 Linear4bit modules")
    assert vision["message"].endswith("(reference: 16-bit (10 Linear), frozen)")
    assert failed["zero-init LoRA leaves logits unchanged"]["message"].startswith(
        "zero-initialised LoRA of qwen2.5-vl-tiny-nf4-dq-r8-qwen-vision-tower-16bit: expected the base model's logits unchanged, found max |Δ|")
    assert "logits" in failed
    for kept in ("role language_backbone (4bit, lora)", "trainable params", "every LoRA parameter gets a gradient"):
        assert kept not in failed
    text = (out / "verdict.md").read_text()
    assert text.startswith("# qlora-harness gate: FAIL") and "## Failures" in text

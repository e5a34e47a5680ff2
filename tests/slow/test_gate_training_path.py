"""The gate's training-path and carried-artifact checks fail on a broken candidate, each naming its cause.

The candidate is a venv layered over this interpreter with a "breaker" imported at startup (.pth) that does what
upgrades have done: peft saves adapters under renamed keys, the processor's chat template ignores
add_generation_prompt (so prompt-length masking labels the assistant header), Qwen2.5-VL's rope index is shifted by
one, and LoRA's scaling is doubled. Two tiny recipes (Qwen2.5-VL and Qwen2.5), both phases; about two minutes on this 2-core CPU.
"""
import json

import pytest

from harness import cli
from harness.recipe import RECIPES_DIR

pytestmark = pytest.mark.slow

BREAKER = '''
import peft.peft_model
from peft.tuners.lora import layer
from peft.utils import save_and_load
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
from transformers.processing_utils import ProcessorMixin

_state_dict = save_and_load.get_peft_model_state_dict
_apply_chat_template = ProcessorMixin.apply_chat_template
_rope_index = modeling_qwen2_5_vl.Qwen2_5_VLModel.get_rope_index
_update_layer = layer.LoraLayer.update_layer


def renamed_keys(*args, **kwargs):
    return {k.replace(".lora_A.", ".lora_down."): v for k, v in _state_dict(*args, **kwargs).items()}


def no_generation_prompt(self, conversation, *args, **kwargs):
    kwargs.pop("add_generation_prompt", None)
    return _apply_chat_template(self, conversation, *args, **kwargs)


def shifted_rope_index(self, *args, **kwargs):
    positions, deltas = _rope_index(self, *args, **kwargs)
    return positions + 1, deltas


def doubled_scaling(self, adapter_name, *args, **kwargs):
    out = _update_layer(self, adapter_name, *args, **kwargs)
    self.scaling[adapter_name] *= 2
    return out


save_and_load.get_peft_model_state_dict = peft.peft_model.get_peft_model_state_dict = renamed_keys
ProcessorMixin.apply_chat_template = no_generation_prompt
modeling_qwen2_5_vl.Qwen2_5_VLModel.get_rope_index = shifted_rope_index
layer.LoraLayer.update_layer = doubled_scaling
'''

VLM, LLM = "qwen2.5-vl-tiny-nf4-dq-r64", "qwen2.5-tiny-nf4-dq-r16"


@pytest.fixture
def broken_python(tmp_path, breaker_venv):
    return breaker_venv(tmp_path / "broken-venv", "qlora_training_breaker", BREAKER)


def test_a_candidate_that_renames_keys_labels_the_prompt_shifts_positions_and_doubles_scaling_fails_naming_each(
        broken_python, tmp_path, cache_dir):
    out = tmp_path / "verdict"

    status = cli.main(["gate", "--candidate", str(broken_python), "--recipe", str(RECIPES_DIR / "qwen2.5-vl.yaml"),
                       "--recipe", str(RECIPES_DIR / "qwen2.5.yaml"), "--out", str(out), "--cache-dir", str(cache_dir)])

    result = json.loads((out / "verdict.json").read_text())
    failed = {(r["case"], r["check"]): r["message"] for r in result["rows"] if r["status"] == "fail"}
    assert status == 1 and result["verdict"] == "fail"
    assert "the labels cover part of the prompt" in failed[(VLM, "training example labels the reply only")]
    assert failed[(VLM, "training example position ids")] == (
        f"training example position ids of {VLM} differ at [0, 0, 0]: 0 in the reference, 1 in the candidate")
    assert failed[(LLM, "loss trajectory (6 steps, lr 0.001)")].startswith(
        f"loss trajectory (6 steps, lr 0.001) of {LLM}: the trajectories part at step 1: reference")
    for case in (VLM, LLM):
        renamed = failed[(case, "adapter saved by the candidate loads in the reference")]
        assert renamed.startswith(f"adapter of {case}: 8 LoRA parameters found no tensor in the saved file (saved keys "
                                  "renamed?)")
    # the reference's adapter arrives whole in the candidate, but the doubled scaling moves its outputs
    carried_in = failed[(LLM, "adapter saved by the reference loads in the candidate")]
    assert "found no tensor" not in carried_in and "outputs here differ from the saving side's" in carried_in
    # what the breaker leaves alone stays passing: the LLM's labels and positions
    passed = {(r["case"], r["check"]) for r in result["rows"] if r["status"] == "pass"}
    assert (LLM, "training example labels the reply only") in passed
    assert (LLM, "training example position ids") in passed

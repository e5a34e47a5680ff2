"""The FSDP-QLoRA verdict (harness.measure.fsdp_qlora.judge) on records, each promise broken once.

The runs themselves need 2 CUDA GPUs (tests/gpu/test_fsdp_qlora.py)."""
import copy

import pytest

from harness.measure.fsdp_qlora import fsdp_recipe, judge

GiB = 2**30
KEYS = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
SINGLE = {"ranks": [{"rank": 0, "world_size": 1, "static_allocated_bytes": 4 * GiB, "loss": 11.9312,
                     "non_lora_trainable": [], "adapter_keys": KEYS}]}
SHARDED = {"ranks": [{"rank": r, "world_size": 2, "static_allocated_bytes": int(2.1 * GiB), "loss": 11.9318,
                      "non_lora_trainable": [], "adapter_keys": KEYS} for r in (0, 1)]}


def _broken(**change):
    out = copy.deepcopy(SHARDED)
    out["ranks"][1].update(change)
    return out


def test_a_sharded_run_that_keeps_every_promise_passes():
    assert judge(SINGLE, SHARDED) == []


@pytest.mark.parametrize("change, says", [
    ({"static_allocated_bytes": 4 * GiB}, "rank 1 of 2: expected the 4-bit weights sharded"),
    ({"non_lora_trainable": ["model.embed_tokens.weight"]}, "rank 1 of 2: expected only LoRA parameters to train"),
    ({"loss": 12.5}, "rank 1 of 2: expected the single-GPU loss 11.93120"),
    ({"adapter_keys": KEYS[:1]}, "rank 1 of 2: the saved adapter's keys differ from the single-GPU one's: 1 missing"),
], ids=["not-sharded", "base-trains", "loss-moved", "adapter-keys"])
def test_each_broken_promise_is_named(change, says):
    problems = judge(SINGLE, _broken(**change))

    assert len(problems) == 1 and problems[0].startswith(says)


def test_the_fsdp_recipe_stores_4bit_weights_in_the_compute_dtype():
    q = fsdp_recipe("qwen2.5").quantization
    assert q.quant_storage == q.compute_dtype == "bfloat16"

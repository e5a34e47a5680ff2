"""4-bit loading is real: targeted Linear layers are Linear4bit with the recipe's quant state, and the model weighs what its inventory says."""
import bitsandbytes as bnb
import torch

from harness.checks.audit import audit
from harness.measure import memory


def test_expected_4bit_roles_hold_linear4bit_with_the_recipes_quant_state(qlora):
    recipe = qlora.case.recipe
    report = audit(qlora.model, qlora.case.family, recipe, qlora.case.id)
    four_bit = [role for role, exp in recipe.expect.items() if exp.weights == "4bit"]
    assert four_bit, "the default recipe quantizes at least one role"
    for role in four_bit:
        assert report.roles[role].linear4bit, f"{role}: no Linear4bit module"
        assert report.roles[role].bad_quant_state == []


def test_a_linear4bit_weight_is_packed_nf4_with_double_quant(fresh):
    q = fresh.case.recipe.quantization
    module = next(m for m in fresh.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    state = module.weight.quant_state
    assert module.weight.dtype == torch.uint8
    assert module.weight.numel() == module.in_features * module.out_features // 2
    assert (state.quant_type, state.blocksize, bool(state.nested)) == (q.quant_type, 64, q.double_quant)
    assert module.compute_dtype == getattr(torch, q.compute_dtype)
    assert state.absmax.dtype == torch.uint8  # double quant stores the block scales in 8 bits


def test_footprint_shrinks_by_the_ratio_of_the_module_inventory(fresh):
    # A fresh load: on CPU, bitsandbytes repacks 4-bit weights at the first inference forward.
    inventory = memory.inventory_bytes(fresh.model, fresh.case.recipe.quantization.double_quant)
    measured = memory.model_bytes(fresh.model)
    expected_ratio = inventory["total_16bit"] / inventory["total"]
    measured_ratio = inventory["total_16bit"] / measured
    assert expected_ratio > 1.5
    assert abs(measured_ratio / expected_ratio - 1) < 0.01, (measured, inventory)


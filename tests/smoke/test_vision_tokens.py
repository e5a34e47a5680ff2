"""The memory estimate's training-sample layout (harness/measure/layout.py) counts the vision tokens each family's
tiny tower really encodes: the fit estimate (tests/tool/test_fit.py) is only as right as these counts."""
import dataclasses

import pytest

from harness.checks import inputs
from harness.measure import layout


def test_the_layout_counts_the_vision_tokens_the_tower_encodes(qlora):
    family = qlora.case.family
    if not family.has_images:
        pytest.skip(f"{family.name} has no vision tower")
    batch = inputs.sized_batch(family, qlora.processor, 2, family.tiny_image_size, 64)
    sample = layout.read_layout(family, qlora.config, batch, 2)
    assert sample.vision_tokens > 0
    assert 2 * sample.vision_tokens == layout.encoded_vision_tokens(qlora.model, family, batch)


def test_a_vision_sequence_without_the_class_token_is_caught(dual):
    # the broken case: CLIP's sequences counted as the patch grid alone, the class token left out
    family = dual.case.family
    if family.name != "clip":
        pytest.skip("the class token is CLIP's")
    right = family.inputs.vision_sequences
    broken = dataclasses.replace(family.inputs, vision_sequences=lambda config, batch: [
        n - 1 for n in right(config, batch)])
    family = dataclasses.replace(family, inputs=broken)
    batch = inputs.sized_batch(family, dual.processor, 2, family.tiny_image_size, 64)
    sample = layout.read_layout(family, dual.config, batch, 2)
    assert 2 * sample.vision_tokens != layout.encoded_vision_tokens(dual.model, family, batch)

"""Images reach the model the way the family expects: placeholders, pixel values, grids and batching."""
import numpy as np
import pytest
import torch

from harness.checks import inputs
from harness.checks.images import shape_image
from harness.model.generate import logits
from harness.util.errors import HarnessError


def _two_sizes(family):
    side = family.tiny_image_size
    return [(side, side), (2 * side, side)]


def test_placeholder_tokens_equal_what_the_family_s_images_must_produce(vlm):
    family = vlm.case.family
    batch = inputs.example_batch(family, vlm.processor, image_sizes=_two_sizes(family))
    found, expected = inputs.image_token_counts(family, batch, vlm.config)
    assert found == expected and all(n > 0 for n in found)
    inputs.check_placeholders(family, batch, vlm.config)
    # each sample counts as it does alone: the expected count is a property of the sample's own image
    for i, size in enumerate(_two_sizes(family)):
        alone = inputs.example_batch(family, vlm.processor, image_sizes=[size], first=i)
        assert inputs.image_token_counts(family, alone, vlm.config) == ([found[i]], [expected[i]])


def test_the_contract_lists_every_per_token_input_the_processor_returns(vlm):
    batch = inputs.example_batch(vlm.case.family, vlm.processor, count=2, train=True)
    assert inputs.undeclared_per_token(vlm.case.family, batch) == []
    # and labels ignore the family's placeholder, so no image token is ever scored
    placeholder = inputs.placeholder_id(vlm.case.family, vlm.config)
    assert not (batch["labels"] == placeholder).any()


def test_a_placeholder_mismatch_is_a_clear_error(vlm):
    family = vlm.case.family
    batch = inputs.example_batch(family, vlm.processor)
    expected = inputs.image_token_counts(family, batch, vlm.config)[1][0]
    broken = inputs.without_one_placeholder(family, batch, vlm.config)

    with pytest.raises(HarnessError, match=rf"sample 0 of a {family.name} batch: expected {expected} image "
                                           rf"placeholder tokens .* found {expected - 1}"):
        inputs.check_placeholders(family, broken, vlm.config)
    if family.inputs.model_refuses_mismatch:
        with pytest.raises(ValueError, match="(?i)image"):
            logits(vlm.model, broken)


def test_an_undeclared_per_token_input_is_reported(vlm):
    import dataclasses

    family = vlm.case.family
    batch = inputs.example_batch(family, vlm.processor)
    batch["token_marks"] = torch.zeros_like(batch["input_ids"])  # what a newer processor might start returning
    assert inputs.undeclared_per_token(family, batch) == ["token_marks"]
    declared = dataclasses.replace(family, inputs=dataclasses.replace(family.inputs, per_token=(
        *family.inputs.per_token, "token_marks")))
    assert inputs.undeclared_per_token(declared, batch) == []


def test_a_pil_image_gives_finite_pixel_values_the_same_every_time(vlm):
    image = shape_image(70, 98, "green", "triangle")  # no multiple of any family's patch size: the processor resizes
    batch = inputs.build_inputs(vlm.case.family, vlm.processor, ["Describe."], [image])
    assert torch.isfinite(batch["pixel_values"]).all()
    inputs.check_placeholders(vlm.case.family, batch, vlm.config)
    again = inputs.build_inputs(vlm.case.family, vlm.processor, ["Describe."], [image.copy()])
    assert torch.equal(batch["pixel_values"], again["pixel_values"])


def test_a_padded_batch_of_two_image_sizes_matches_two_single_runs(vlm):
    sizes = _two_sizes(vlm.case.family)
    batch = inputs.example_batch(vlm.case.family, vlm.processor, image_sizes=sizes)
    batched = logits(vlm.model, batch).float()
    for i, size in enumerate(sizes):
        single = inputs.example_batch(vlm.case.family, vlm.processor, image_sizes=[size], first=i)
        alone = logits(vlm.model, single).float()[0]
        kept = batch["attention_mask"][i].bool()
        assert kept.sum() == alone.shape[0]
        # bf16 compute: batch padding changes reduction order; 5% of the logits' spread bounds the drift
        tolerance = 0.05 * float(alone.std())
        np.testing.assert_allclose(batched[i][kept].numpy(), alone.numpy(), atol=tolerance, rtol=0)


def test_a_dual_encoder_pairs_every_image_with_every_caption(dual):
    batch = inputs.example_batch(dual.case.family, dual.processor, count=3)
    assert batch["pixel_values"].shape[0] == 3
    scores = logits(dual.model, batch)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all()


def test_padded_captions_score_as_they_do_alone(dual):
    # CLIP reads a caption at its first end-of-text token, which is also the pad token, SigLIP at its last (fixed
    # length) token: padding must not move either
    batch = inputs.example_batch(dual.case.family, dual.processor, count=3)
    assert not batch["attention_mask"].all(), "the captions should differ in length, or nothing is padded"
    together = logits(dual.model, batch).float().diagonal()
    alone = torch.stack([logits(dual.model, inputs.example_batch(dual.case.family, dual.processor, first=i)).float()[0, 0]
                         for i in range(3)])
    torch.testing.assert_close(together, alone, atol=0.05 * float(alone.abs().max()), rtol=0)

"""Images reach the model the way the family expects: placeholders, pixel values, grids and batching."""
import numpy as np
import pytest
import torch

from harness.checks import inputs
from harness.checks.images import shape_image
from harness.model.generate import logits
from harness.util.errors import HarnessError


def test_placeholder_tokens_equal_the_merged_patch_count(vlm):
    batch = inputs.example_batch(vlm.case.family, vlm.processor, image_sizes=[(56, 56), (112, 56)])
    merge = vlm.config.vision_config.spatial_merge_size
    per_image = [int(g.prod()) // merge**2 for g in batch["image_grid_thw"]]
    found, expected = inputs.image_token_counts(batch, vlm.config)
    assert per_image == [4, 8]
    assert found == expected == per_image
    inputs.check_placeholders(batch, vlm.config)


def test_a_placeholder_mismatch_is_a_clear_error(vlm):
    batch = inputs.without_one_placeholder(inputs.example_batch(vlm.case.family, vlm.processor), vlm.config)

    with pytest.raises(HarnessError, match=r"sample 0: expected 4 image placeholder tokens .* found 3"):
        inputs.check_placeholders(batch, vlm.config)
    with pytest.raises(ValueError, match="(?i)image"):
        logits(vlm.model, batch)


def test_a_pil_image_gives_pixel_values_matching_its_grid(vlm):
    image = shape_image(70, 98, "green", "triangle")  # resized to multiples of patch*merge = 28
    batch = inputs.build_inputs(vlm.case.family, vlm.processor, ["Describe."], [image])
    vision = vlm.config.vision_config
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert (t, h * vision.patch_size, w * vision.patch_size) == (1, 112, 56)
    assert batch["pixel_values"].shape == (t * h * w, 3 * vision.temporal_patch_size * vision.patch_size**2)
    assert torch.isfinite(batch["pixel_values"]).all()
    again = inputs.build_inputs(vlm.case.family, vlm.processor, ["Describe."], [image.copy()])
    assert torch.equal(batch["pixel_values"], again["pixel_values"])


def test_a_padded_batch_of_two_image_sizes_matches_two_single_runs(vlm):
    sizes = [(56, 56), (112, 56)]
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


def test_clip_pairs_every_image_with_every_caption(dual):
    batch = inputs.example_batch(dual.case.family, dual.processor, count=3)
    size = dual.config.vision_config.image_size
    assert batch["pixel_values"].shape == (3, 3, size, size)
    scores = logits(dual.model, batch)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all()


def test_clip_padded_captions_score_as_they_do_alone(dual):
    # CLIP reads a caption at its first end-of-text token, which is also the pad token: padding must not move it
    batch = inputs.example_batch(dual.case.family, dual.processor, count=3)
    assert not batch["attention_mask"].all(), "the captions should differ in length, or nothing is padded"
    together = logits(dual.model, batch).float().diagonal()
    alone = torch.stack([logits(dual.model, inputs.example_batch(dual.case.family, dual.processor, first=i)).float()[0, 0]
                         for i in range(3)])
    torch.testing.assert_close(together, alone, atol=0.05 * float(alone.abs().max()), rtol=0)

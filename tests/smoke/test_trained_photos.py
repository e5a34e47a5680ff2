"""Real photographs through the real processor, a 4-bit forward and generation, at several resolutions.

The photos are public domain and ship with scikit-image (skimage.data): Chelsea the cat, the astronaut Eileen
Collins, a cup of coffee. The trained tiny checkpoints know only shapes, so what is checked here is the path a
photo takes: its resize within min/max pixels, its placeholder count, and a forward and generation that use it.
"""
import math

import pytest
import skimage.data
import torch
from PIL import Image

from harness.checks import inputs
from harness.families import get_family
from harness.model import load
from harness.model.generate import logits
from harness.recipe import default_recipe
from harness.tasks import learn

PHOTOS = ("chelsea", "astronaut", "coffee")
# (min, max) pixels in units of one merged patch ((patch x merge)^2 pixels): from a handful of tokens to 256
RESOLUTIONS = ((1, 4), (4, 16), (16, 64), (64, 256))
PROMPT = "What colour is the shape?"


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module", params=["qwen2.5-vl-shapes", "qwen2-vl-shapes"])
def vlm4(request):
    folder, record = learn.trained_checkpoint(request.param)
    family = get_family(record["family"])
    model = load.load_model(folder, family, default_recipe(family.name))
    assert model.is_loaded_in_4bit
    return family, model, load.load_processor(folder, family)


@pytest.mark.parametrize("name", PHOTOS)
def test_a_photo_gets_one_placeholder_per_merged_patch_at_every_resolution(vlm4, name):
    family, model, processor = vlm4
    image = photo(name)
    unit = family.inputs.pixel_unit(model.config)
    counts = []
    for low, high in RESOLUTIONS:
        batch = learn.prompt_batch(family, processor, [PROMPT], [image], low * unit**2, high * unit**2)
        found, expected = inputs.image_token_counts(family, batch, model.config)
        assert found == expected
        # one placeholder per unit^2 of resized pixels: the count is the area, within the bounds asked for
        assert low <= found[0] <= high, f"{name}: {found[0]} units of {unit}^2 pixels outside [{low}, {high}]"
        counts.append(found[0])
    assert counts == sorted(set(counts)), f"{name}: more pixels allowed should mean more tokens, found {counts}"


@pytest.mark.parametrize("name", PHOTOS)
def test_a_photo_runs_a_4bit_forward_and_greedy_generation(vlm4, name):
    family, model, processor = vlm4
    batch = learn.prompt_batch(family, processor, [PROMPT], [photo(name)])

    scores = logits(model, batch)
    first = model.generate(**batch, max_new_tokens=8, do_sample=False)
    again = model.generate(**batch, max_new_tokens=8, do_sample=False)

    assert torch.isfinite(scores).all()
    assert torch.equal(first, again)
    answer = learn.decode_answer(processor.tokenizer, first[0, batch["input_ids"].shape[1]:], family.inputs.turn_end)
    assert answer, "the 4-bit model generated nothing for a photo"


def test_different_photos_give_different_outputs(vlm4):
    family, model, processor = vlm4
    unit = family.inputs.pixel_unit(model.config)
    cat, coffee = (learn.prompt_batch(family, processor, [PROMPT], [photo(n)], max_pixels=16 * unit**2)
                   for n in ("chelsea", "coffee"))
    assert not torch.allclose(logits(model, cat)[:, -1], logits(model, coffee)[:, -1])


def test_clip_embeds_photos_in_4_bit():
    folder, record = learn.trained_checkpoint("clip-shapes")
    family = get_family("clip")
    model = load.load_model(folder, family, default_recipe("clip"))
    processor = load.load_processor(folder, family)
    batch = learn.clip_batch(processor, [photo(n) for n in PHOTOS], ["a photo of a cat", "a photo of a cup"])

    scores = logits(model, batch)

    assert model.is_loaded_in_4bit and scores.shape == (len(PHOTOS), 2) and torch.isfinite(scores).all()
    assert not math.isclose(float(scores[0, 0]), float(scores[2, 0]))

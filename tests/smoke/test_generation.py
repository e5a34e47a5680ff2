"""Generation is right: deterministic, unchanged by zero-initialised LoRA, and it sees the image."""
import torch

from harness.checks import inputs
from harness.model import lora, pipeline
from harness.model.generate import greedy, logits


def test_greedy_decoding_is_deterministic(generator):
    batch = inputs.example_batch(generator.case.family, generator.processor)
    first = greedy(generator.model, batch, max_new_tokens=6)
    assert first.shape == (1, 6)
    assert torch.equal(first, greedy(generator.model, batch, max_new_tokens=6))


def test_injecting_zero_initialised_lora_leaves_the_logits_unchanged(generating_case, cache_dir):
    checkpoint, base = pipeline.load_base(generating_case, cache_dir)
    processor = pipeline.load.load_processor(checkpoint, generating_case.family)
    batch = inputs.example_batch(generating_case.family, processor)
    before = logits(base, batch)

    adapted = lora.apply_lora(base, generating_case.family, generating_case.recipe)

    assert torch.equal(logits(adapted, batch), before)


def test_a_different_image_changes_the_output(vlm):
    red = inputs.example_batch(vlm.case.family, vlm.processor, seed=0)
    other = inputs.example_batch(vlm.case.family, vlm.processor, seed=7)
    assert torch.equal(red["input_ids"], other["input_ids"])
    assert not torch.equal(red["pixel_values"], other["pixel_values"])
    assert not torch.allclose(logits(vlm.model, red), logits(vlm.model, other))


def test_a_text_only_prompt_generates(generator):
    batch = inputs.example_batch(generator.case.family, generator.processor, with_images=False)
    assert "pixel_values" not in batch
    out = greedy(generator.model, batch, max_new_tokens=4)
    assert out.shape == (1, 4)

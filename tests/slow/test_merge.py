"""Merging for deployment: LoRA folded into a dequantized 16-bit copy of the 4-bit base answers like the adapter model.

The adapter is trained for a few steps on the trained checkpoint (so its B matrices are not zero), once as LoRA
and once as DoRA, then merged with harness.model.merge; the merged model is a plain 16-bit model of the same class.
"""
import bitsandbytes as bnb
import pytest
import torch

from harness.checks import train
from harness.model import load, merge, pipeline
from harness.model.generate import logits
from harness.model.lora import is_lora_name
from harness.recipe import default_recipe
from harness.tasks import learn, shapes

CHECKPOINT = "qwen2-vl-shapes"
STEPS, BATCH_SIZE = 100, 4  # enough to learn the swapped names: greedy answers that are not coin flips
# The merged weights are rounded to bf16 once, where the adapter model adds its LoRA path to a bf16 matmul: the
# logits differ by bf16 arithmetic, measured at most 0.31 and on average 0.0025 of the logits' spread (LoRA and
# DoRA, 12 held-out prompts), while the adapter itself moves them by about 7 spreads.
MAX_OF_SPREAD, MEAN_OF_SPREAD = 0.5, 0.01


@pytest.fixture(scope="module", params=[False, True], ids=["lora", "dora"])
def adapted(request, cache_dir):
    folder, record = learn.trained_checkpoint(CHECKPOINT)
    recipe = default_recipe("qwen2-vl").replace(
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "use_dora": request.param},
        training={"learning_rate": 2e-3, "gradient_checkpointing": False})
    with learn.deterministic(seed=0):
        h = pipeline.harness(pipeline.case("qwen2-vl", "tiny", recipe, checkpoint=folder), cache_dir)
        # without this, bitsandbytes repacks the 4-bit weights at the first CPU eval forward, and peft's DoRA path
        # then dequantizes the repacked bytes as if they were not: its outputs are garbage (peft 0.21, bnb 0.50)
        learn.keep_4bit_layout(h.model)
        batches = learn.shape_batches(h.case.family, h.processor, ["swapped"], STEPS, BATCH_SIZE, seed=3,
                                      size=record["image_size"], grid=record["grid"], span=record["span"])
        learn.fit(h.model, batches, train.make_optimizer(h.model, recipe))
    samples = shapes.ask(learn.eval_scenes(record, count=12), "swapped")
    batch = learn.chat_batch(h.case.family, h.processor, samples, with_answers=False)
    return h, recipe, samples, batch


@pytest.fixture(scope="module")
def merged(adapted):
    h, *_ = adapted
    return merge.merged_model(h.model)


def test_the_merged_model_is_plain_16_bit(merged, adapted):
    h, *_ = adapted
    assert type(merged) is type(h.model.get_base_model())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert not any(is_lora_name(n) for n, _ in merged.named_parameters())
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert getattr(merged.config, "quantization_config", None) is None


def test_merged_logits_match_the_adapter_model(merged, adapted):
    h, _, _, batch = adapted
    expected = logits(h.model, batch).float()
    with h.model.disable_adapter():
        base = logits(h.model, batch).float()
    found = logits(merged, batch).float()
    spread = float(expected.std())
    difference = (found - expected).abs()
    assert float((expected - base).abs().max()) > 4 * spread, "the adapter barely changes the logits: nothing to prove"
    assert float(difference.max()) <= MAX_OF_SPREAD * spread
    assert float(difference.mean()) <= MEAN_OF_SPREAD * spread


def test_the_merged_model_answers_like_the_adapter_model(merged, adapted):
    h, _, samples, _ = adapted
    family = h.case.family
    assert (learn.generate_answers(merged, family, h.processor, samples)
            == learn.generate_answers(h.model, family, h.processor, samples))


def test_a_saved_merged_model_loads_as_a_16_bit_checkpoint(merged, adapted, tmp_path):
    h, recipe, _, batch = adapted
    folder = merge.save_merged(merged, h.processor, tmp_path / "merged")

    reloaded = load.load_model(folder, h.case.family, recipe.replace(quantization={"load_in_4bit": False}))

    assert not getattr(reloaded, "is_loaded_in_4bit", False)
    assert torch.equal(logits(reloaded, batch), logits(merged, batch))

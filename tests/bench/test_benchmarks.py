"""Timings with pytest-benchmark: model load, training steps and throughput, prefill vs decode, 4-bit kernels.

`timed` is pytest-benchmark's `benchmark` fixture, refusing to run disabled.
"""
import pytest

from harness.checks.train import make_optimizer, train_step
from harness.measure import probe, timing
from harness.measure.matrix import BENCHMARK_CASE, KERNEL_SHAPES, KERNEL_TOKENS
from harness.model import load, pipeline
from harness.recipe import default_recipe

FAMILY, SIZE, BATCH_SIZES = BENCHMARK_CASE
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def case(cuda, cache_dir):
    c = pipeline.case(FAMILY, SIZE, default_recipe(FAMILY))
    pipeline.checkpoint_of(c, cache_dir, device="cuda")
    return c


@pytest.fixture(scope="module")
def harnessed(case, cache_dir):
    probe.release()
    h = pipeline.harness(case, cache_dir, device="cuda")
    yield h
    del h
    probe.release()


def _settings(case, **more) -> dict:
    t = case.recipe.training
    return {"case": case.id, "image_size": t.image_size, "seq_len": t.seq_len, "lora_r": case.recipe.lora.r,
            "gradient_checkpointing": t.gradient_checkpointing, **more}


def test_model_load(timed, case, cache_dir, peak_vram, gpu_to_ourselves):
    def load_and_free():
        model = load.load_model(folder, case.family, case.recipe, device="cuda")
        static = probe.static_memory()["allocated_bytes"]
        del model
        probe.release()
        return static

    with pipeline.reading(case, cache_dir, device="cuda") as folder:
        # the warm-up round: a first load, untimed; done already when the session loaded it while the tier ran
        warmup_rounds = 0 if gpu_to_ourselves["model_loaded"] else 1
        static = timed.pedantic(load_and_free, rounds=2, warmup_rounds=warmup_rounds)
    timed.extra_info.update(_settings(case, static_allocated_bytes=static, peak_allocated_bytes=peak_vram()))
    assert static > 0


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_training_step(timed, harnessed, batch_size, peak_vram):
    c, t = harnessed.case, harnessed.case.recipe.training
    from harness.checks.inputs import sized_batch

    batch = sized_batch(c.family, harnessed.processor, batch_size, t.image_size, t.seq_len, "cuda")
    optimizer = make_optimizer(harnessed.model, c.recipe)
    step = timing.synchronized(lambda: train_step(harnessed.model, batch, optimizer))
    loss = timed.pedantic(step, rounds=5, warmup_rounds=2)
    tokens = int(batch["attention_mask"].sum())
    timed.extra_info.update(_settings(c, batch_size=batch_size, tokens=tokens,
                                          tokens_per_s=tokens / timed.stats.stats.mean,
                                          peak_allocated_bytes=peak_vram()))
    del optimizer, batch
    assert loss == loss  # a number, not NaN


def _prompt(harnessed):
    from harness.checks.inputs import example_batch

    harnessed.model.eval()
    return example_batch(harnessed.case.family, harnessed.processor).to("cuda")


def test_generation_prefill(timed, harnessed, peak_vram):
    batch = _prompt(harnessed)
    prefill = timing.synchronized(timing.generate_fixed(harnessed.model, batch, 1))
    out = timed.pedantic(prefill, rounds=5, warmup_rounds=2)
    tokens = int(batch["input_ids"].numel())
    timed.extra_info.update(_settings(harnessed.case, prompt_tokens=tokens, phase="prefill",
                                          tokens_per_s=tokens / timed.stats.stats.mean,
                                          peak_allocated_bytes=peak_vram()))
    assert out.shape[1] == batch["input_ids"].shape[1] + 1


def test_generation_decode(timed, harnessed, peak_vram):
    """Decode time per token: generating NEW_TOKENS + 1 tokens, less the prefill (one token) measured here too."""
    batch = _prompt(harnessed)
    prefill_s = timing.mean_seconds(timing.generate_fixed(harnessed.model, batch, 1), repeat=3)
    run = timing.synchronized(timing.generate_fixed(harnessed.model, batch, NEW_TOKENS + 1))
    out = timed.pedantic(run, rounds=3, warmup_rounds=1)
    decode_s = timed.stats.stats.mean - prefill_s
    timed.extra_info.update(_settings(harnessed.case, phase="decode", new_tokens=NEW_TOKENS, prefill_s=prefill_s,
                                          decode_ms_per_token=1000 * decode_s / NEW_TOKENS,
                                          tokens_per_s=NEW_TOKENS / decode_s, peak_allocated_bytes=peak_vram()))
    assert out.shape[1] == batch["input_ids"].shape[1] + NEW_TOKENS + 1
    assert decode_s > 0


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=[f"{o}x{i}" for o, i in KERNEL_SHAPES])
def test_dequantize_4bit(timed, cuda, shape):
    weight, packed, state = timing.quantized_weight(*shape)
    out = timed.pedantic(timing.synchronized(timing.dequantize(packed, state)), rounds=50, warmup_rounds=5,
                             iterations=10)
    timed.extra_info.update({"shape": list(shape), "quant_type": "nf4", "double_quant": True})
    assert out.shape == weight.shape and out.dtype == weight.dtype


@pytest.mark.parametrize("tokens", KERNEL_TOKENS, ids=[f"{n}tok" for n in KERNEL_TOKENS])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=[f"{o}x{i}" for o, i in KERNEL_SHAPES])
@pytest.mark.parametrize("weights", ["4bit", "bf16"])
def test_matmul(timed, cuda, weights, shape, tokens):
    import torch

    weight, packed, state = timing.quantized_weight(*shape)
    x = torch.randn(tokens, shape[1], dtype=torch.bfloat16, device="cuda")
    fn = timing.matmul_4bit(x, packed, state) if weights == "4bit" else timing.matmul_16bit(x, weight)
    out = timed.pedantic(timing.synchronized(fn), rounds=50, warmup_rounds=5, iterations=10)
    flops = 2 * tokens * shape[0] * shape[1]
    timed.extra_info.update({"weights": weights, "shape": list(shape), "tokens": tokens,
                                 "tflops": flops / timed.stats.stats.mean / 1e12})
    reference = torch.nn.functional.linear(x, timing.dequantize(packed, state)())
    assert out.shape == (tokens, shape[0])
    if weights == "4bit":  # the 4-bit kernel computes with the dequantized weight
        torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)

"""The GPU tier's tables: which full-size cases, comparisons and Unsloth runs a `pytest -m gpu` session covers."""
from __future__ import annotations

from harness.families import gpu_cases

# family, size, batch sizes to profile: every full size a family flags (FamilySpec.gpu_sizes, gpu_batch_sizes),
# in registry order. A family the running transformers lacks is kept here; the GPU tier skips it, saying why.
GPU_MATRIX = gpu_cases()

# In-run comparisons: one workload, its variants (harness.measure.variants), batch sizes
COMPARISONS = [
    ("qwen2.5-vl", "7b", (1, 2, 4),
     ("bf16-lora", "qlora", "qlora-gc", "qlora-gc-vision16", "qlora-gc-kbit-prep", "qlora-gc-eval")),
    ("clip", "vit-b-16", (8, 16, 32), ("bf16-lora", "qlora", "qlora-gc", "qlora-gc-eval")),
    ("qwen2.5", "7b", (4,), ("qlora", "qlora-gc", "qlora-gc-eval")),
]

# The Unsloth backend, each case in a child process of its own (its import patches transformers)
UNSLOTH_CASES = [("qwen2.5-vl", "7b", (1, 2, 4)), ("qwen2.5", "0.5b", (1, 2, 4))]

# The side-by-side table of backends on one workload: peft variants, then Unsloth
# (Unsloth keeps the vision tower 16-bit: the peft variant that does the same is the like-for-like row)
SIDE_BY_SIDE = ("qwen2.5-vl", "7b", ("bf16-lora", "qlora", "qlora-gc", "qlora-gc-vision16"))

# What the benchmarks time: one workload's load, training steps by batch size, generation
BENCHMARK_CASE = ("qwen2.5-vl", "7b", (1, 2, 4))
# 4-bit kernels against bf16: (out_features, in_features) of Qwen2.5-7B's attention and MLP, token counts of
# a decode step and a training batch
KERNEL_SHAPES = [(3584, 3584), (18944, 3584)]
KERNEL_TOKENS = [1, 4096]

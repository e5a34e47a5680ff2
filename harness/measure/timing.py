"""What benchmarks time on a CUDA GPU: synchronised calls, generation split into prefill and decode, 4-bit kernels."""
from __future__ import annotations

import time


def synchronized(fn):
    """Return fn wrapped so that each call waits for the GPU to finish: the time is the kernels', not the launch's."""
    import torch

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return call


def mean_seconds(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Return the mean wall time of a synchronised call, after warm-up calls."""
    call = synchronized(fn)
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def generate_fixed(model, batch, new_tokens: int):
    """Return a function that greedily generates exactly new_tokens tokens (one token: the prefill alone)."""
    import torch

    def run():
        with torch.no_grad():
            return model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return run


def quantized_weight(out_features: int, in_features: int, quant_type: str = "nf4", double_quant: bool = True):
    """Return (bf16 weight, packed 4-bit weight, quant state) of a random weight on the GPU."""
    import bitsandbytes.functional as F
    import torch

    weight = torch.randn(out_features, in_features, dtype=torch.bfloat16, device="cuda") / in_features**0.5
    packed, state = F.quantize_4bit(weight, quant_type=quant_type, compress_statistics=double_quant)
    return weight, packed, state


def dequantize(packed, state):
    """Return a function that dequantizes a 4-bit weight to its compute dtype."""
    import bitsandbytes.functional as F

    return lambda: F.dequantize_4bit(packed, state)


def matmul_4bit(x, packed, state):
    """Return a function computing x @ W.T with W in 4-bit (bitsandbytes' kernel: a GEMV for one token)."""
    import bitsandbytes as bnb

    return lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state)


def matmul_16bit(x, weight):
    """Return a function computing x @ W.T in 16-bit, the baseline 4-bit is compared with."""
    import torch

    return lambda: torch.nn.functional.linear(x, weight)

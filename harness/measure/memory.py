"""What a model weighs: bytes held in memory, and the minimum its module inventory allows."""
from __future__ import annotations

import math

from harness.model.lora import is_lora_name

NF4_BLOCKSIZE = 64  # bitsandbytes' 4-bit block: one absmax per 64 weights
NESTED_BLOCKSIZE = 256  # double quant: the absmax values quantized to 8 bits in blocks of 256
QUANT_MAP_BYTES = 16 * 4  # the 16-entry NF4/FP4 code, float32
NESTED_CODE_BYTES = 256 * 4  # double quant's 8-bit dynamic code, float32


def quantized_bytes(numel: int, double_quant: bool) -> int:
    """Return the bytes a 4-bit weight of numel elements needs: packed nibbles, absmax and constants."""
    packed = math.ceil(numel / 2)
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    if double_quant:
        scales = blocks + math.ceil(blocks / NESTED_BLOCKSIZE) * 4 + NESTED_CODE_BYTES + 4  # uint8 absmax, fp32 absmax2, code, offset
    else:
        scales = blocks * 4
    return packed + scales + QUANT_MAP_BYTES


def _quant_state_tensors(state):
    tensors = [state.absmax, getattr(state, "code", None)]
    if getattr(state, "nested", False):
        tensors += [state.state2.absmax, state.state2.code, getattr(state, "offset", None)]
    return [t for t in tensors if t is not None]


def model_bytes(model, include_lora: bool = False) -> int:
    """Return the bytes a model's weights, buffers and 4-bit quant states occupy, each storage counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    for name, p in model.named_parameters():
        if is_lora_name(name) and not include_lora:
            continue
        add(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            for t in _quant_state_tensors(state):
                add(t)
    for b in model.buffers():
        add(b)
    return total


def inventory_bytes(model, double_quant: bool = True, dtype_bytes: int = 2) -> dict[str, int]:
    """Return {'quantized', 'other', 'total', 'total_16bit'}: the minimum bytes by the module inventory.

    Weights of Linear4bit modules count at 4 bits plus their absmax and double-quant constants; every other
    parameter and buffer at dtype_bytes per element. total_16bit is the same model with nothing quantized.
    """
    import bitsandbytes as bnb

    quantized, other, seen = 0, 0, set()
    numel_all = 0
    for module_name, module in model.named_modules():
        if is_lora_name(module_name):
            continue
        for name, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, bnb.nn.Linear4bit) and name == "weight":
                numel = module.in_features * module.out_features
                quantized += quantized_bytes(numel, double_quant)
            else:
                numel = p.numel()
                other += numel * (dtype_bytes if p.is_floating_point() else p.element_size())
            numel_all += numel * (dtype_bytes if (p.is_floating_point() or name == "weight") else p.element_size())
    return {"quantized": quantized, "other": other, "total": quantized + other, "total_16bit": numel_all}


def upcast_bytes(model) -> int:
    """Return the bytes peft's prepare_model_for_kbit_training adds: every 16-bit, non-4-bit parameter made fp32."""
    import torch

    return sum(p.numel() * 2 for p in model.parameters()
               if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit")

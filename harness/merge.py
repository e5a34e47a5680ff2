"""Merging for deployment: the LoRA folded into a dequantized 16-bit copy of the 4-bit base, saved like a checkpoint.

Folding LoRA back into 4-bit weights (peft's merge_and_unload on a bitsandbytes model) re-rounds every weight
to NF4 and changes the outputs; the deployable model is the dequantized base plus the LoRA delta, in 16-bit.
It is built as a fresh model of the same class (no quantization config), so generate and save_pretrained work.
"""
from __future__ import annotations

from pathlib import Path

from .atomic import staged_folder
from .errors import HarnessError
from .lora import is_lora_name


def _restore_packed_layout(module) -> None:
    # bitsandbytes repacks 4-bit weights for CPU inference (AVX512-BF16) at the first eval forward; dequantize_4bit
    # reads only the layout they were loaded in. Put it back, as bitsandbytes' own state_dict() does.
    weight = module.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def dense_weight(module):
    """Return a Linear's weight as a dense tensor in float32: dequantized when it is 4-bit."""
    import torch
    from peft.utils.integrations import dequantize_module_weight

    _restore_packed_layout(module)
    return dequantize_module_weight(module).detach().to(torch.float32)


def merged_weight(layer):
    """Return (weight, bias) of a peft LoRA layer with its active adapters folded in, in float32 (LoRA and DoRA)."""
    import torch

    base = layer.get_base_layer()
    weight = dense_weight(base)
    bias = None if base.bias is None else base.bias.detach().to(torch.float32).clone()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if adapter in getattr(layer, "lora_variant", {}):  # DoRA rescales each output row by its magnitude
            weight = layer.lora_variant[adapter].merge_safe(layer, adapter, weight).to(torch.float32)
        else:
            weight = weight + layer.get_delta_weight(adapter).to(torch.float32)
        if getattr(layer, "lora_bias", {}).get(adapter):
            bias = bias + layer.lora_B[adapter].bias.detach().to(torch.float32)
    return weight, bias


def merged_state_dict(model, names) -> dict:
    """Return the tensors of the given state-dict names, taken from a (LoRA-wrapped, 4-bit) model and made dense."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    merged: dict[str, tuple] = {}
    out = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if isinstance(module, LoraLayer):
            if owner not in merged:
                merged[owner] = merged_weight(module)
            value = merged[owner][0] if leaf == "weight" else merged[owner][1]
        elif isinstance(module, bnb.nn.Linear4bit) and leaf == "weight":
            value = dense_weight(module)
        else:
            try:
                value = base.get_parameter(name)
            except AttributeError:
                try:
                    value = base.get_buffer(name)
                except AttributeError:
                    raise HarnessError(f"merging {type(base).__name__}: the 16-bit model has {name!r}, which the "
                                       "adapted model lacks; merge a model loaded from the same checkpoint") from None
        if value is None:
            raise HarnessError(f"merging {type(base).__name__}: {name!r} is missing from the adapted model")
        out[name] = value.detach() if isinstance(value, torch.Tensor) else value
    return out


def merged_model(model, dtype: str = "bfloat16"):
    """Return a fresh 16-bit model of the same class: the dequantized base with every active LoRA adapter merged."""
    import copy

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    target = getattr(torch, dtype)
    device = next(p.device for p in base.parameters())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(target)
    try:
        with torch.device(device):
            fresh = type(base)(config)
    finally:
        torch.set_default_dtype(previous)
    names = list(fresh.state_dict())
    state = {k: v.to(target) for k, v in merged_state_dict(model, names).items()}
    fresh.load_state_dict(state, strict=True)
    fresh.requires_grad_(False)
    leftover = [n for n, _ in fresh.named_modules() if is_lora_name(n)]
    if leftover:
        raise HarnessError(f"merged model still holds LoRA modules ({leftover[:3]}); merge expects a peft LoRA model")
    return fresh.eval()


def save_merged(model, processor, folder: Path) -> Path:
    """Write a merged model and its processor to folder as a checkpoint (all or nothing); return the folder."""
    folder = Path(folder)
    with staged_folder(folder) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(stage)
    return folder

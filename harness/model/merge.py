"""Merging for deployment: the LoRA folded into a dequantized 16-bit copy of the 4-bit base, saved like a checkpoint.

Folding LoRA back into 4-bit weights (peft's merge_and_unload on a bitsandbytes model) re-rounds every weight
to NF4 and changes the outputs; the deployable model is the dequantized base plus the LoRA delta, in 16-bit.
It is built as a fresh model of the same class (no quantization config), so generate and save_pretrained work.
"""
from __future__ import annotations

from pathlib import Path

from harness.util.atomic import staged_folder
from harness.util.errors import HarnessError

from .lora import is_lora_name


def dense_weight(module, chunk: int = 4096):
    """Return a Linear's weight as a dense float32 tensor: the weight its forward computes with, dequantized if 4-bit."""
    import torch
    from peft.utils.integrations import dequantize_module_weight

    if not getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False):
        return dequantize_module_weight(module).detach().to(torch.float32)
    # bitsandbytes repacked this weight for CPU inference (AVX512-BF16) at its first eval forward; its inverse
    # re-quantizes the scales and moves weights by up to 0.7%. Read the weight through the forward instead:
    # module(I) = W^T + bias, a chunk of rows of the identity at a time.
    rows = []
    with torch.no_grad():
        for start in range(0, module.in_features, chunk):
            stop = min(start + chunk, module.in_features)
            eye = torch.zeros(stop - start, module.in_features, dtype=module.compute_dtype or torch.float32,
                              device=module.weight.device)
            eye[:, start:stop] = torch.eye(stop - start, dtype=eye.dtype, device=eye.device)
            out = module(eye).to(torch.float32)
            rows.append(out if module.bias is None else out - module.bias.to(torch.float32))
    return torch.cat(rows).T.contiguous()


def merged_weight(layer, weight=None):
    """Return (weight, bias) of a peft LoRA layer with its active adapters folded in, in float32 (LoRA and DoRA);
    weight: the base layer's dense_weight when the caller has it already."""
    import torch

    if getattr(layer, "fan_in_fan_out", False):
        raise HarnessError(f"merging {type(layer).__name__}: fan_in_fan_out (Conv1D) layers are not supported; "
                           "merge with peft's merge_and_unload on a 16-bit model instead")
    base = layer.get_base_layer()
    weight = dense_weight(base) if weight is None else weight
    bias = None if base.bias is None else base.bias.detach().to(torch.float32).clone()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        combined = weight + layer.get_delta_weight(adapter).detach().to(torch.float32)  # B @ A, times the scaling
        if adapter in getattr(layer, "lora_magnitude_vector", {}):
            # DoRA: each output row rescaled to its learnt magnitude, as its forward does
            magnitude = layer.lora_magnitude_vector[adapter].weight.detach().to(torch.float32)
            combined = (magnitude / combined.norm(p=2, dim=1)).unsqueeze(1) * combined
        weight = combined
        if getattr(layer, "lora_bias", {}).get(adapter):
            bias = bias + layer.lora_B[adapter].bias.detach().to(torch.float32)
    return weight, bias


def largest_delta_over_weight(model) -> float:
    """Return the largest ||delta W|| / ||W|| (Frobenius) over the LoRA layers of a model: how far the adapter moves
    its weights. Below the merge dtype's relative resolution (bf16: 2^-8), rounding the merged weight loses much of
    the delta."""
    from peft.tuners.lora import LoraLayer

    worst = 0.0
    for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
        weight = dense_weight(layer.get_base_layer())
        delta = merged_weight(layer, weight)[0] - weight
        worst = max(worst, float(delta.norm() / weight.norm()))
    return worst


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
    for sub in _configs(config):  # transformers 4.57 also marks the text and vision configs as quantized
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if attr in vars(sub):
                delattr(sub, attr)
    target = getattr(torch, dtype)
    for sub in _configs(config):
        sub.dtype = target  # some models cast their inputs to the config's dtype
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


def save_processor(processor, folder: Path) -> None:
    """Write a processor's tokenizer, image processor and chat template into folder, as checkpoints hold them."""
    # By parts: a Qwen VL processor assembled without its video processor (no torchvision) cannot save itself whole.
    parts = [getattr(processor, name) for name in ("tokenizer", "image_processor") if getattr(processor, name, None)]
    for part in parts or [processor]:
        part.save_pretrained(folder)
    template = getattr(processor, "chat_template", None) if parts else None
    if isinstance(template, str):
        (Path(folder) / "chat_template.jinja").write_text(template)


def _configs(config) -> list:
    """Return a config and its distinct sub-configs (text, vision)."""
    subs = [config, config.get_text_config(), getattr(config, "vision_config", None)]
    return [c for i, c in enumerate(subs) if c is not None and all(c is not d for d in subs[:i])]


def save_merged(model, processor, folder: Path) -> Path:
    """Write a merged model and its processor to folder as a checkpoint (all or nothing); return the folder."""
    folder = Path(folder)
    with staged_folder(folder) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        if processor is not None:
            save_processor(processor, stage)
    return folder

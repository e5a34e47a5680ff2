"""Artifacts carried between environments: an adapter, a merged 16-bit checkpoint and a 4-bit model saved
pre-quantized, each loaded where it was not saved, and what the load kept.

Each loader returns what it found; the sentences of what went wrong come from the result's problems(name).
Nothing here trusts the loading library's own report alone: the adapter's tensors are compared with the file,
so a library that drops a key without a word is caught too.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.model.lora import is_lora_name

SHOW = 3
LOAD_WORDS = ("missing", "unexpected", "not used", "were not initialized", "newly initialized")


@contextmanager
def captured_warnings(loggers=("peft", "transformers")):
    """Yield a list that collects every warning and WARNING+ log record the block emits, as text."""
    seen: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
        seen.extend(str(w.message) for w in caught)
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)


def load_warnings(messages: list[str]) -> list[str]:
    """Return the messages that say a load left tensors out (missing or unexpected keys, weights newly initialised);
    an older peft naming config options it does not know ("unexpected keyword arguments") loses no tensor."""
    return [m for m in messages if any(w in m.lower() for w in LOAD_WORDS) and "keyword argument" not in m.lower()]


def saved_key(param_name: str, adapter: str = "default") -> str:
    """Return the key peft writes for a LoRA parameter: its name without the adapter's name."""
    return ".".join(p for p in param_name.split(".") if p != adapter)


@dataclass
class AdapterLoad:
    """What loading a saved adapter onto a base kept."""

    saved_keys: int
    missing: list[str]  # LoRA parameters of the loaded model with no tensor in the file
    unexpected: list[str]  # tensors of the file with no LoRA parameter to go to
    different: list[str]  # LoRA parameters whose values are not the file's
    warnings: list[str]  # what the libraries said about keys while loading
    nonzero_b: int  # lora_B tensors of the file that are not all zero: an adapter that does something

    def problems(self, name: str) -> list[str]:
        """Return one sentence per way the load lost or altered the adapter; empty when every tensor arrived."""
        out = []
        if self.missing:
            out.append(f"adapter of {name}: {len(self.missing)} LoRA parameters found no tensor in the saved file "
                       f"(saved keys renamed?): {self.missing[:SHOW]}")
        if self.unexpected:
            out.append(f"adapter of {name}: {len(self.unexpected)} saved tensors have no LoRA parameter to load into: "
                       f"{self.unexpected[:SHOW]}")
        if self.different:
            out.append(f"adapter of {name}: {len(self.different)} LoRA parameters differ from the saved tensors: "
                       f"{self.different[:SHOW]}")
        if self.warnings:
            out.append(f"adapter of {name}: loading warned: {self.warnings[0][:300]}")
        if not self.nonzero_b:
            out.append(f"adapter of {name}: every saved lora_B tensor is zero, so the adapter does nothing and a "
                       "dropped adapter would not show; save a trained adapter")
        return out


def load_adapter(base, folder: Path):
    """Return (peft model, AdapterLoad): the adapter in folder loaded onto base, compared tensor by tensor with the file."""
    import torch
    from peft import PeftModel
    from peft.utils import load_peft_weights

    saved = load_peft_weights(str(folder), device="cpu")
    with captured_warnings() as seen:
        model = PeftModel.from_pretrained(base, str(folder))
    params = {n: p for n, p in model.named_parameters() if is_lora_name(n)}
    by_key = {saved_key(n): n for n in params}
    missing = sorted(n for k, n in by_key.items() if k not in saved)
    unexpected = sorted(k for k in saved if k not in by_key)
    different = sorted(n for k, n in by_key.items() if k in saved and not torch.equal(
        params[n].detach().cpu().to(saved[k].dtype), saved[k]))
    nonzero_b = sum(1 for k, v in saved.items() if "lora_B" in k and v.any())
    return model, AdapterLoad(len(saved), missing, unexpected, different, load_warnings(seen), nonzero_b)


def quantization_marks(config) -> list[str]:
    """Return where a config (or its text and vision sub-configs) still says the model is quantized."""
    found = []
    subs = {"": config, "text_config.": getattr(config, "text_config", None), "vision_config.": getattr(config, "vision_config", None)}
    for prefix, sub in subs.items():
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if sub is not None and getattr(sub, attr, None) is not None:
                found.append(prefix + attr)
    return found


def linear4bit_names(model) -> list[str]:
    """Return the names of the model's bitsandbytes 4-bit Linear modules."""
    import bitsandbytes as bnb

    return [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


@dataclass
class MergedLoad:
    """What loading a merged 16-bit checkpoint kept."""

    quantization_marks: list[str]  # config entries still saying the model is quantized
    linear4bit: int  # 4-bit modules after the load (a merged model has none)
    frozen_roles: dict[str, int] = field(default_factory=dict)  # role -> tensors compared with the base
    changed: list[str] = field(default_factory=list)  # tensors of those roles not byte-identical to the base
    warnings: list[str] = field(default_factory=list)

    def problems(self, name: str) -> list[str]:
        """Return one sentence per way the merged checkpoint is not the plain 16-bit model it should be."""
        out = []
        if self.quantization_marks:
            out.append(f"merged checkpoint of {name}: expected no quantization config, found {self.quantization_marks}")
        if self.linear4bit:
            out.append(f"merged checkpoint of {name}: expected 16-bit weights, found {self.linear4bit} Linear4bit modules")
        if self.changed:
            out.append(f"merged checkpoint of {name}: {len(self.changed)} vision/projector tensors differ from the base's "
                       f"(16-bit: byte for byte; 4-bit: beyond {DEQUANTIZED_ULPS} ulps of their dequantization): "
                       f"{self.changed[:SHOW]}")
        if self.warnings:
            out.append(f"merged checkpoint of {name}: loading warned: {self.warnings[0][:300]}")
        return out


def load_merged(folder: Path, family, dtype: str = "bfloat16", device: str = "cpu"):
    """Return the merged checkpoint in folder loaded as its class's from_pretrained does with no quantization."""
    import torch
    import transformers

    with captured_warnings(("transformers",)) as seen:
        model = getattr(transformers, family.model_class).from_pretrained(
            folder, dtype=getattr(torch, dtype), device_map={"": device}, local_files_only=True, use_safetensors=True)
    return model.eval(), load_warnings(seen)


def trained_modules(peft_model) -> list[str]:
    """Return the base model's names of the modules that train in a peft model (LoRA on them, or saved whole): what
    was built, whatever the recipe asked for. A merge rewrites these; every other tensor it must carry unchanged."""
    out = set()
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("base_model.model.")
        for marker in (".lora_", ".modules_to_save.", ".original_module."):
            if marker in name:
                name = name.split(marker)[0] + "."
                break
        out.add(name.rpartition(".")[0])
    return sorted(out)


def _tail(module_name: str) -> str:
    return ".".join(module_name.split(".")[-4:])


def base_tensors_of_roles(base, family, roles, dtype: str = "bfloat16", skip_modules=()) -> dict:
    """Return {parameter name: tensor} of the given roles of a loaded base, 4-bit weights dequantized, cast to dtype
    (what a merge writes for weights LoRA did not touch); modules in skip_modules (those that trained) left out, matched
    on their last four name parts too, since the side that trained may name the tower's modules otherwise (transformers
    5 renamed Gemma 3's vision_tower.vision_model.encoder to vision_tower.encoder)."""
    import bitsandbytes as bnb
    import torch

    from harness.model.merge import dense_weight

    target = getattr(torch, dtype)
    modules = dict(base.named_modules())
    skip = {_tail(m) for m in skip_modules}
    out = {}
    for name, param in base.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if family.role_of(owner) not in roles or _tail(owner) in skip:
            continue
        module = modules.get(owner)
        value = dense_weight(module) if isinstance(module, bnb.nn.Linear4bit) and leaf == "weight" else param
        out[name] = value.detach().to(target).cpu()
    return out


# Frozen 4-bit weights reach a merged checkpoint dequantized; bitsandbytes 0.49.2 and 0.50.2 round that
# dequantization differently by up to 2 bf16 ulps (measured: qwen2-vl tiny, 62 of 12,288 elements of one qkv weight).
# 16-bit roles are compared byte for byte.
DEQUANTIZED_ULPS = 2


def compare_roles(merged, base_tensors: dict, family, dequantized_roles=()) -> tuple[dict[str, int], list[str]]:
    """Return (tensors compared per role, names that differ) between a merged model and the base's tensors: byte for
    byte, or within DEQUANTIZED_ULPS of the dtype for roles the base held in 4-bit (dequantized_roles)."""
    import torch

    params = dict(merged.named_parameters())
    roles: dict[str, int] = {}
    changed = []
    for name, expected in base_tensors.items():
        role = family.role_of(name.rpartition(".")[0])
        roles[role] = roles.get(role, 0) + 1
        got = params.get(name)
        if got is None or got.shape != expected.shape:
            changed.append(name)
            continue
        got = got.detach().cpu().to(expected.dtype)
        if role in dequantized_roles and ".weight" in name:
            rtol = DEQUANTIZED_ULPS * torch.finfo(expected.dtype).eps
            same = torch.allclose(got.float(), expected.float(), rtol=rtol, atol=0)
        else:
            same = torch.equal(got, expected)
        if not same:
            changed.append(name)
    return roles, changed


def quant_states(model) -> dict[str, dict]:
    """Return each Linear4bit's quant state in brief: type, blocksize, nested (double quant), and sums of the
    dequantized weight, which any lost or altered state changes."""
    import bitsandbytes as bnb

    from harness.model.merge import dense_weight

    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, bnb.nn.Linear4bit):
            continue
        state = getattr(m.weight, "quant_state", None)
        if state is None:
            out[name] = {"state": None}
            continue
        w = dense_weight(m).double()
        out[name] = {"state": type(state).__name__, "quant_type": state.quant_type, "blocksize": int(state.blocksize),
                     "nested": bool(state.nested), "shape": list(state.shape), "sum": float(w.sum()),
                     "abs_sum": float(w.abs().sum())}
    return out


def quant_state_problems(saved: dict[str, dict], loaded: dict[str, dict], name: str, rel: float = 1e-6) -> list[str]:
    """Return sentences for 4-bit modules whose quant state did not survive a save and reload."""
    out = []
    gone = [n for n in saved if n not in loaded]
    if gone:
        out.append(f"pre-quantized 4-bit checkpoint of {name}: {len(gone)} Linear4bit modules came back as something "
                   f"else: {gone[:SHOW]}")
    lost = [n for n, s in loaded.items() if s.get("state") is None]
    if lost:
        out.append(f"pre-quantized 4-bit checkpoint of {name}: {len(lost)} Linear4bit modules have no quant state: {lost[:SHOW]}")
    altered = []
    for n, s in saved.items():
        got = loaded.get(n)
        if not got or got.get("state") is None:
            continue
        same = all(got[k] == s[k] for k in ("quant_type", "blocksize", "nested", "shape"))
        same = same and all(abs(got[k] - s[k]) <= rel * max(abs(s[k]), 1e-12) for k in ("sum", "abs_sum"))
        if not same:
            altered.append(n)
    if altered:
        out.append(f"pre-quantized 4-bit checkpoint of {name}: {len(altered)} Linear4bit modules dequantize to other "
                   f"weights than the saved model's (quant state altered): {altered[:SHOW]}")
    return out


def load_prequantized(folder: Path, family, device: str = "cpu"):
    """Return (model, warnings): a 4-bit checkpoint saved pre-quantized, loaded with the quantization its config holds."""
    import transformers

    with captured_warnings(("transformers",)) as seen:
        model = getattr(transformers, family.model_class).from_pretrained(
            folder, device_map={"": device}, local_files_only=True, use_safetensors=True)
    return model.eval(), load_warnings(seen)

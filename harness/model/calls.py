"""A recipe compiled into the library calls it makes, written as a user's script writes them, and made.

Both ways of writing a recipe end here. A literal recipe's sections are the keyword arguments verbatim; the role
shorthand compiles to the same kind of calls: the 16-bit roles to llm_int8_skip_modules (the shortest module names
that cover them), the LoRA roles and leaf names to a target_modules regex, dtype from compute_dtype, checkpointing
with use_reentrant=False. What the harness itself adds to from_pretrained (device, no downloads, safetensors only)
is listed apart, so `qlora-harness recipe show` can be held against the user's script line by line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.families import FamilySpec
from harness.literal import DTYPE_KEYS
from harness.recipe import Recipe
from harness.util.errors import HarnessError

SHORTHAND_GC_KWARGS = {"use_reentrant": False}


@dataclass
class Calls:
    """The calls of one recipe: keyword arguments as written (dtypes by name), None where a call is not made."""

    model_class: str
    load: dict  # Model.from_pretrained(checkpoint, **load, quantization_config=...)
    bitsandbytes: dict | None  # BitsAndBytesConfig(**bitsandbytes); None: no quantization_config (16-bit)
    peft: dict  # LoraConfig(**peft)
    gradient_checkpointing: bool
    gradient_checkpointing_kwargs: dict | None  # None: no argument, the library's default
    prepare_for_kbit_training: bool
    harness_load: dict = field(default_factory=dict)  # what the harness adds to from_pretrained, and why
    notes: list[str] = field(default_factory=list)


def _dtypes(kwargs: dict) -> dict:
    import torch

    return {k: getattr(torch, v) if k in DTYPE_KEYS and isinstance(v, str) and v != "auto" else v for k, v in kwargs.items()}


def role_roots(model, family: FamilySpec, roles) -> list[str]:
    """Return the shortest module names that cover exactly the modules of the given roles."""
    below: dict[str, set] = {}
    for name, _ in model.named_modules():  # each module's own role and the roles found beneath it
        role = family.role_of(name) if name else None
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            below.setdefault(".".join(parts[:i]), set()).add(role)
    wanted = set(roles)
    pure = {n for n, rs in below.items() if n and len(rs) == 1 and next(iter(rs)) in wanted}
    return sorted(n for n in pure if n.rpartition(".")[0] not in pure)



def linear_features(module) -> tuple[int, int] | None:
    """Return (in_features, out_features) of a Linear or Linear4bit module, else None."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return None



def lora_targets(model, family: FamilySpec, recipe: Recipe) -> list[str]:
    """Return the full names of the Linear modules the recipe adapts; raise if they match nothing."""
    names = [
        name for name, module in model.named_modules()
        if family.role_of(name) in recipe.lora.target_roles
        and name.rpartition(".")[2] in recipe.lora.target_modules
        and linear_features(module) is not None
    ]
    if not names:
        raise HarnessError(
            f"LoRA targets {list(recipe.lora.target_modules)} in roles {list(recipe.lora.target_roles)} of "
            f"{family.name} match no Linear module; check lora.target_modules against the model's layer names")
    missing = [t for t in recipe.lora.target_modules if not any(n.rpartition('.')[2] == t for n in names)]
    if missing:
        raise HarnessError(f"LoRA target modules {missing} match no Linear module in roles "
                           f"{list(recipe.lora.target_roles)} of {family.name}; remove them or fix the name")
    return names



def shorthand_targets(model, family: FamilySpec, recipe: Recipe) -> str | list[str]:
    """Return target_modules for the shorthand's roles and leaf names: one regex when it selects exactly the same
    Linear modules as the full names would, else the full names."""
    names = lora_targets(model, family, recipe)
    roots = [r for r in role_roots(model, family, recipe.lora.target_roles) if any(n.startswith(r + ".") for n in names)]
    leaves = sorted(set(recipe.lora.target_modules), key=list(recipe.lora.target_modules).index)
    pattern = rf"(?:{'|'.join(map(re.escape, roots))})(?:\..*)?\.(?:{'|'.join(map(re.escape, leaves))})"
    linear = [n for n, m in model.named_modules() if linear_features(m) is not None]
    return pattern if [n for n in linear if re.fullmatch(pattern, n)] == names else names


def compile_calls(recipe: Recipe, family: FamilySpec, model) -> Calls:
    """Return the calls a recipe makes; model (a meta skeleton will do) resolves the shorthand's roles to names."""
    training = training_calls(recipe)
    if recipe.is_literal:
        return Calls(family.model_class, dict(recipe.load or {}), recipe.bitsandbytes, dict(recipe.peft or {}),
                     *training, notes=list(recipe.notes))
    q, lo = recipe.quantization, recipe.lora
    bnb = None
    if q.load_in_4bit:
        bnb = {"load_in_4bit": True, "bnb_4bit_quant_type": q.quant_type, "bnb_4bit_use_double_quant": q.double_quant,
               "bnb_4bit_compute_dtype": q.compute_dtype, "bnb_4bit_quant_storage": q.quant_storage,
               "llm_int8_skip_modules": role_roots(model, family, q.keep_16bit)}
    peft = {"r": lo.r, "lora_alpha": lo.alpha, "lora_dropout": lo.dropout,
            "target_modules": shorthand_targets(model, family, recipe), "use_rslora": lo.use_rslora,
            "use_dora": lo.use_dora, "bias": "none"}
    return Calls(family.model_class, {"dtype": q.compute_dtype}, bnb, peft, *training,
                 notes=[f"compiled from the role shorthand of {recipe.source or recipe.name}"])


def training_calls(recipe: Recipe) -> tuple[bool, dict | None, bool]:
    """Return (gradient checkpointing, its kwargs or None for the library default, peft's k-bit preparation)."""
    t = recipe.training
    gc_kwargs = t.gradient_checkpointing_kwargs
    if gc_kwargs is None and not recipe.is_literal:
        gc_kwargs = dict(SHORTHAND_GC_KWARGS)
    return t.gradient_checkpointing, gc_kwargs, t.prepare_for_kbit_training


def harness_load(device: str, allow_pickle: bool, trust_remote_code: bool) -> dict:
    """Return what the harness adds to every from_pretrained call: {keyword: (value, why)}."""
    out = {"device_map": ({"": device}, "the run's device"), "local_files_only": (True, "never downloads")}
    if not allow_pickle:
        out["use_safetensors"] = (True, "safetensors only (the recipe's allow_pickle is false)")
    out["trust_remote_code"] = (bool(trust_remote_code), "the recipe's trust_remote_code")
    return out


def from_pretrained_kwargs(calls: Calls, device: str, allow_pickle: bool, trust_remote_code: bool) -> dict:
    """Return the keyword arguments from_pretrained gets: the recipe's, the quantization config, the harness's."""
    from transformers import BitsAndBytesConfig

    kwargs = _dtypes(calls.load)
    if calls.bitsandbytes is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(**_dtypes(calls.bitsandbytes))
    replaced = [k for k in harness_load(device, allow_pickle, trust_remote_code) if k in kwargs]
    calls.harness_load = harness_load(device, allow_pickle, trust_remote_code)
    calls.notes += [f"load.{k}={kwargs[k]!r} replaced: {calls.harness_load[k][1]}" for k in replaced]
    kwargs.update({k: v for k, (v, _) in calls.harness_load.items()})
    return kwargs


def lora_config(calls: Calls):
    """Return the LoraConfig of the calls; raise naming the recipe's peft section if peft refuses its keywords."""
    from peft import LoraConfig

    try:
        return LoraConfig(**_dtypes(calls.peft))
    except (TypeError, ValueError) as e:
        raise HarnessError(f"LoraConfig refused the recipe's peft keywords: {e}") from None


def prepare(model, gradient_checkpointing: bool, gradient_checkpointing_kwargs: dict | None, kbit: bool):
    """Return the base model prepared for training: peft's prepare_model_for_kbit_training, or checkpointing alone."""
    gc = {} if gradient_checkpointing_kwargs is None else {"gradient_checkpointing_kwargs": gradient_checkpointing_kwargs}
    if kbit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing, **gc)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(**gc)
    return model


def _py(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if isinstance(value, str) and "\\" in value and "'" not in value:
        return f"r'{value}'"
    return repr(value)


def _arguments(kwargs: dict, comments: dict | None = None, indent: str = "    ") -> list[str]:
    lines = []
    for k, v in kwargs.items():
        shown = f"torch.{v}" if k in DTYPE_KEYS and isinstance(v, str) and v != "auto" else _py(v)
        note = f"  # {comments[k]}" if comments and k in comments else ""
        lines.append(f"{indent}{k}={shown},{note}")
    return lines


def render(calls: Calls, checkpoint: str = "CHECKPOINT") -> str:
    """Return the calls as the Python a user's script would hold, the harness's own additions commented."""
    imports = ["BitsAndBytesConfig, " if calls.bitsandbytes is not None else "", calls.model_class]
    peft_names = ["LoraConfig", "get_peft_model"] + (["prepare_model_for_kbit_training"] if calls.prepare_for_kbit_training else [])
    lines = [f"# {n}" for n in calls.notes] + [
        "import torch", f"from transformers import {''.join(imports)}", f"from peft import {', '.join(peft_names)}", ""]
    if calls.bitsandbytes is not None:
        lines += ["bnb_config = BitsAndBytesConfig("] + _arguments(calls.bitsandbytes) + [")"]
    lines += [f"model = {calls.model_class}.from_pretrained(", f"    {checkpoint},"]
    lines += _arguments(calls.load)
    if calls.bitsandbytes is not None:
        lines.append("    quantization_config=bnb_config,")
    added = {k: v for k, (v, _) in calls.harness_load.items()}
    lines += _arguments(added, {k: f"the harness: {why}" for k, (_, why) in calls.harness_load.items()}) + [")"]
    gc = "" if calls.gradient_checkpointing_kwargs is None else f"gradient_checkpointing_kwargs={_py(calls.gradient_checkpointing_kwargs)}"
    if calls.prepare_for_kbit_training:
        lines.append(f"model = prepare_model_for_kbit_training(model, use_gradient_checkpointing="
                     f"{calls.gradient_checkpointing}{', ' + gc if gc else ''})")
    elif calls.gradient_checkpointing:
        lines.append(f"model.gradient_checkpointing_enable({gc})")
    lines += ["lora_config = LoraConfig("] + _arguments(calls.peft) + [")", "model = get_peft_model(model, lora_config)"]
    return "\n".join(lines) + "\n"

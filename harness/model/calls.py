"""The library calls a recipe makes, compiled once and made from one place: from_pretrained with its
BitsAndBytesConfig, gradient checkpointing (or peft's k-bit preparation), LoraConfig and get_peft_model.

A literal recipe's sections are passed as written: a key left out stays out, so the library's default applies.
The shorthand sections compile to the same calls: the 16-bit roles become `llm_int8_skip_modules` (the shortest
module names covering them, found on the meta device), the LoRA roles and leaf names become the full names of the
targeted modules, `dtype` is the compute dtype, and checkpointing passes `use_reentrant: false`.
`python_source` prints the calls as Python, for a user to hold against their script (`qlora-harness recipe show`).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness import literal
from harness.families import FamilySpec
from harness.recipe import Recipe

SHORTHAND_CHECKPOINTING = {"use_reentrant": False}


@dataclass
class Calls:
    """The keyword arguments of each call a recipe makes (harness-owned ones, such as device_map, added at the call)."""

    load: dict  # from_pretrained, without quantization_config
    bnb: dict | None  # BitsAndBytesConfig, or None for a 16-bit load
    checkpointing: bool
    checkpointing_kwargs: dict | None  # None: left out of the call (the library's default)
    kbit_prep: bool  # peft's prepare_model_for_kbit_training
    lora: dict | None  # LoraConfig; None until the targets are known (shorthand: from the model's names)


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


def compile_calls(recipe: Recipe, family: FamilySpec, skeleton) -> Calls:
    """Return the calls a recipe makes on a model (skeleton: the model on the meta device, for module names)."""
    q, t = recipe.quantization, recipe.training
    if recipe.bitsandbytes is not None or recipe.load is not None:
        bnb = dict(recipe.bitsandbytes) if recipe.bitsandbytes is not None else None
        load = dict(recipe.load or {})
    else:
        bnb = None if not q.load_in_4bit else {
            "load_in_4bit": True, "bnb_4bit_quant_type": q.quant_type, "bnb_4bit_use_double_quant": q.double_quant,
            "bnb_4bit_compute_dtype": q.compute_dtype, "bnb_4bit_quant_storage": q.quant_storage,
            "llm_int8_skip_modules": role_roots(skeleton, family, q.keep_16bit)}
        load = {"dtype": q.compute_dtype}
    lora = dict(recipe.peft) if recipe.peft is not None else None
    return Calls(load, bnb, t.gradient_checkpointing, checkpointing_kwargs(recipe), t.prepare_for_kbit_training, lora)


def checkpointing_kwargs(recipe: Recipe) -> dict | None:
    """Return gradient_checkpointing_kwargs as the call receives them; None: left out (the library's default)."""
    kwargs = recipe.training.gradient_checkpointing_kwargs
    if kwargs is None and not recipe.literal:
        return dict(SHORTHAND_CHECKPOINTING)
    return kwargs


def shorthand_lora(recipe: Recipe, targets: list[str]) -> dict:
    """Return the LoraConfig keyword arguments of a shorthand recipe, its targets resolved to full module names."""
    lo = recipe.lora
    return {"r": lo.r, "lora_alpha": lo.alpha, "lora_dropout": lo.dropout, "target_modules": list(targets),
            "use_rslora": lo.use_rslora, "use_dora": lo.use_dora, "bias": "none"}


def load_kwargs(calls: Calls) -> dict:
    """Return from_pretrained's keyword arguments as the call receives them (dtype names as torch dtypes)."""
    out = {k: literal.torch_value(k, v) for k, v in calls.load.items()}
    if calls.bnb is not None:
        out["quantization_config"] = literal.bnb_object(calls.bnb)
    return out


def _args(kwargs: dict) -> str:
    def show(key, value):
        return f"torch.{value}" if key in literal.DTYPE_KEYS and value != "auto" else repr(value)

    return ", ".join(f"{k}={show(k, v)}" for k, v in kwargs.items())


def python_source(recipe: Recipe, family: FamilySpec, calls: Calls, targets: list[str] | None) -> str:
    """Return the calls as the Python a user's script would hold (CHECKPOINT and DEVICE stand for the harness's)."""
    lines = ["import torch", "import transformers"]
    peft_names = ["LoraConfig", "get_peft_model"] + (["prepare_model_for_kbit_training"] if calls.kbit_prep else [])
    lines.append(f"from peft import {', '.join(peft_names)}")
    lines.append("from transformers import BitsAndBytesConfig" if calls.bnb is not None else "")
    lines.append("")
    load = dict(calls.load)
    if calls.bnb is not None:
        lines.append(f"bnb_config = BitsAndBytesConfig({_args(calls.bnb)})")
    extra = (", quantization_config=bnb_config" if calls.bnb is not None else "")
    given = _args(load)
    lines.append(f"model = transformers.{family.model_class}.from_pretrained(CHECKPOINT{', ' + given if given else ''}"
                 f"{extra}, device_map={{'': DEVICE}}, local_files_only=True)")
    ckpt = "" if calls.checkpointing_kwargs is None else f"gradient_checkpointing_kwargs={calls.checkpointing_kwargs!r}"
    if calls.kbit_prep:
        args = ", ".join(a for a in (f"use_gradient_checkpointing={calls.checkpointing}", ckpt) if a)
        lines.append(f"model = prepare_model_for_kbit_training(model, {args})")
    elif calls.checkpointing:
        lines.append(f"model.gradient_checkpointing_enable({ckpt})")
    lora = calls.lora if calls.lora is not None else shorthand_lora(recipe, targets or [])
    lines.append(f"lora_config = LoraConfig({_args(lora)})")
    lines.append("model = get_peft_model(model, lora_config)")
    return "\n".join(lines) + "\n"

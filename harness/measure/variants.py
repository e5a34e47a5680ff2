"""Variants of a recipe compared in one run: bf16 LoRA, QLoRA, QLoRA + checkpointing, and the costly mistakes.

A variant is data: the recipe sections it changes, roles it keeps 16-bit on top of the recipe's, and whether
its steps run in training mode. The expectations follow: a role the variant keeps 16-bit is expected 16-bit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.families import get_family
from harness.recipe import Recipe, validate
from harness.util.errors import unknown

NO_GC = {"training": {"gradient_checkpointing": False}}
GC = {"training": {"gradient_checkpointing": True}}


@dataclass(frozen=True)
class Variant:
    name: str  # joins the case id: qwen2.5-vl-7b-nf4-dq-r64--qlora-gc
    label: str  # for tables
    changes: dict = field(default_factory=dict)  # recipe sections replaced, as for Recipe.replace
    keep_16bit_extra: tuple[str, ...] = ()  # roles kept 16-bit on top of the recipe's (where the family has them)
    training: bool = True  # False: steps run in eval mode, the trap that silently turns checkpointing off
    backend: str = "peft"


VARIANTS = {v.name: v for v in (
    Variant("bf16-lora", "bf16 LoRA", {"quantization": {"load_in_4bit": False}, **NO_GC}),
    Variant("qlora", "QLoRA", NO_GC),
    Variant("qlora-gc", "QLoRA + GC", GC),
    Variant("qlora-gc-vision16", "QLoRA + GC, vision tower and projector 16-bit", GC,
            keep_16bit_extra=("vision_tower", "projector")),
    Variant("qlora-gc-kbit-prep", "QLoRA + GC + prepare_model_for_kbit_training",
            {"training": {"gradient_checkpointing": True, "prepare_for_kbit_training": True}}),
    Variant("qlora-gc-eval", "QLoRA + GC, model left in eval mode (trap)", GC, training=False),
    # Unsloth keeps the whole vision side of Qwen-VL 16-bit (its skip list names the "merger"; the audit on the H200
    # found the 160 vision-tower Linear layers unquantized too): its expectation says so, the audit checks it.
    Variant("unsloth", "Unsloth QLoRA + its GC, vision tower and projector 16-bit", GC,
            keep_16bit_extra=("vision_tower", "projector"), backend="unsloth"),
)}


def get_variant(name: str) -> Variant:
    """Return a variant by name; raise naming the known ones."""
    if name not in VARIANTS:
        raise unknown("comparison variant", name, list(VARIANTS))
    return VARIANTS[name]


def derive(recipe: Recipe, variant: Variant) -> Recipe:
    """Return the recipe as the variant runs it: sections changed, extra roles 16-bit, expectations to match."""
    family = get_family(recipe.family)
    derived = recipe.replace(**variant.changes)
    extra = tuple(r for r in variant.keep_16bit_extra if r in family.roles and r not in derived.quantization.keep_16bit)
    if extra:
        derived = derived.replace(quantization={"keep_16bit": derived.quantization.keep_16bit + extra})
    q = derived.quantization
    expect = {role: dataclasses.replace(exp, weights="16bit") if not q.load_in_4bit or role in q.keep_16bit else exp
              for role, exp in derived.expect.items()}
    derived = dataclasses.replace(derived, name=f"{recipe.name}--{variant.name}", backend=variant.backend,
                                  expect=expect)
    validate(derived)
    return derived

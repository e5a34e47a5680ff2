"""The module audit: per role, what is 4-bit, what is 16-bit, what carries LoRA, what trains."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.families import FamilySpec
from harness.model.lora import is_lora_name
from harness.recipe import Recipe

SHOW = 3  # offending module paths named in a violation


def _16bit(dtype) -> bool:
    import torch

    return dtype in (torch.bfloat16, torch.float16)


@dataclass
class RoleAudit:
    """What one role of a loaded model holds."""

    role: str
    linear4bit: list[str] = field(default_factory=list)
    linear16: list[str] = field(default_factory=list)  # plain Linear base layers in a 16-bit dtype
    linear32: list[str] = field(default_factory=list)  # plain Linear base layers in float32
    bad_quant_state: list[str] = field(default_factory=list)  # "name: why"
    lora_modules: list[str] = field(default_factory=list)
    trainable_lora: list[str] = field(default_factory=list)
    trainable_base: list[str] = field(default_factory=list)
    params: int = 0
    trainable_params: int = 0

    def summary(self) -> dict:
        """Return the counts of this role as plain data."""
        return {
            "linear4bit": len(self.linear4bit), "linear16": len(self.linear16), "linear32": len(self.linear32),
            "bad_quant_state": len(self.bad_quant_state), "lora_modules": len(self.lora_modules),
            "trainable_base": len(self.trainable_base), "params": self.params,
            "trainable_params": self.trainable_params,
        }


@dataclass
class Audit:
    """The audit of a whole model: one RoleAudit per role, plus what belongs to no role."""

    model_name: str
    roles: dict[str, RoleAudit]
    unassigned_trainable: list[str]
    trainable_params: int
    lora_params: int

    def summary(self) -> dict:
        """Return the audit as plain data (for verdicts and reports)."""
        return {"roles": {r: a.summary() for r, a in self.roles.items()},
                "unassigned_trainable": self.unassigned_trainable,
                "trainable_params": self.trainable_params, "lora_params": self.lora_params}

    def violations(self, recipe: Recipe) -> list[str]:
        """Return one sentence per way the model breaks the recipe's expectations; empty when it keeps them."""
        out = []
        for role, exp in recipe.expect.items():
            a = self.roles.get(role)
            if a is None:
                out.append(f"{_label(role)} of {self.model_name}: expected by the recipe, but the family declares no such role")
                continue
            out += _weights_violations(a, exp.weights, self.model_name, recipe)
            out += _train_violations(a, exp.train, self.model_name)
        if self.unassigned_trainable:
            out.append(f"{self.model_name}: expected only LoRA parameters to train, found "
                       f"{len(self.unassigned_trainable)} trainable outside any role: {_first(self.unassigned_trainable)}")
        return out


def _label(role: str) -> str:
    return role.replace("_", " ")


def _first(names: list[str]) -> str:
    more = f" (+{len(names) - SHOW} more)" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def _weights_violations(a: RoleAudit, expected: str, model_name: str, recipe: Recipe) -> list[str]:
    where = f"{_label(a.role)} of {model_name}"
    out = []
    if expected == "16bit":
        if a.linear4bit:
            out.append(f"{where}: expected 16-bit, found {len(a.linear4bit)} Linear4bit modules: {_first(a.linear4bit)}")
        if a.linear32:
            out.append(f"{where}: expected 16-bit, found {len(a.linear32)} float32 Linear modules: {_first(a.linear32)}")
        return out
    q = recipe.quantization
    if a.linear16 or a.linear32:
        left = a.linear16 + a.linear32
        out.append(f"{where}: expected 4-bit, found {len(left)} Linear modules left unquantized: {_first(left)}")
    if not a.linear4bit and not (a.linear16 or a.linear32):
        out.append(f"{where}: expected 4-bit, found no Linear module in the role")
    if a.bad_quant_state:
        out.append(f"{where}: expected {q.quant_type}{' with double quant' if q.double_quant else ''}, "
                   f"compute {q.compute_dtype}; found {len(a.bad_quant_state)} modules otherwise: {_first(a.bad_quant_state)}")
    return out


def _train_violations(a: RoleAudit, expected: str, model_name: str) -> list[str]:
    where = f"{_label(a.role)} of {model_name}"
    out = []
    if a.trainable_base:
        out.append(f"{where}: expected {'frozen base weights' if expected == 'lora' else 'frozen'}, found "
                   f"{len(a.trainable_base)} trainable base parameters: {_first(a.trainable_base)}")
    if expected == "frozen" and (a.lora_modules or a.trainable_lora):
        out.append(f"{where}: expected frozen without LoRA, found LoRA on {len(a.lora_modules)} modules: {_first(a.lora_modules)}")
    if expected == "lora":
        if not a.lora_modules:
            out.append(f"{where}: expected LoRA, found no LoRA module")
        elif not a.trainable_lora:
            out.append(f"{where}: expected trainable LoRA, found all {len(a.lora_modules)} LoRA modules frozen")
    return out


def quant_state_problem(module, recipe: Recipe) -> str | None:
    """Return why a Linear4bit module does not hold the recipe's 4-bit weights, or None if it does."""
    import torch

    q = recipe.quantization
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return "no quant_state (weights never quantized)"
    if weight.numel() * weight.element_size() != -(-module.in_features * module.out_features // 2):
        return f"weight stored as {tuple(weight.shape)} {weight.dtype}, not packed 4-bit"
    if state.quant_type != q.quant_type:
        return f"quant_type {state.quant_type}"
    # bitsandbytes repacks 4-bit weights for CPU inference on the first eval forward (AVX512-BF16), expanding
    # double-quantized scales; judge such a module by the state it was loaded with.
    nested = state.original_nested if getattr(state, "packing_format_for_cpu", False) else state.nested
    if bool(nested) != q.double_quant:
        return f"double quant {'on' if nested else 'off'}"
    if module.compute_dtype is not None and module.compute_dtype != getattr(torch, q.compute_dtype):
        return f"compute dtype {module.compute_dtype}"
    return None


def audit(model, family: FamilySpec, recipe: Recipe, model_name: str | None = None) -> Audit:
    """Return the audit of a loaded (and possibly LoRA-wrapped) model against the family's roles."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    name = model_name or f"{family.name}"
    roles = {r: RoleAudit(r) for r in family.roles}
    for mod_name, module in model.named_modules():
        role = family.role_of(mod_name)
        if role is None or is_lora_name(mod_name):
            continue
        a = roles[role]
        if isinstance(module, LoraLayer):
            a.lora_modules.append(mod_name)
        elif isinstance(module, bnb.nn.Linear4bit):
            a.linear4bit.append(mod_name)
            problem = quant_state_problem(module, recipe)
            if problem:
                a.bad_quant_state.append(f"{mod_name}: {problem}")
        elif isinstance(module, torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
            continue  # the projection inside torch's MultiheadAttention (SigLIP's pooling head): torch reads its weight
            # directly, so transformers never quantizes it; it is neither a 4-bit nor a 16-bit choice of the recipe
        elif isinstance(module, torch.nn.Linear):
            (a.linear16 if _16bit(module.weight.dtype) else a.linear32).append(mod_name)
    unassigned, trainable, lora_params = [], 0, 0
    for p_name, p in model.named_parameters():
        role = family.role_of(p_name.rpartition(".")[0])
        lora = is_lora_name(p_name)
        if role:
            roles[role].params += p.numel()
        if not p.requires_grad:
            continue
        trainable += p.numel()
        lora_params += p.numel() if lora else 0
        if role is None:
            if not lora:
                unassigned.append(p_name)
            continue
        roles[role].trainable_params += p.numel()
        (roles[role].trainable_lora if lora else roles[role].trainable_base).append(p_name)
    return Audit(name, roles, unassigned, trainable, lora_params)

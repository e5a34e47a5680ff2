"""LoRA adapters on the modules a recipe targets, resolved through the family's roles."""
from __future__ import annotations

from harness.families import FamilySpec
from harness.recipe import Recipe

from .calls import linear_features, lora_targets  # noqa: F401 - their home before the calls module


def is_lora_name(name: str) -> bool:
    """Return whether a module or parameter name lies inside a LoRA adapter (lora_A, lora_B, magnitude...)."""
    return any(part.startswith("lora_") for part in name.split("."))


def expected_trainable_params(model, targets: list[str], recipe: Recipe) -> int:
    """Return the LoRA parameter count for the targets: sum of r*(in+out), plus out per module for DoRA."""
    modules = dict(model.named_modules())
    total = 0
    for name in targets:
        fan_in, fan_out = linear_features(modules[name])
        total += recipe.lora.r * (fan_in + fan_out) + (fan_out if recipe.lora.use_dora else 0)
    return total


def prepare_for_training(model, recipe: Recipe):
    """Return the base model made ready for k-bit training as the recipe asks (checkpointing, peft's upcast)."""
    from . import calls

    return calls.prepare(model, *calls.training_calls(recipe))


def apply_lora(model, family: FamilySpec, recipe: Recipe, targets: list[str] | None = None):
    """Return a peft model with the recipe's LoraConfig applied (the shorthand's: B initialised to zero, base frozen).

    targets, if given, replaces target_modules (full module names).
    """
    from peft import get_peft_model

    from . import calls as calls_

    calls = calls_.compile_calls(recipe, family, model)
    if targets is not None:
        calls.peft["target_modules"] = list(targets)
    return get_peft_model(model, calls_.lora_config(calls))


def _lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return [(name, m) for name, m in base.named_modules() if isinstance(m, LoraLayer) and not is_lora_name(name)]


def built_targets(peft_model) -> list[str]:
    """Return the names (in the base model) of the modules peft really wrapped with LoRA."""
    return [name for name, _ in _lora_layers(peft_model)]


def built_lora_params(peft_model) -> int:
    """Return the LoRA parameter count of what peft built: r*(in+out) per adapted module, plus out for DoRA."""
    total = 0
    for _, layer in _lora_layers(peft_model):
        for adapter, r in layer.r.items():
            dora = bool(getattr(layer, "use_dora", {}).get(adapter, False))
            total += r * (layer.in_features + layer.out_features) + (layer.out_features if dora else 0)
    return total

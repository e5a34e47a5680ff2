"""LoRA adapters on the modules a recipe targets, resolved through the family's roles."""
from __future__ import annotations

from harness.families import FamilySpec
from harness.recipe import Recipe
from harness.util.errors import HarnessError


def is_lora_name(name: str) -> bool:
    """Return whether a module or parameter name lies inside a LoRA adapter (lora_A, lora_B, magnitude...)."""
    return any(part.startswith("lora_") for part in name.split("."))


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
    t = recipe.training
    if t.prepare_for_kbit_training:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_lora(model, family: FamilySpec, recipe: Recipe, targets: list[str] | None = None):
    """Return a peft model with LoRA on the recipe's targets (B initialised to zero) and the base frozen."""
    from peft import LoraConfig, get_peft_model

    targets = targets if targets is not None else lora_targets(model, family, recipe)
    config = LoraConfig(
        r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
        target_modules=targets, use_rslora=recipe.lora.use_rslora, use_dora=recipe.lora.use_dora, bias="none",
    )
    return get_peft_model(model, config)

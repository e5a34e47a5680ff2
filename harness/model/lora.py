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


def built_targets(model) -> list[str]:
    """Return the names of the modules peft put LoRA on (what was built, whatever the config asked)."""
    from peft.tuners.lora import LoraLayer

    return sorted(name.removeprefix("base_model.model.") for name, m in model.named_modules()
                  if isinstance(m, LoraLayer) and not is_lora_name(name))


def built_trainable_params(model) -> int:
    """Return the LoRA parameter count the built adapters imply: r*(in+out) per adapted module (+out for DoRA),
    read from each LoRA layer's own r and features."""
    from peft.tuners.lora import LoraLayer

    total = 0
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and not is_lora_name(name):
            for adapter, r in m.r.items():
                total += r * (m.in_features + m.out_features)
                if m.use_dora.get(adapter):
                    total += m.out_features
    return total


def prepare_for_training(model, recipe: Recipe):
    """Return the base model made ready for k-bit training as the recipe's calls say (checkpointing, peft's upcast)."""
    from . import calls

    t, given = recipe.training, calls.checkpointing_kwargs(recipe)
    kwargs = {} if given is None else {"gradient_checkpointing_kwargs": given}
    if t.prepare_for_kbit_training:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing, **kwargs)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(**kwargs)
    return model


def lora_config(model, family: FamilySpec, recipe: Recipe, targets: list[str] | None = None):
    """Return the LoraConfig the recipe makes: its literal peft section as written, or the shorthand's targets."""
    from peft import LoraConfig

    from . import calls

    if recipe.peft is not None:
        return LoraConfig(**recipe.peft)
    targets = targets if targets is not None else lora_targets(model, family, recipe)
    return LoraConfig(**calls.shorthand_lora(recipe, targets))


def apply_lora(model, family: FamilySpec, recipe: Recipe, targets: list[str] | None = None):
    """Return a peft model with LoRA as the recipe's calls say (B initialised to zero unless they say otherwise)."""
    from peft import get_peft_model

    config = lora_config(model, family, recipe, targets)
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft's own refusal, e.g. target modules that match nothing
        raise HarnessError(f"LoRA of {family.name}: get_peft_model refuses the recipe's LoraConfig: {e}") from None

"""A recipe checked against its family's modules before anything loads: on the meta device (names and shapes, no
weights), so that LoRA targets or roles that match nothing fail at the command line, not after a checkpoint build."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from harness.families import get_family
from harness.recipe import Recipe, load_recipe
from harness.util.errors import HarnessError


@lru_cache(maxsize=None)
def _module_names(family_name: str) -> tuple[tuple[str, bool], ...]:
    """Return (module name, is Linear) of the family's tiny architecture (the names are those of every size)."""
    import torch

    from . import load, synth

    family = get_family(family_name)
    model = load.meta_model(family, synth.make_config(family, "tiny"))
    load.check_roles(model, family)
    return tuple((name, isinstance(module, torch.nn.Linear)) for name, module in model.named_modules())


def check_recipe(recipe: Recipe) -> Recipe:
    """Return the recipe once its LoRA targets match Linear modules of its family's roles; raise naming them if not."""
    if recipe.peft is not None:
        return recipe  # literal LoraConfig: what it matches is peft's to decide, judged once built
    family = get_family(recipe.family)
    if family.unavailable(processor=False):
        return recipe  # an architecture this transformers lacks: its cases skip, saying so, and nothing is built
    linear = [name for name, is_linear in _module_names(family.name) if is_linear]
    chosen = [n for n in linear if family.role_of(n) in recipe.lora.target_roles]
    found = {n.rpartition(".")[2] for n in chosen}
    missing = [t for t in recipe.lora.target_modules if t not in found]
    where = recipe.source or recipe.name
    if missing:
        known = sorted(found) or sorted({n.rpartition(".")[2] for n in linear})
        raise HarnessError(f"{where}: lora.target_modules {missing} match no Linear module in roles "
                           f"{list(recipe.lora.target_roles)} of {family.name} (their Linear layers: "
                           f"{', '.join(known[:12])}); remove them or fix the name")
    return recipe


def load_checked(path: str | Path) -> Recipe:
    """Return the recipe in a file, validated as data and against its family's modules."""
    return check_recipe(load_recipe(path))

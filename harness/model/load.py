"""Loading a checkpoint (synthetic or real) through from_pretrained with a BitsAndBytesConfig."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.families import FamilySpec
from harness.recipe import Recipe
from harness.util.errors import HarnessError

from .calls import role_roots  # noqa: F401 - its home before the calls module

# Offline by default: the harness never downloads, so no library should try. huggingface_hub reads these once,
# when it is first imported, and bitsandbytes may fetch a CPU kernel from the Hub as it is imported; both happen
# after this module is, through the imports in the functions below. A value the user set explicitly wins.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)


def resolve_checkpoint(path: str | Path) -> Path:
    """Return the folder holding config.json: path itself, or the newest snapshot of a Hugging Face cache entry."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise HarnessError(f"checkpoint folder {path} does not exist; give a folder with config.json and *.safetensors "
                           "(a save_pretrained folder, or a models--ORG--NAME folder of the Hugging Face cache)")
    if (path / "config.json").is_file():
        return path
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip() / "config.json").is_file():
            return snapshots / ref.read_text().strip()
        found = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    raise HarnessError(f"checkpoint folder {path} has no config.json (nor a snapshots/ folder with one); "
                       "point at the folder that save_pretrained wrote")


def model_type(checkpoint: Path) -> str | None:
    """Return the model_type of a checkpoint's config.json; raise naming the file if it is not a JSON mapping."""
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: save it again") from None
    if not isinstance(config, dict):
        raise HarnessError(f"{path} holds a {type(config).__name__}, not a config mapping; the checkpoint is damaged: save it again")
    return config.get("model_type")


def read_config(checkpoint: Path, family: FamilySpec):
    """Return the checkpoint's config, raising if its architecture is not the family's."""
    import transformers

    expected = getattr(transformers, family.config_class).model_type
    found = model_type(checkpoint)
    if found != expected:
        raise HarnessError(f"checkpoint {checkpoint} is a {found!r} model, but family {family.name} expects "
                           f"model_type {expected!r}; pick the family that matches the checkpoint")
    return transformers.AutoConfig.from_pretrained(checkpoint, local_files_only=True)


def detect_family(checkpoint: str | Path) -> FamilySpec:
    """Return the family whose architecture a checkpoint's config.json names; raise if none does."""
    import transformers

    from harness.families import FAMILIES

    checkpoint = resolve_checkpoint(checkpoint)
    found = model_type(checkpoint)
    for family in FAMILIES.values():
        if getattr(transformers, family.config_class).model_type == found:
            return family
    known = ", ".join(getattr(transformers, f.config_class).model_type for f in FAMILIES.values())
    raise HarnessError(f"checkpoint {checkpoint} has model_type {found!r}, which no family covers (known: {known}); "
                       "add a family module for it")


def meta_model(family: FamilySpec, config):
    """Return the family's model built from config on the meta device: names and shapes, no weights."""
    import torch
    import transformers

    with torch.device("meta"):
        return getattr(transformers, family.model_class)(config)


def check_roles(model, family: FamilySpec) -> dict[str, int]:
    """Return the number of modules in each declared role; raise if a role's pattern matches nothing."""
    counts = {role: 0 for role in family.roles}
    for name, _ in model.named_modules():
        role = family.role_of(name)
        if role:
            counts[role] += 1
    empty = [role for role, n in counts.items() if n == 0]
    if empty:
        sample = ", ".join(n for n, _ in list(model.named_modules())[1:8])
        raise HarnessError(
            f"role {empty[0]} of family {family.name}: pattern {family.roles[empty[0]]!r} matches no module of "
            f"{type(model).__name__} (module names look like: {sample}); fix the pattern in the family spec")
    return counts


def check_safetensors(checkpoint: Path) -> None:
    """Raise if a checkpoint has no safetensors weights, naming the pickle files it has and the recipe key that allows them."""
    if any(Path(checkpoint).glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in Path(checkpoint).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    raise HarnessError(
        f"checkpoint {checkpoint} has no *.safetensors file (found {', '.join(pickled) or 'no weights at all'}); "
        "pickle weights can run code as they load: convert them to safetensors, or, if you trust their source, "
        "set allow_pickle: true in the recipe")


def require_bitsandbytes() -> None:
    """Raise if bitsandbytes, which 4-bit loading needs, is not installed."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HarnessError("4-bit loading needs bitsandbytes>=0.49, which is not installed: "
                           "pip install 'bitsandbytes>=0.49' (or set quantization.load_in_4bit: false)") from None


def load_model(checkpoint: str | Path, family: FamilySpec, recipe: Recipe, device: str = "cpu",
               allow_pickle: bool | None = None, trust_remote_code: bool | None = None):
    """Return the base model loaded from checkpoint with the recipe's from_pretrained call, frozen, roles verified.

    The call is the recipe's, compiled by harness.model.calls (its literal load:/bitsandbytes: keywords, or the
    shorthand's). allow_pickle and trust_remote_code default to the recipe's keys, which default to off.
    """
    import transformers

    from . import calls as calls_

    allow_pickle = recipe.allow_pickle if allow_pickle is None else allow_pickle
    trust_remote_code = recipe.trust_remote_code if trust_remote_code is None else trust_remote_code
    checkpoint = resolve_checkpoint(checkpoint)
    config = read_config(checkpoint, family)
    if not allow_pickle:
        check_safetensors(checkpoint)
    skeleton = meta_model(family, config)
    check_roles(skeleton, family)
    calls = calls_.compile_calls(recipe, family, skeleton)
    del skeleton
    if calls.bitsandbytes is not None:
        require_bitsandbytes()
    kwargs = calls_.from_pretrained_kwargs(calls, device, allow_pickle, trust_remote_code)
    model = getattr(transformers, family.model_class).from_pretrained(checkpoint, **kwargs)
    model.requires_grad_(False)
    check_roles(model, family)
    return model


def load_processor(checkpoint: str | Path, family: FamilySpec, trust_remote_code: bool = False):
    """Return the checkpoint's processor (tokenizer + image processor), or its tokenizer for language models."""
    from . import processors

    return processors.load_processor(resolve_checkpoint(checkpoint), family, trust_remote_code)

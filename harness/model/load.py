"""Loading a checkpoint (synthetic or real) through from_pretrained with a BitsAndBytesConfig."""
from __future__ import annotations

import json
import os
from pathlib import Path

from harness.families import FamilySpec
from harness.recipe import Recipe
from harness.util.errors import HarnessError, shorten

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
        if ref.is_file():  # what the cache says is current: never silently another snapshot
            try:
                commit = ref.read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise HarnessError(f"{ref} cannot be read ({e}); fix or remove it") from None
            chosen = snapshots / commit
            if not commit or "/" in commit or not (chosen / "config.json").is_file():
                raise HarnessError(f"{ref} names snapshot {commit[:40]!r}, but {snapshots} has no such snapshot with "
                                   "a config.json; download it again, or point at a snapshot folder itself")
            return chosen
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
    try:
        return transformers.AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        raise HarnessError(f"{Path(checkpoint) / 'config.json'} does not make a {family.config_class} "
                           f"({type(e).__name__}: {shorten(str(e), 200)}); the checkpoint is damaged: save it again") from None


def detect_family(checkpoint: str | Path) -> FamilySpec:
    """Return the family whose architecture a checkpoint's config.json names; raise if none does."""
    import transformers

    from harness.families import FAMILIES

    checkpoint = resolve_checkpoint(checkpoint)
    found = model_type(checkpoint)
    available = [f for f in FAMILIES.values() if f.unavailable() is None]
    for family in available:
        if getattr(transformers, family.config_class).model_type == found:
            return family
    known = ", ".join(getattr(transformers, f.config_class).model_type for f in available)
    raise HarnessError(f"checkpoint {checkpoint} has model_type {found!r}, which no family covers (known: {known}); "
                       "add a family module for it")


def meta_model(family: FamilySpec, config):
    """Return the family's model built from config on the meta device: names and shapes, no weights."""
    import torch
    import transformers
    import transformers.modeling_utils

    # transformers 4.57 initialises even meta tensors (1.2 s for Gemma 3 27B; `list` took 13 s): built under its
    # no_init_weights, which also skips the weight tying post_init does, so that is done here (every full size then
    # counts the same parameters as built plainly). transformers 5 skips the init on meta itself.
    no_init = getattr(transformers.modeling_utils, "no_init_weights", None)
    if no_init is None:
        with torch.device("meta"):
            return getattr(transformers, family.model_class)(config)
    with no_init(), torch.device("meta"):
        model = getattr(transformers, family.model_class)(config)
    model.tie_weights()
    return model


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


def check_safetensors(checkpoint: Path, allow_pickle: bool = False) -> None:
    """Raise if a checkpoint has no safetensors weights (naming the pickle files it has and the recipe key that allows
    them), or, with allow_pickle, no weights at all."""
    from .weights import weight_files

    weight_files(checkpoint, allow_pickle)


def check_checkpoint(checkpoint: Path, family: FamilySpec, config, allow_pickle: bool = False, skeleton=None) -> int:
    """Return how many tensors were checked: safetensors headers intact, shapes those of config's architecture
    (built on the meta device); raise naming the file and tensor otherwise."""
    from .weights import check_weights

    return check_weights(checkpoint, skeleton if skeleton is not None else meta_model(family, config), allow_pickle)


def require_bitsandbytes() -> None:
    """Raise if bitsandbytes, which 4-bit loading needs, is not installed."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HarnessError("4-bit loading needs bitsandbytes>=0.49, which is not installed: "
                           "pip install 'bitsandbytes>=0.49' (or set quantization.load_in_4bit: false)") from None


def load_model(checkpoint: str | Path, family: FamilySpec, recipe: Recipe, device: str = "cpu",
               allow_pickle: bool | None = None, trust_remote_code: bool | None = None):
    """Return the base model loaded from checkpoint per the recipe's quantization, frozen, roles verified.

    allow_pickle and trust_remote_code default to the recipe's keys, which default to off.
    """
    import transformers

    allow_pickle = recipe.allow_pickle if allow_pickle is None else allow_pickle
    trust_remote_code = recipe.trust_remote_code if trust_remote_code is None else trust_remote_code
    checkpoint = resolve_checkpoint(checkpoint)
    config = read_config(checkpoint, family)
    if recipe.quantization.load_in_4bit:
        require_bitsandbytes()
    from . import calls

    skeleton = meta_model(family, config)
    check_checkpoint(checkpoint, family, config, allow_pickle, skeleton)
    check_roles(skeleton, family)
    kwargs = calls.load_kwargs(calls.compile_calls(recipe, family, skeleton))
    del skeleton
    model = getattr(transformers, family.model_class).from_pretrained(
        checkpoint,
        **kwargs,
        device_map={"": device},
        use_safetensors=not allow_pickle or None,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    model.requires_grad_(False)
    check_roles(model, family)
    return model


def load_processor(checkpoint: str | Path, family: FamilySpec, trust_remote_code: bool = False):
    """Return the checkpoint's processor (tokenizer + image processor), or its tokenizer for language models."""
    from . import processors

    return processors.load_processor(resolve_checkpoint(checkpoint), family, trust_remote_code)

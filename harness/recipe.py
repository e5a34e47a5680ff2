"""Recipes are data: a YAML file of quantization, LoRA, training knobs and per-role expectations."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness import literal
from harness.families import ROLE_ORDER, get_family
from harness.util.errors import HarnessError, did_you_mean, shorten
from harness.util.resources import data_path
from harness.util.yaml_load import load_yaml_file

QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("bfloat16", "float16", "float32")
STORAGE_DTYPES = ("uint8", "bfloat16", "float16", "float32")
WEIGHTS = ("4bit", "16bit")
TRAIN = ("frozen", "lora")
BACKENDS = ("peft", "unsloth")
TRAINERS = ("harness", "trl")  # who runs the user's training loop: the harness's own, or TRL's SFTTrainer
OPTIMIZERS = ("adamw_torch", "adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")  # harness.checks.train
RECIPES_DIR = data_path("recipes")  # shipped in the wheel (harness/data/recipes)
# Bounds beyond which a value is a typo, not a setting: the largest hidden size of a supported model is 8192,
# the longest context 128k tokens; a GPU budget below 1 GiB holds no model.
MAX_RANK = 8192
MAX_SEQ_LEN = 131_072
MAX_BATCH_SIZE = 65_536
MAX_IMAGE_SIZE = 16_384
MIN_GPU_BUDGET = "1GiB"


@dataclass(frozen=True)
class Quantization:
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    quant_storage: str = "uint8"
    keep_16bit: tuple[str, ...] = ("head",)  # roles whose Linear layers stay 16-bit


@dataclass(frozen=True)
class Lora:
    r: int = 64
    alpha: float = 16
    dropout: float = 0.1
    target_roles: tuple[str, ...] = ("language_backbone",)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    use_rslora: bool = False
    use_dora: bool = False


@dataclass(frozen=True)
class Training:
    gradient_checkpointing: bool = True
    batch_size: int = 1
    image_size: int = 448  # pixels per side at full size; tiny models use their family's tiny image size
    seq_len: int = 330
    optimizer: str = "adamw_torch"
    learning_rate: float = 2e-4
    prepare_for_kbit_training: bool = False  # peft's helper upcasts non-quantized weights to fp32
    gpu_budget: str | None = None  # e.g. "16GiB": GPU steps of this recipe run capped, as on a card that size
    trainer: str = "harness"  # "trl": the user trains with TRL's SFTTrainer, configured by sft_config
    sft_config: dict | None = None  # TRL SFTConfig keyword arguments, as the user writes them
    # as the user's script passes it; None: left out (a literal recipe gets the library's default, a shorthand
    # recipe the harness's {use_reentrant: false})
    gradient_checkpointing_kwargs: dict | None = None


@dataclass(frozen=True)
class Expectation:
    weights: str  # "4bit" or "16bit"
    train: str  # "frozen" or "lora"


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    backend: str = "peft"
    quantization: Quantization = field(default_factory=Quantization)
    lora: Lora = field(default_factory=Lora)
    training: Training = field(default_factory=Training)
    expect: dict[str, Expectation] = field(default_factory=dict)
    trust_remote_code: bool = False  # run Python code shipped with a checkpoint: only for a source you trust
    allow_pickle: bool = False  # load pickle weights (pytorch_model.bin), which can run code: safetensors only otherwise
    # Literal library calls (harness.literal): keyword arguments exactly as the user's script writes them. When
    # given, they are the calls made; quantization and lora then hold what the installed library makes of them.
    load: dict | None = None  # from_pretrained
    bitsandbytes: dict | None = None  # BitsAndBytesConfig
    peft: dict | None = None  # LoraConfig
    source: str = ""  # the file it came from

    @property
    def lora_roles(self) -> tuple[str, ...]:
        """Return the roles that may carry LoRA: the shorthand's target roles, or those the expectations say train it."""
        return self.lora.target_roles or tuple(r for r, e in self.expect.items() if e.train == "lora")

    @property
    def literal(self) -> tuple[str, ...]:
        """Return the sections this recipe states as literal library calls."""
        return tuple(s for s in literal.SECTIONS if getattr(self, s) is not None)

    def test_id(self, size: str) -> str:
        """Return a readable id such as 'qwen2.5-vl-tiny-nf4-dq-r64'; a recipe not shipped in recipes/ adds its name.

        The shipped recipes keep the short id their baselines are stored under; any other recipe file is told
        apart from them by its name, e.g. 'qwen2.5-vl-tiny-nf4-dq-r64-mine'.
        """
        q = self.quantization
        quant = f"{q.quant_type}{'-dq' if q.double_quant else ''}" if q.load_in_4bit else "bf16"
        base = f"{self.family}-{size}-{quant}-r{self.lora.r}{'-dora' if self.lora.use_dora else ''}"
        base += "-literal" if self.literal else ""
        return base if self.shipped else f"{base}-{slug(self.name)}"

    @property
    def shipped(self) -> bool:
        """Return whether the recipe came from this checkout's recipes/ folder (or from no file)."""
        return not self.source or Path(self.source).resolve().parent == RECIPES_DIR

    def fingerprint(self) -> str:
        """Return a short hash of everything the recipe says (not where it came from): equal recipes, equal hashes."""
        data = dataclasses.asdict(dataclasses.replace(self, source=""))
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def replace(self, **sections: dict[str, Any]) -> "Recipe":
        """Return a copy with fields of the named sections replaced, e.g. replace(lora={'r': 8})."""
        changes = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


def slug(text: str) -> str:
    """Return text as an id part: letters, digits, dots and dashes."""
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "recipe"


# ---- validation: what a recipe file may say (types, names, bounds), checked before anything loads ----------------

# What each annotated field type accepts from YAML, and how an error names it.
ACCEPTED = {"bool": ((bool,), "true or false"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
            "str": ((str,), "a string"), "tuple[str, ...]": ((tuple,), "a list of names"),
            "str | None": ((str, type(None)), "a string")}


def _check_types(cls, values: dict, source: str, section: str = "") -> None:
    for f in fields(cls):
        if f.name not in values or str(f.type) not in ACCEPTED:
            continue
        value, (types, what) = values[f.name], ACCEPTED[str(f.type)]
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if ok and isinstance(value, tuple):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value  # as the YAML wrote it
            raise HarnessError(f"{source}: {section}{f.name} must be {what}, found {shorten(shown)!r}"
                               f"{_yaml_hint(value, types)}")


def _yaml_hint(value, types) -> str:
    if float not in types or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as text: write it with a dot and a sign, e.g. 2.0e-4)"


def _section(cls, data: Any, source: str, section: str, defaults: dict | None = None):
    where = f"{source}: {section}"
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: expected a mapping, found {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise HarnessError(f"{where}: unknown key {shorten(key)!r}{did_you_mean(str(key), known)}; "
                               f"known keys: {', '.join(sorted(known))}")
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in data]
    if required:
        raise HarnessError(f"{where}: missing {', '.join(required)}; write e.g. {{weights: 4bit, train: frozen}}")
    values = {**(defaults or {}), **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}}
    _check_types(cls, values, source, section + ".")
    return cls(**values)


# Section keys whose defaults depend on the family's modules (CLIP has no head and names its output out_proj):
# a recipe that leaves them out takes them from the family's default recipe in recipes/.
FAMILY_KEYS = {"quantization": ("keep_16bit",), "lora": ("target_roles", "target_modules")}


def family_defaults(family) -> dict[str, dict]:
    """Return the section defaults of a family: the FAMILY_KEYS values of its default recipe file."""
    if not family.default_recipe:
        return {}
    data = _default_data(family.default_recipe)
    return {section: {k: tuple(data[section][k]) for k in keys if k in (data.get(section) or {})}
            for section, keys in FAMILY_KEYS.items()}


@functools.lru_cache(maxsize=None)
def _default_data(file_name: str) -> dict:
    data = load_yaml_file(RECIPES_DIR / file_name)
    return data if isinstance(data, dict) else {}


def parse_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    """Return a validated Recipe from parsed YAML data; raise HarnessError naming what is wrong."""
    if not isinstance(data, dict):
        raise HarnessError(f"{source}: a recipe is a mapping of sections, found {type(data).__name__}")
    known = {f.name for f in fields(Recipe)} - {"source"}
    for key in data:
        if key not in known:
            raise HarnessError(f"{source}: unknown key {shorten(key)!r}{did_you_mean(str(key), known)}; "
                               f"known keys: {', '.join(sorted(known))}")
    for key in ("name", "family"):
        if key not in data:
            raise HarnessError(f"{source}: missing required key {key!r}")
    name = data["name"]
    if not isinstance(name, (str, int, float)) or isinstance(name, bool) or not str(name).strip():
        raise HarnessError(f"{source}: name must be a non-empty text such as my-qlora, found {shorten(name)!r}")
    if len(str(name)) > 100 or "\n" in str(name):
        raise HarnessError(f"{source}: name must be one line of at most 100 characters, found {shorten(name)!r}")
    if not isinstance(data["family"], str):
        raise HarnessError(f"{source}: family must be a family name such as qwen2.5-vl, found {shorten(data['family'])!r}")
    try:
        family = get_family(data["family"])
    except HarnessError as e:
        raise HarnessError(f"{source}: {e}") from None
    scalars = {k: data[k] for k in ("backend", "trust_remote_code", "allow_pickle") if k in data}
    _check_types(Recipe, scalars, source)
    expect_data = data.get("expect") or {}
    if not isinstance(expect_data, dict):
        raise HarnessError(f"{source}: expect: expected a mapping of role to {{weights, train}}, found {type(expect_data).__name__}")
    for role in expect_data:
        if not isinstance(role, str):
            raise HarnessError(f"{source}: expect: a role is a name such as vision_tower, found {shorten(role)!r}")
    expect = {role: _section(Expectation, exp, source, f"expect.{role}") for role, exp in expect_data.items()}
    defaults = family_defaults(family)
    data = {k: v for k, v in data.items() if not (k in literal.SECTIONS and v is None)}  # as asdict writes
    calls = _literal_sections(data, source)
    quantization = _section(Quantization, _or_empty(data, "quantization"), source, "quantization",
                            defaults.get("quantization"))
    lora = _section(Lora, _or_empty(data, "lora"), source, "lora", defaults.get("lora"))
    if "bitsandbytes" in data or "load" in data:  # what the literal calls amount to in the installed library
        quantization = Quantization(**literal.effective_quantization(calls.get("bitsandbytes")))
    if "peft" in data:
        lora = _literal_lora(calls["peft"], source)
    recipe = Recipe(
        name=str(name),
        family=data["family"],
        quantization=quantization,
        lora=lora,
        training=_section(Training, _or_empty(data, "training"), source, "training"),
        expect=expect,
        source=source,
        **calls,
        **scalars,
    )
    validate(recipe)
    return recipe


def _or_empty(data: dict, key: str):
    return {} if data.get(key, {}) is None else data.get(key, {})  # `lora:` with nothing under it: the defaults


def _literal_sections(data: dict, source: str) -> dict:
    """Return the literal sections of parsed YAML, checked against the installed libraries."""
    for shorthand, literal_name in (("quantization", "bitsandbytes"), ("lora", "peft")):
        if shorthand in data and literal_name in data:
            raise HarnessError(f"{source}: both {shorthand}: and {literal_name}: are given; a recipe states the call "
                               f"once: keep {literal_name}: (the keyword arguments as your script writes them) or "
                               f"{shorthand}: (the harness's shorthand)")
    folder = Path(source).parent if source and not source.startswith("<") else None
    return {name: literal.parse_section(name, data[name], source, folder) for name in literal.SECTIONS if name in data}


def _literal_lora(kwargs: dict, source: str) -> Lora:
    try:
        return Lora(**literal.effective_lora(kwargs))
    except (TypeError, ValueError) as e:  # LoraConfig's own checks of its arguments
        raise HarnessError(f"{source}: peft: LoraConfig refuses these arguments: {e}") from None


def _choice(value, allowed, what: str, where: str) -> None:
    if value not in allowed:
        raise HarnessError(f"{where}: {what} must be one of {', '.join(allowed)}, found {shorten(value)!r}"
                           f"{did_you_mean(str(value), allowed)}")


def _number(value, what: str, where: str, low: float, high: float, low_open: bool = False) -> None:
    """Raise unless value is a finite number in [low, high] ((low, high] with low_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"{'above' if low_open else 'at least'} {low:g} and at most {high:g}"
        raise HarnessError(f"{where}: {what} must be a finite number {bound}, found {shorten(value)!r}")


def validate(recipe: Recipe) -> None:
    """Raise HarnessError if the recipe is malformed or contradicts itself."""
    where = recipe.source or recipe.name
    family = get_family(recipe.family)
    roles = [r for r in ROLE_ORDER if r in family.roles]
    q, lora, t = recipe.quantization, recipe.lora, recipe.training
    _choice(recipe.backend, BACKENDS, "backend", where)
    _choice(q.quant_type, QUANT_TYPES, "quantization.quant_type", where)
    _choice(q.compute_dtype, DTYPES, "quantization.compute_dtype", where)
    _choice(q.quant_storage, STORAGE_DTYPES, "quantization.quant_storage", where)
    if not isinstance(lora.r, int) or isinstance(lora.r, bool) or lora.r <= 0:
        raise HarnessError(f"{where}: lora.r must be a positive integer, found {shorten(lora.r)!r}")
    if lora.r > MAX_RANK:
        raise HarnessError(f"{where}: lora.r is {lora.r}, above {MAX_RANK}, the largest hidden size of a supported "
                           "model; LoRA ranks are typically 4 to 256")
    if not isinstance(lora.alpha, (int, float)) or isinstance(lora.alpha, bool) or lora.alpha <= 0:
        raise HarnessError(f"{where}: lora.alpha must be positive, found {shorten(lora.alpha)!r}")
    _number(lora.alpha, "lora.alpha", where, 0, 1e6, low_open=True)
    if not 0 <= lora.dropout < 1:
        raise HarnessError(f"{where}: lora.dropout must be in [0, 1), found {lora.dropout!r}")
    _number(t.learning_rate, "training.learning_rate", where, 0, 1.0, low_open=True)
    _choice(t.optimizer, OPTIMIZERS, "training.optimizer", where)
    if not lora.target_modules and recipe.peft is None:
        raise HarnessError(f"{where}: lora.target_modules is empty; name the Linear layers to adapt, e.g. [q_proj, v_proj]")
    if not lora.target_roles and recipe.peft is None:
        raise HarnessError(f"{where}: lora.target_roles is empty, so nothing would be adapted; name roles of family "
                           f"{family.name}: {', '.join(roles)}")
    _choice(t.trainer, TRAINERS, "training.trainer", where)
    if t.sft_config is not None and (t.trainer != "trl" or not isinstance(t.sft_config, dict)):
        raise HarnessError(f"{where}: training.sft_config holds TRL SFTConfig arguments: expected a mapping with "
                           f"training.trainer: trl, found {type(t.sft_config).__name__} with trainer {t.trainer!r}")
    if t.gpu_budget is not None:
        from harness.util.units import parse_bytes

        try:
            budget = parse_bytes(t.gpu_budget)
        except HarnessError as e:
            raise HarnessError(f"{where}: training.gpu_budget: {e}") from None
        if budget < parse_bytes(MIN_GPU_BUDGET) or not any(c.isalpha() for c in t.gpu_budget):
            raise HarnessError(f"{where}: training.gpu_budget {shorten(t.gpu_budget)!r} is {budget:,} bytes; give a card's "
                               f"memory with its unit, at least {MIN_GPU_BUDGET}, e.g. 16GiB")
    for what, value, high in (("batch_size", t.batch_size, MAX_BATCH_SIZE), ("seq_len", t.seq_len, MAX_SEQ_LEN),
                              ("image_size", t.image_size, MAX_IMAGE_SIZE)):
        if value < 1:
            raise HarnessError(f"{where}: training.batch_size, seq_len and image_size must be positive")
        if value > high:
            raise HarnessError(f"{where}: training.{what} is {value:,}, above {high:,}; no supported model takes that")
    if t.gradient_checkpointing_kwargs is not None and not isinstance(t.gradient_checkpointing_kwargs, dict):
        raise HarnessError(f"{where}: training.gradient_checkpointing_kwargs must be a mapping such as "
                           f"{{use_reentrant: false}}, found {t.gradient_checkpointing_kwargs!r}")
    for what, names in (("quantization.keep_16bit", q.keep_16bit), ("lora.target_roles", lora.target_roles),
                        ("expect", tuple(recipe.expect))):
        for role in names:
            _choice(role, roles, f"a role in {what} of family {family.name}", where)
    for role, exp in recipe.expect.items():
        _choice(exp.weights, WEIGHTS, f"expect.{role}.weights", where)
        _choice(exp.train, TRAIN, f"expect.{role}.train", where)
        if recipe.literal:
            continue  # literal calls: the expectations are judged against what the library builds, not the recipe
        if exp.weights == "4bit" and (not q.load_in_4bit or role in q.keep_16bit):
            raise HarnessError(f"{where}: expect.{role}.weights is 4bit, but the recipe keeps {role} 16-bit "
                               f"({'load_in_4bit is false' if not q.load_in_4bit else 'quantization.keep_16bit lists it'})")
        targeted = role in lora.target_roles
        if exp.train == "lora" and not targeted:
            raise HarnessError(f"{where}: expect.{role}.train is lora, but lora.target_roles does not list {role}")
        if exp.train == "frozen" and targeted:
            raise HarnessError(f"{where}: expect.{role}.train is frozen, but lora.target_roles lists {role}")


# ---- files --------------------------------------------------------------------------------------------------------

def load_recipe(path: str | Path) -> Recipe:
    """Return the recipe in a YAML file; raise HarnessError if it is missing, unreadable or malformed."""
    data = load_yaml_file(path, "recipe file", "a YAML recipe (see harness/data/recipes/ for examples)")
    return parse_recipe(data, source=str(path))


def default_recipe(family_name: str) -> Recipe:
    """Return the default recipe of a family, from the shipped recipes (harness/data/recipes)."""
    import copy

    path = RECIPES_DIR / get_family(family_name).default_recipe
    return copy.deepcopy(_shipped_recipe(str(path), path.stat().st_mtime_ns if path.is_file() else None))


@functools.lru_cache(maxsize=None)
def _shipped_recipe(path: str, mtime_ns: int | None) -> Recipe:
    # parsed once per file version: test collection asks for every family's default recipe once per test function
    return load_recipe(path)

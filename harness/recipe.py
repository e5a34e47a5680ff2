"""Recipes are data: a YAML file of quantization, LoRA, training knobs and per-role expectations.

Two ways to state the calls, one path that makes them (harness.model.calls): the role shorthand (quantization:,
lora:) or the literal sections (load:, bitsandbytes:, peft:, harness.literal) with the user's own keyword arguments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from harness import literal
from harness.families import ROLE_ORDER, get_family
from harness.util.errors import HarnessError, did_you_mean

QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("bfloat16", "float16", "float32")
STORAGE_DTYPES = ("uint8", "bfloat16", "float16", "float32")
WEIGHTS = ("4bit", "16bit", "32bit")  # 32bit: unquantized float32, as peft's prepare_model_for_kbit_training leaves them
TRAIN = ("frozen", "lora")
BACKENDS = ("peft", "unsloth")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


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
    # passed to gradient_checkpointing_enable as written; None: the shorthand's {"use_reentrant": False}, or in a
    # literal recipe no argument at all (the library's default)
    gradient_checkpointing_kwargs: dict | None = None


@dataclass(frozen=True)
class Expectation:
    weights: str  # "4bit", "16bit" or "32bit"
    train: str  # "frozen" or "lora"


@dataclass(frozen=True)
class QuantState:
    """What every Linear4bit module is expected to hold; a field left None is not checked."""

    quant_type: str | None = None
    double_quant: bool | None = None
    compute_dtype: str | None = None


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
    source: str = ""  # the file it came from
    # The literal sections (harness.literal): keyword arguments as the user's script writes them, None when not given.
    # In a literal recipe, quantization and lora are only a summary read off them (for ids and estimates).
    load: dict | None = None
    bitsandbytes: dict | None = None
    peft: dict | None = None
    notes: tuple[str, ...] = ()  # what parsing the literal sections did (e.g. read peft keywords from a file)
    expect_quant_state: QuantState | None = None  # expect.quant_state

    @property
    def is_literal(self) -> bool:
        """Return whether the recipe states its library calls literally (load/bitsandbytes/peft sections)."""
        return any(getattr(self, s) is not None for s in literal.SECTIONS)

    def quant_expectation(self) -> QuantState | None:
        """Return the quant state every Linear4bit should hold: expect.quant_state, or the shorthand's settings."""
        if self.expect_quant_state is not None or self.is_literal:
            return self.expect_quant_state
        q = self.quantization
        return QuantState(q.quant_type, q.double_quant, q.compute_dtype) if q.load_in_4bit else None

    def test_id(self, size: str) -> str:
        """Return a readable id such as 'qwen2.5-vl-tiny-nf4-dq-r64' (a literal recipe: 'qwen2-vl-tiny-literal-qwen2-vl')."""
        if self.is_literal:
            return f"{self.family}-{size}-{self.name}"
        q = self.quantization
        quant = f"{q.quant_type}{'-dq' if q.double_quant else ''}" if q.load_in_4bit else "bf16"
        return f"{self.family}-{size}-{quant}-r{self.lora.r}{'-dora' if self.lora.use_dora else ''}"

    def replace(self, **sections: dict[str, Any]) -> "Recipe":
        """Return a copy with fields of the named sections replaced, e.g. replace(lora={'r': 8})."""
        changes = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changes)


# What each annotated field type accepts from YAML, and how an error names it.
ACCEPTED = {"bool": ((bool,), "true or false"), "int": ((int,), "an integer"), "float": ((int, float), "a number"),
            "str": ((str,), "a string"), "tuple[str, ...]": ((tuple,), "a list of names"),
            "dict | None": ((dict,), "a mapping of keyword arguments"),
            "str | None": ((str, type(None)), "a string"), "bool | None": ((bool, type(None)), "true or false")}


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
            raise HarnessError(f"{source}: {section}{f.name} must be {what}, found {shown!r}{_yaml_hint(value, types)}")


def _yaml_hint(value, types) -> str:
    if float not in types or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as text: write it with a dot and a sign, e.g. 2.0e-4)"


def _section(cls, data: Any, source: str, section: str):
    where = f"{source}: {section}"
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: expected a mapping, found {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise HarnessError(f"{where}: unknown key {key!r}{did_you_mean(str(key), known)}; known keys: {', '.join(sorted(known))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    _check_types(cls, values, source, section + ".")
    return cls(**values)


def parse_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    """Return a validated Recipe from parsed YAML data; raise HarnessError naming what is wrong."""
    if not isinstance(data, dict):
        raise HarnessError(f"{source}: a recipe is a mapping of sections, found {type(data).__name__}")
    known = {f.name for f in fields(Recipe)} - {"source", "notes", "expect_quant_state"}
    for key in data:
        if key not in known:
            raise HarnessError(f"{source}: unknown key {key!r}{did_you_mean(str(key), known)}; known keys: {', '.join(sorted(known))}")
    for key in ("name", "family"):
        if key not in data:
            raise HarnessError(f"{source}: missing required key {key!r}")
    if not isinstance(data["family"], str):
        raise HarnessError(f"{source}: family must be a family name such as qwen2.5-vl, found {data['family']!r}")
    try:
        get_family(data["family"])
    except HarnessError as e:
        raise HarnessError(f"{source}: {e}") from None
    scalars = {k: data[k] for k in ("backend", "trust_remote_code", "allow_pickle") if k in data}
    _check_types(Recipe, scalars, source)
    if not isinstance(data.get("expect") or {}, dict):
        raise HarnessError(f"{source}: expect: expected a mapping of role to {{weights, train}}, found {type(data['expect']).__name__}")
    expect_data = dict(data.get("expect") or {})
    quant_state = expect_data.pop("quant_state", None)
    expect = {role: _section(Expectation, exp, source, f"expect.{role}") for role, exp in expect_data.items()}
    sections = _literal_sections(data, source)
    quantization, lora = (_literal_summary(sections) if sections else
                          (_section(Quantization, data.get("quantization", {}), source, "quantization"),
                           _section(Lora, data.get("lora", {}), source, "lora")))
    recipe = Recipe(
        name=str(data["name"]),
        family=data["family"],
        quantization=quantization,
        lora=lora,
        training=_section(Training, data.get("training", {}), source, "training"),
        expect=expect,
        source=source,
        expect_quant_state=None if quant_state is None else _section(QuantState, quant_state, source, "expect.quant_state"),
        **{k: sections.get(k) for k in literal.SECTIONS}, notes=tuple(sections.get("notes", ())),
        **scalars,
    )
    validate(recipe)
    return recipe


def _literal_sections(data: dict, source: str) -> dict:
    """Return the literal sections of recipe data ({} for a shorthand recipe), checked against the installed libraries."""
    given = [s for s in literal.SECTIONS if s in data]
    if not given:
        return {}
    mixed = [s for s in ("quantization", "lora") if s in data]
    if mixed:
        raise HarnessError(f"{source}: the literal sections ({', '.join(given)}) and the role shorthand ({', '.join(mixed)}) "
                           "both state the calls; keep one: bitsandbytes:/peft: as your script writes them, or "
                           "quantization:/lora: by role")
    if "peft" not in data:
        raise HarnessError(f"{source}: a literal recipe needs a peft: section with LoraConfig's keywords "
                           "(peft: {} for all of LoraConfig's defaults)")
    base = Path(source).parent if source and not source.startswith("<") else None
    peft, notes = literal.peft_section(data["peft"], source, base)
    out = {"load": literal.section(data.get("load"), "load", source), "peft": peft, "notes": notes,
           "bitsandbytes": literal.section(data["bitsandbytes"], "bitsandbytes", source) if "bitsandbytes" in data else None}
    literal.validate(out["load"], out["bitsandbytes"], out["peft"], get_family(data["family"]).config_class, source)
    return out


def _literal_summary(sections: dict) -> tuple[Quantization, Lora]:
    """Return the shorthand's view of literal sections, for ids and estimates only (never to build or to judge)."""
    bnb, peft = sections.get("bitsandbytes") or {}, sections["peft"]
    targets = peft.get("target_modules")
    quantization = Quantization(
        load_in_4bit=bool(bnb.get("load_in_4bit")), quant_type=str(bnb.get("bnb_4bit_quant_type", "fp4")),
        double_quant=bool(bnb.get("bnb_4bit_use_double_quant", False)),
        compute_dtype=str(bnb.get("bnb_4bit_compute_dtype", "float32")), keep_16bit=())
    lora = Lora(r=peft.get("r", 8), alpha=peft.get("lora_alpha", 8), dropout=peft.get("lora_dropout", 0.0), target_roles=(),
                target_modules=tuple(targets) if isinstance(targets, list) else (), use_rslora=bool(peft.get("use_rslora")),
                use_dora=bool(peft.get("use_dora")))
    return quantization, lora


def _choice(value, allowed, what: str, where: str) -> None:
    if value not in allowed:
        raise HarnessError(f"{where}: {what} must be one of {', '.join(allowed)}, found {value!r}{did_you_mean(str(value), allowed)}")


def validate(recipe: Recipe) -> None:
    """Raise HarnessError if the recipe is malformed or contradicts itself."""
    where = recipe.source or recipe.name
    family = get_family(recipe.family)
    roles = [r for r in ROLE_ORDER if r in family.roles]
    q, lora, t = recipe.quantization, recipe.lora, recipe.training
    _choice(recipe.backend, BACKENDS, "backend", where)
    if t.gradient_checkpointing_kwargs is not None and not isinstance(t.gradient_checkpointing_kwargs, dict):
        raise HarnessError(f"{where}: training.gradient_checkpointing_kwargs must be a mapping, e.g. {{use_reentrant: false}}")
    if recipe.expect_quant_state is not None:
        s = recipe.expect_quant_state
        if s.quant_type is not None:
            _choice(s.quant_type, QUANT_TYPES, "expect.quant_state.quant_type", where)
        if s.compute_dtype is not None:
            _choice(s.compute_dtype, DTYPES, "expect.quant_state.compute_dtype", where)
    if recipe.is_literal:
        if recipe.backend != "peft":
            raise HarnessError(f"{where}: a literal recipe runs through peft (backend: peft), found backend {recipe.backend!r}")
        for role, exp in recipe.expect.items():  # judged against what gets built, so only the names are checked
            _choice(role, roles, f"a role in expect of family {family.name}", where)
            _choice(exp.weights, WEIGHTS, f"expect.{role}.weights", where)
            _choice(exp.train, TRAIN, f"expect.{role}.train", where)
        return
    _choice(q.quant_type, QUANT_TYPES, "quantization.quant_type", where)
    _choice(q.compute_dtype, DTYPES, "quantization.compute_dtype", where)
    _choice(q.quant_storage, STORAGE_DTYPES, "quantization.quant_storage", where)
    if not isinstance(lora.r, int) or isinstance(lora.r, bool) or lora.r <= 0:
        raise HarnessError(f"{where}: lora.r must be a positive integer, found {lora.r!r}")
    if not isinstance(lora.alpha, (int, float)) or lora.alpha <= 0:
        raise HarnessError(f"{where}: lora.alpha must be positive, found {lora.alpha!r}")
    if not 0 <= lora.dropout < 1:
        raise HarnessError(f"{where}: lora.dropout must be in [0, 1), found {lora.dropout!r}")
    if not lora.target_modules:
        raise HarnessError(f"{where}: lora.target_modules is empty; name the Linear layers to adapt, e.g. [q_proj, v_proj]")
    if t.gpu_budget is not None:
        from harness.util.units import parse_bytes

        parse_bytes(t.gpu_budget)
    if t.batch_size < 1 or t.seq_len < 1 or t.image_size < 1:
        raise HarnessError(f"{where}: training.batch_size, seq_len and image_size must be positive")
    for what, names in (("quantization.keep_16bit", q.keep_16bit), ("lora.target_roles", lora.target_roles),
                        ("expect", tuple(recipe.expect))):
        for role in names:
            _choice(role, roles, f"a role in {what} of family {family.name}", where)
    for role, exp in recipe.expect.items():
        _choice(exp.weights, WEIGHTS, f"expect.{role}.weights", where)
        _choice(exp.train, TRAIN, f"expect.{role}.train", where)
        if exp.weights == "4bit" and (not q.load_in_4bit or role in q.keep_16bit):
            raise HarnessError(f"{where}: expect.{role}.weights is 4bit, but the recipe keeps {role} 16-bit "
                               f"({'load_in_4bit is false' if not q.load_in_4bit else 'quantization.keep_16bit lists it'})")
        targeted = role in lora.target_roles
        if exp.train == "lora" and not targeted:
            raise HarnessError(f"{where}: expect.{role}.train is lora, but lora.target_roles does not list {role}")
        if exp.train == "frozen" and targeted:
            raise HarnessError(f"{where}: expect.{role}.train is frozen, but lora.target_roles lists {role}")


def load_recipe(path: str | Path) -> Recipe:
    """Return the recipe in a YAML file; raise HarnessError if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"recipe file {path} does not exist; give the path of a YAML recipe (see recipes/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HarnessError(f"{path}: not valid YAML: {e}") from None
    return parse_recipe(data, source=str(path))


def default_recipe(family_name: str) -> Recipe:
    """Return the default recipe of a family, from recipes/."""
    return load_recipe(RECIPES_DIR / get_family(family_name).default_recipe)

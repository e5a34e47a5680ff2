"""The five seed experiments as data: each names its recipe, the variants it compares, its model sizes, batch
sizes and training steps, at tiny size (CPU) and at full size (GPU).

A recipe (recipes/seed-*.yaml) says how the model is quantized and adapted; an experiment says what to vary and
what to measure. Variants are harness.measure.variants' (bf16 LoRA, QLoRA, QLoRA + GC, Unsloth) or defined here the same
way, as the recipe sections they change (DoRA, a rank, an optimizer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.measure.variants import VARIANTS, Variant
from harness.recipe import RECIPES_DIR
from harness.util.errors import HarnessError, unknown

SIZES = ("tiny", "full")


def _rank(r: int, optimizer: str) -> Variant:
    # alpha = 2r keeps LoRA's scaling alpha/r fixed, so only the rank's capacity changes between arms
    return Variant(f"r{r}-{optimizer}", f"r={r}, {optimizer}",
                   {"lora": {"r": r, "alpha": 2 * r}, "training": {"optimizer": optimizer}})


DORA = Variant("qlora-dora", "QLoRA + DoRA", {"lora": {"use_dora": True}})
LORA_16BIT = Variant("lora-16bit", "LoRA (16-bit base)", {"quantization": {"load_in_4bit": False}})
AS_WRITTEN = Variant("recipe", "the recipe as written")


@dataclass(frozen=True)
class Experiment:
    """One seed experiment: its recipe, what it compares, and how big and how long it runs at each size."""

    name: str
    title: str
    recipe: str  # file under recipes/
    kind: str  # "profile" (variants x batch sizes), "ablation" (the same, loss curve first), "few-shot", "grounding"
    sizes: dict  # "tiny" / "full" -> the family's model sizes
    variants: tuple[Variant, ...]
    batch_sizes: dict  # "tiny" / "full" -> batch sizes the steps are measured at
    steps: dict = field(default_factory=lambda: {"tiny": 0, "full": 0})  # optimizer steps of the loss curve
    grad_accum: dict = field(default_factory=lambda: {"tiny": 1, "full": 1})
    warmup_steps: dict = field(default_factory=lambda: {"tiny": 0, "full": 0})
    schedule: str = "constant"  # or "cosine" (with warm-up)
    generate: bool = False  # greedy generation on a real (drawn) image, twice: deterministic?
    merge: bool = False  # fold the LoRA into a dequantized 16-bit copy and compare its outputs
    tasks: tuple[str, ...] = ()  # the shapes tasks trained on and evaluated (harness.tasks.shapes)
    grid: int = 3  # shapes scenes: cells per side

    @property
    def recipe_path(self) -> Path:
        return RECIPES_DIR / self.recipe


EXPERIMENTS = {e.name: e for e in (
    Experiment(
        "seed-qwen2.5-vl-feasibility", "Qwen2.5-VL-7B QLoRA feasibility: 4-bit load, LoRA on the language "
        "backbone, generation, Unsloth, batch 1 vs 2", "seed-qwen2.5-vl-feasibility.yaml", "profile",
        {"tiny": ("tiny",), "full": ("7b",)}, (VARIANTS["qlora"], VARIANTS["qlora-gc"], VARIANTS["unsloth"]),
        {"tiny": (1, 2), "full": (1, 2)}, steps={"tiny": 2, "full": 10}, generate=True, tasks=("colour",)),
    Experiment(
        "seed-clip-static-dynamic", "CLIP ViT-B/16 static vs dynamic memory: LoRA vs QLoRA vs QLoRA + GC",
        "seed-clip-static-dynamic.yaml", "profile", {"tiny": ("tiny",), "full": ("vit-b-16",)},
        (VARIANTS["bf16-lora"], VARIANTS["qlora"], VARIANTS["qlora-gc"]),
        {"tiny": (2, 4), "full": (8, 16, 32)}, steps={"tiny": 2, "full": 10}),
    Experiment(
        "seed-qwen2.5-rank-ablation", "Qwen2.5 0.5B-7B rank ablation: r=4/8/16, paged AdamW 32-bit and 8-bit",
        "seed-qwen2.5-rank-ablation.yaml", "ablation",
        {"tiny": ("tiny",), "full": ("0.5b", "1.5b", "3b", "7b")},
        tuple(_rank(r, "paged_adamw_32bit") for r in (4, 8, 16)) + (_rank(16, "paged_adamw_8bit"),),
        {"tiny": (2,), "full": (4,)}, steps={"tiny": 2, "full": 10}),
    Experiment(
        "seed-clip-few-shot", "CLIP ViT-B/16 few-shot: LoRA / QLoRA / DoRA on both encoders",
        "seed-clip-few-shot.yaml", "few-shot", {"tiny": ("tiny",), "full": ("vit-b-16",)},
        (LORA_16BIT, AS_WRITTEN, DORA), {"tiny": (2,), "full": (16,)}, steps={"tiny": 2, "full": 60},
        tasks=("position",)),
    Experiment(
        "seed-siglip2-few-shot", "SigLIP 2 base few-shot: the CLIP few-shot experiment on a sigmoid-loss dual encoder",
        "seed-siglip2-few-shot.yaml", "few-shot", {"tiny": ("tiny",), "full": ("base-patch16-naflex",)},
        (LORA_16BIT, AS_WRITTEN, DORA), {"tiny": (2,), "full": (16,)}, steps={"tiny": 2, "full": 60},
        tasks=("position",)),
    Experiment(
        "seed-qwen2-vl-grounding", "Qwen2-VL-7B grounding SFT: boxes and points in the grounding format, IoU, "
        "merge, memory budget", "seed-qwen2-vl-grounding.yaml", "grounding", {"tiny": ("tiny",), "full": ("7b",)},
        (AS_WRITTEN,), {"tiny": (2,), "full": (2,)}, steps={"tiny": 2, "full": 12},
        grad_accum={"tiny": 2, "full": 8}, warmup_steps={"tiny": 1, "full": 2}, schedule="cosine",
        merge=True, tasks=("box", "point")),
)}


def get_experiment(name: str) -> Experiment:
    """Return a seed experiment by name; raise naming the known ones."""
    if name not in EXPERIMENTS:
        raise unknown("seed experiment", name, EXPERIMENTS)
    return EXPERIMENTS[name]


def for_recipe(path: str | Path, recipe=None) -> Experiment:
    """Return the experiment a recipe file belongs to: by the recipe's name (an edited copy keeps it) or its file name;
    raise naming the seed recipes."""
    path = Path(path)
    found = [e for e in EXPERIMENTS.values() if recipe is not None and e.name == recipe.name]
    found = found or [e for e in EXPERIMENTS.values() if e.recipe == path.name]
    if not found:
        raise HarnessError(f"recipe {path} is not a seed experiment's; `qlora-harness run` takes one of "
                           f"{', '.join('recipes/' + e.recipe for e in EXPERIMENTS.values())} (or an edited copy of "
                           "one that keeps its name:)")
    return found[0]


def check_size(size: str) -> None:
    """Raise unless size is tiny or full."""
    if size not in SIZES:
        raise unknown("run size", size, SIZES)

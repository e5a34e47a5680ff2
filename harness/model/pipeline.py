"""The whole path for one case: checkpoint -> 4-bit load -> training preparation -> LoRA, ready to audit and run."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.families import FamilySpec, check_size, get_family
from harness.recipe import Recipe
from harness.util.errors import HarnessError

from . import load, lora, synth


@dataclass
class Case:
    """What to test: a family at a size under a recipe, from a synthetic or a given checkpoint."""

    family: FamilySpec
    size: str
    recipe: Recipe
    checkpoint: Path | None = None  # None: a synthetic checkpoint from the cache
    variant: str = ""  # a comparison variant's name (harness.measure.variants), joined to the id

    @property
    def id(self) -> str:
        return self.recipe.test_id(self.size) + (f"--{self.variant}" if self.variant else "")

    @property
    def key(self) -> tuple:
        """What a loaded model depends on: equal keys may share one load (the id is for reading, this for caching)."""
        return (self.family.name, self.size, self.recipe.fingerprint(), str(self.checkpoint or ""), self.variant)


@dataclass
class Harnessed:
    """A loaded case: the peft model, its processor, the LoRA targets and the trainable count they imply."""

    case: Case
    checkpoint: Path
    processor: Any
    model: Any
    targets: list[str]
    expected_trainable: int

    @property
    def config(self):
        return self.model.config


def case(family: str, size: str, recipe: Recipe, checkpoint: Path | None = None, variant: str = "") -> Case:
    """Return a Case, checking the family and size names."""
    spec = get_family(family)
    check_size(spec, size)
    return Case(spec, size, recipe, checkpoint, variant)


def checkpoint_of(c: Case, cache_dir: Path, device: str = "cpu") -> Path:
    """Return the checkpoint folder of a case, building the synthetic one if needed."""
    if c.checkpoint is not None:
        return load.resolve_checkpoint(c.checkpoint)
    return synth.synthetic_checkpoint(c.family, c.size, cache_dir, device=device)


@contextmanager
def reading(c: Case, cache_dir: Path, device: str = "cpu", urgent: bool = False):
    """Yield the checkpoint folder of a case, kept on disk while the caller reads it (synthetic ones can be
    evicted by other processes to make room: harness.model.disk); urgent: harness.model.synth.synthetic_checkpoint."""
    if c.checkpoint is not None:
        yield load.resolve_checkpoint(c.checkpoint)
        return
    with synth.reading(c.family, c.size, cache_dir, device=device, urgent=urgent) as folder:
        yield folder


def load_base(c: Case, cache_dir: Path, device: str = "cpu"):
    """Return (checkpoint, base model) of a case, loaded per its recipe with no LoRA."""
    with reading(c, cache_dir, device) as folder:
        return folder, load.load_model(folder, c.family, c.recipe, device=device)


def adapt(c: Case, model, on_prepared=None):
    """Return (peft model, LoRA targets, expected trainable count): the base prepared for training, LoRA applied.

    on_prepared, if given, is called with the prepared base before LoRA is applied (to measure it).
    """
    if c.recipe.backend != "peft":
        raise HarnessError(f"{c.id}: backend {c.recipe.backend!r} runs in a process of its own "
                           "(harness.measure.unsloth_backend), not through the peft pipeline")
    literal = c.recipe.peft is not None
    targets = None if literal else lora.lora_targets(model, c.family, c.recipe)
    expected = None if literal else lora.expected_trainable_params(model, targets, c.recipe)
    model = lora.prepare_for_training(model, c.recipe)
    if on_prepared is not None:
        on_prepared(model)
    model = lora.apply_lora(model, c.family, c.recipe, targets)
    if literal:  # targets and count from what peft built of the literal LoraConfig
        targets, expected = lora.built_targets(model), lora.built_trainable_params(model)
    return model, targets, expected


def harness(c: Case, cache_dir: Path, device: str = "cpu") -> Harnessed:
    """Return the case loaded in 4-bit, prepared for training as its recipe asks, with LoRA applied."""
    with reading(c, cache_dir, device) as folder:
        model = load.load_model(folder, c.family, c.recipe, device=device)
        processor = load.load_processor(folder, c.family, c.recipe.trust_remote_code)
    model, targets, expected = adapt(c, model)
    return Harnessed(c, folder, processor, model, targets, expected)

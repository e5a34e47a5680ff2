"""The shape of a model family: architecture configs, module roles, and how to build its processor."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

# The roles every family may declare. A module belongs to the first role, in this order, whose pattern
# matches its name, so a projector nested inside the vision tower is claimed by the projector.
ROLE_ORDER = ("projector", "vision_tower", "embeddings", "head", "language_backbone")

VLM, LLM, DUAL_ENCODER = "vlm", "llm", "dual-encoder"


@dataclass(frozen=True)
class FamilySpec:
    """A model family: its configs by size, its published parameter counts and its module roles."""

    name: str
    kind: str  # VLM, LLM or DUAL_ENCODER: which input builders and checks apply
    config_class: str  # a transformers config class name
    model_class: str  # a transformers model class name
    sizes: Mapping[str, Mapping[str, Any]]  # size name -> config kwargs; "tiny" is the CPU size
    published_params: Mapping[str, float]  # size name -> parameter count of the published checkpoint
    roles: Mapping[str, str]  # role -> regex searched in module names
    write_processor: Callable[..., Any]  # (folder, config) -> writes tokenizer + processor files
    processor_class: str = ""  # a transformers processor class, assembled from parts when AutoProcessor cannot
    default_recipe: str = ""  # file name under recipes/
    tiny_image_size: int = 56  # pixels per side of the images the tiny size is tested with

    def role_of(self, module_name: str) -> str | None:
        """Return the role a module name belongs to, or None."""
        for role in ROLE_ORDER:
            pattern = self.roles.get(role)
            if pattern and re.search(pattern, module_name):
                return role
        return None

    @property
    def has_images(self) -> bool:
        return self.kind in (VLM, DUAL_ENCODER)

    @property
    def generates(self) -> bool:
        return self.kind in (VLM, LLM)

    def size_names(self, include_tiny: bool = False) -> list[str]:
        """Return the size names, full sizes only unless include_tiny."""
        return [s for s in self.sizes if include_tiny or s != "tiny"]

"""The family registry: a plain mapping from family name to its spec. Adding a family is one module and one line here.

Families are data at the bottom of the package: they may import only `util`."""
from __future__ import annotations

from harness.util.errors import unknown

from . import clip, qwen2_5, qwen2_5_vl, qwen2_vl
from .base import DUAL_ENCODER, LLM, ROLE_ORDER, VLM, FamilySpec

FAMILIES: dict[str, FamilySpec] = {
    "qwen2.5-vl": qwen2_5_vl.SPEC,
    "qwen2-vl": qwen2_vl.SPEC,
    "clip": clip.SPEC,
    "qwen2.5": qwen2_5.SPEC,
}


def get_family(name: str) -> FamilySpec:
    """Return the spec of a family by name, or raise with the nearest known name."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise unknown("model family", name, FAMILIES) from None


def check_size(family: FamilySpec, size: str) -> None:
    """Raise if family has no size of that name."""
    if size not in family.sizes:
        raise unknown(f"size of {family.name}", size, family.sizes)


__all__ = ["FAMILIES", "FamilySpec", "get_family", "check_size", "ROLE_ORDER", "VLM", "LLM", "DUAL_ENCODER"]

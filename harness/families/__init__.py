"""The family registry: a plain mapping from family name to its spec. Adding a family is one module and one line here.

Families are data at the bottom of the package: they may import only `util`."""
from __future__ import annotations

from harness.util.errors import unknown

from . import (
    clip,
    gemma3,
    internvl,
    llava_onevision,
    mllama,
    qwen2_5,
    qwen2_5_vl,
    qwen2_vl,
    qwen3,
    qwen3_5,
    qwen3_vl,
    siglip2,
    smolvlm,
)
from .base import DUAL_ENCODER, LLM, ROLE_ORDER, VLM, FamilySpec, Inputs

FAMILIES: dict[str, FamilySpec] = {
    "qwen2.5-vl": qwen2_5_vl.SPEC,
    "qwen2-vl": qwen2_vl.SPEC,
    "clip": clip.SPEC,
    "qwen2.5": qwen2_5.SPEC,
    "qwen3-vl": qwen3_vl.SPEC,
    "qwen3": qwen3.SPEC,
    "gemma3": gemma3.SPEC,
    "smolvlm": smolvlm.SPEC,
    "llava-onevision": llava_onevision.SPEC,
    "mllama": mllama.SPEC,
    "internvl": internvl.SPEC,
    "siglip2": siglip2.SPEC,
    "qwen3.5": qwen3_5.SPEC,
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


def gpu_cases() -> list[tuple[str, str, tuple[int, ...]]]:
    """Return (family, size, batch sizes) for every full size a family flags for the GPU tier."""
    return [(name, size, f.gpu_batch_sizes) for name, f in FAMILIES.items() for size in f.gpu_sizes]


__all__ = ["FAMILIES", "FamilySpec", "Inputs", "get_family", "check_size", "gpu_cases", "ROLE_ORDER", "VLM", "LLM",
           "DUAL_ENCODER"]

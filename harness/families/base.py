"""The shape of a model family: architecture configs, module roles, how its inputs look, and how to build its files."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# The roles every family may declare. A module belongs to the first role, in this order, whose pattern
# matches its name, so a projector nested inside the vision tower is claimed by the projector, and Llama 3.2
# Vision's cross-attention layers by their own role before the language backbone's pattern sees them.
ROLE_ORDER = ("projector", "vision_tower", "cross_attention", "embeddings", "head", "language_backbone")
# The module layout transformers gives LLaVA-style VLMs (LLaVA, LLaVA-OneVision, Gemma 3, InternVL): a vision_tower,
# a multi_modal_projector and a language_model, the head beside them.
LLAVA_ROLES = {
    "projector": r"(^|\.)multi_modal_projector(\.|$)",
    "vision_tower": r"(^|\.)vision_tower(\.|$)",
    "embeddings": r"(^|\.)embed_tokens$",
    "head": r"(^|\.)lm_head$",
    "language_backbone": r"(^|\.)language_model\.(model\.)?(layers|norm)(\.|$)",
}

VLM, LLM, DUAL_ENCODER = "vlm", "llm", "dual-encoder"


@dataclass(frozen=True)
class Inputs:
    """How a family's prompts, labels and image placeholders look: the contract harness.checks.inputs reads.

    Nothing outside harness/families/ knows a family's tokens or processor outputs; it asks this object.
    """

    turn_end: str = ""  # what closes an answer's turn in the chat template ("<|im_end|>", "<end_of_turn>")
    image_token: str = ""  # the placeholder the processor repeats once per image feature
    image_token_id: str = "image_token_id"  # the config attribute that holds the placeholder's id
    label_ignore: tuple[str, ...] = ()  # more tokens never scored as labels: image boundaries, tile markers
    nested_images: bool = False  # the processor takes one list of images per sample, not one flat list
    # (config, batch) -> the number of placeholders each sample must carry, from the processor's outputs
    image_tokens: Callable[[Any, Mapping], list[int]] | None = None
    per_token: tuple[str, ...] = ()  # processor outputs laid out per token beside input_ids, which the model reads
    text_padding: bool | str = True  # how captions are padded (dual encoders): True, or "max_length"
    text_max_length: int | None = None  # with text_padding "max_length": the length captions are padded to
    # image processor settings passed with every call, read from the saved image processor: processors whose call
    # defaults override the saved settings (SigLIP 2's patch_size and max_num_patches) need them to match the model
    image_settings: tuple[str, ...] = ()
    # (config) -> the side in pixels of the image square one placeholder stands for, in families whose processor
    # resizes within min/max pixels (Qwen VL: patch x merge); None where the count does not follow the area
    pixel_unit: Callable[[Any], int] | None = None
    # (config, batch) -> the sequence length of each pass the batch makes through the vision tower's layers (one per
    # image, tile or crop the model encodes, padding tiles the model drops left out), from the processor's outputs:
    # what the memory estimate sizes the tower's activations by
    vision_sequences: Callable[[Any, Mapping], list[int]] | None = None
    # whether the vision tower builds a dense (sequence x sequence) mask in the compute dtype for each pass, which its
    # attention keeps for backward (Mllama's mask of padding tiles and patches)
    vision_dense_mask: bool = False
    # whether the model itself raises when placeholders and image features disagree (cross-attention models
    # have no placeholder per feature to count, so only the harness can refuse)
    model_refuses_mismatch: bool = True


@dataclass(frozen=True)
class FamilySpec:
    """A model family: its configs by size, its published parameter counts, its module roles and its inputs."""

    name: str
    kind: str  # VLM, LLM or DUAL_ENCODER: which input builders and checks apply
    config_class: str  # a transformers config class name
    model_class: str  # a transformers model class name
    sizes: Mapping[str, Mapping[str, Any]]  # size name -> config kwargs; "tiny" is the CPU size
    published_params: Mapping[str, float]  # size name -> parameter count of the published checkpoint
    roles: Mapping[str, str]  # role -> regex searched in module names
    write_processor: Callable[..., Any]  # (folder, config) -> writes tokenizer + processor files
    processor_class: str = ""  # a transformers processor class, assembled from parts when AutoProcessor cannot
    image_processor_class: str = ""  # the image processor class its writer uses (some releases need torchvision for it)
    default_recipe: str = ""  # file name under recipes/
    tiny_image_size: int = 56  # pixels per side of the images the tiny size is tested with
    inputs: Inputs = field(default_factory=Inputs)
    # (model) -> None: sets weights that transformers' own init leaves inert for a random checkpoint
    init_weights: Callable[[Any], None] | None = None
    min_transformers: str = ""  # the first transformers release with this architecture ("" = every supported one)
    gpu_sizes: tuple[str, ...] = ()  # full sizes the GPU tier (pytest -m gpu) builds, profiles and baselines
    gpu_batch_sizes: tuple[int, ...] = (1, 2, 4)  # the batch sizes a GPU profile steps at

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

    def unavailable(self, transformers_version: str | None = None, processor: bool = True) -> str | None:
        """Return why this family cannot be built under a transformers version (default: the installed one, whose
        classes must also import; the processor's only where processor is true), or None."""
        import transformers

        installed = transformers_version is None
        transformers_version = transformers_version or transformers.__version__
        from packaging.version import Version

        if self.min_transformers and Version(transformers_version) < Version(self.min_transformers):
            return (f"family {self.name} ({self.model_class}) needs transformers >= {self.min_transformers}, "
                    f"found {transformers_version}")
        if installed:
            return _import_problem(self, transformers, processor)
        return None


def _import_problem(family: FamilySpec, transformers, processor: bool) -> str | None:
    # e.g. transformers 4.57's SmolVLMProcessor imports its video processor, which needs torchvision
    names = (family.processor_class, family.image_processor_class) if processor else ()
    for name in (family.config_class, family.model_class, *names):
        try:
            found = getattr(transformers, name, None) if name else True
            if found is None:
                return f"family {family.name}: transformers {transformers.__version__} has no {name}"
            if getattr(found, "_backends", None):  # a placeholder for a class whose backends are missing
                return (f"family {family.name}: transformers {transformers.__version__}'s {name} needs "
                        f"{', '.join(found._backends)}, which is not installed")
        except Exception as e:  # noqa: BLE001 - the import error is the reason
            cause = e.__cause__ or e
            return (f"family {family.name}: transformers {transformers.__version__} cannot import {name} "
                    f"({type(cause).__name__}: {cause})")
    return None

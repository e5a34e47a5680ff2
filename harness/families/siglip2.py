"""SigLIP 2 (NaFlex): a ViT image encoder over a variable grid of patches at the image's own aspect ratio and a text
encoder read at its last token, trained with a sigmoid loss; a dual encoder like CLIP."""
from __future__ import annotations

from pathlib import Path

from ._tokens import byte_level_tokenizer
from .base import DUAL_ENCODER, FamilySpec, Inputs

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}


def vision_sequences(config, batch) -> list[int]:
    """Return each image's sequence in the tower: the processor's max_num_patches slots (padding included, masked in
    attention), no class token."""
    pixels = batch["pixel_values"]  # (images, patches, channels x patch x patch)
    return [int(pixels.shape[1])] * int(pixels.shape[0])


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in (Gemma's special tokens) and a NaFlex image processor for the tower's patches."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, "", bos="<bos>", eos="<eos>", pad="<pad>",
                                     max_length=config.text_config.max_position_embeddings)
    vision = config.vision_config
    image_processor = transformers.Siglip2ImageProcessor(patch_size=vision.patch_size, max_num_patches=vision.num_patches)
    transformers.Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _config(text: dict, vision: dict) -> dict:
    text = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vocab_size": 256000,
            "max_position_embeddings": 64, "pad_token_id": ID["<pad>"], "bos_token_id": ID["<bos>"],
            "eos_token_id": ID["<eos>"], **text}
    vision = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "num_channels": 3, "patch_size": 16,
              "num_patches": 256, **vision}
    return dict(text_config=text, vision_config=vision)


def _tower(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads)


# From the published config.json of google/siglip2-{base,so400m}-patch16-naflex.
SPEC = FamilySpec(
    name="siglip2",
    kind=DUAL_ENCODER,
    config_class="Siglip2Config",
    model_class="Siglip2Model",
    sizes={
        "tiny": _config(dict(_tower(64, 128, 2, 2), vocab_size=320),
                        dict(_tower(64, 128, 2, 2), patch_size=8, num_patches=16)),
        "base-patch16-naflex": _config(_tower(768, 3072, 12, 12), _tower(768, 3072, 12, 12)),
        "so400m-patch16-naflex": _config(_tower(1152, 4304, 27, 16), _tower(1152, 4304, 27, 16)),
    },
    published_params={"base-patch16-naflex": 375.2e6, "so400m-patch16-naflex": 1.136e9},  # safetensors counts
    roles={
        "projector": r"(^|\.)(vision_model\.head|text_model\.head)(\.|$)",
        # the patch embedding (a Linear over flattened patches, not CLIP's Conv2d) is the vision input's embedding
        "vision_tower": r"(^|\.)vision_model(\.(?!embeddings(\.|$))|$)",
        "embeddings": r"(^|\.)(text_model|vision_model)\.embeddings(\.|$)",
        "language_backbone": r"(^|\.)text_model(\.|$)",
    },
    write_processor=write_processor,
    processor_class="Siglip2Processor",
    default_recipe="siglip2.yaml",
    tiny_image_size=32,
    # SigLIP reads a caption at its last token and was trained on captions padded to 64 tokens: pad them all there
    inputs=Inputs(text_padding="max_length", image_settings=("patch_size", "max_num_patches"),
                  vision_sequences=vision_sequences),
    gpu_sizes=("base-patch16-naflex",),
    gpu_batch_sizes=(8, 16, 32),
)

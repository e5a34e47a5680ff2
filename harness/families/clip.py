"""CLIP: a ViT image encoder and a causal-masked text encoder, each with a linear projection."""
from __future__ import annotations

from pathlib import Path

from . import _vision
from ._tokens import added_tokens_decoder, byte_alphabet, load_bpe_tokenizer
from .base import DUAL_ENCODER, FamilySpec, Inputs

# CLIP's byte-level BPE marks word ends with </w>; the special tokens follow the byte tokens.
_WORD_END = "</w>"
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_BOS_ID = 2 * 256
_EOS_ID = _BOS_ID + 1


def _config(text: dict, vision: dict, projection_dim: int) -> dict:
    text = dict(max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=_BOS_ID,
                eos_token_id=_EOS_ID, pad_token_id=_EOS_ID, **text)
    vision = dict(hidden_act="quick_gelu", num_channels=3, **vision)
    return dict(text_config=text, vision_config=vision, projection_dim=projection_dim)


def vision_sequences(config, batch) -> list[int]:
    """Return each image's sequence in the tower: its patch grid and the class token."""
    return _vision.per_image(batch["pixel_values"], config.vision_config.patch_size, extra=1)


def write_processor(folder: Path, config) -> None:
    """Write a tiny CLIP tokenizer and the image processor for config's image size into folder."""
    import transformers

    chars = byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab.update({ch + _WORD_END: 256 + i for i, ch in enumerate(chars)})
    vocab.update({_BOS: _BOS_ID, _EOS: _EOS_ID})
    tokenizer = load_bpe_tokenizer(vocab, {
        "tokenizer_class": "CLIPTokenizer",
        "added_tokens_decoder": added_tokens_decoder([_BOS, _EOS], _BOS_ID),
        "bos_token": _BOS, "eos_token": _EOS, "pad_token": _EOS, "unk_token": _EOS,
        "model_max_length": 77,
    })
    size = config.vision_config.image_size
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


# From the published config.json of openai/clip-vit-base-patch16 and openai/clip-vit-large-patch14.
SPEC = FamilySpec(
    name="clip",
    kind=DUAL_ENCODER,
    config_class="CLIPConfig",
    model_class="CLIPModel",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, vocab_size=576),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8),
            projection_dim=64,
        ),
        "vit-b-16": _config(
            dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, vocab_size=49408),
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=16),
            projection_dim=512,
        ),
        "vit-l-14": _config(
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408),
            dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=224, patch_size=14),
            projection_dim=768,
        ),
    },
    published_params={"vit-b-16": 149.6e6, "vit-l-14": 427.6e6},  # the model cards' "Model size"
    roles={
        "projector": r"(^|\.)(visual_projection|text_projection)$",
        "vision_tower": r"(^|\.)vision_model(\.|$)",
        "embeddings": r"(^|\.)text_model\.embeddings(\.|$)",
        "language_backbone": r"(^|\.)text_model(\.|$)",
    },
    write_processor=write_processor,
    default_recipe="clip.yaml",
    tiny_image_size=32,
    inputs=Inputs(vision_sequences=vision_sequences),
    gpu_sizes=("vit-l-14", "vit-b-16"),
    gpu_batch_sizes=(8, 16, 32),
)

"""LLaVA-OneVision: a SigLIP vision tower, a two-layer MLP projector, and a Qwen2 language model; each image is seen
whole and as tiles of its best-fitting grid ("anyres"), the tiles' features unpadded and ended by a newline token."""
from __future__ import annotations

import math
from pathlib import Path

from . import _qwen, _vision
from ._files import save_processor_parts
from ._tokens import byte_level_tokenizer
from .base import LLAVA_ROLES, VLM, FamilySpec, Inputs

IMAGE, VIDEO = "<image>", "<video>"
SPECIALS = _qwen.SPECIALS + (IMAGE, VIDEO)
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}

# The layout of the published llava-onevision-qwen2 chat template: Qwen turns, each image as <image> then a newline.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _best_grid(height: int, width: int, pinpoints) -> tuple[int, int]:
    """Return the (height, width) among pinpoints that keeps most of the image's pixels, then wastes the fewest."""
    def score(point):
        h, w = point
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        return kept, -(h * w - kept)
    return tuple(max(pinpoints, key=score))


def tokens_for_image(config, height: int, width: int) -> int:
    """Return the image tokens an image of height x width pixels yields: the whole view's patches, then its grid of
    tiles' patch rows with the padding the resize added cut off, each row ended by a newline token, and the grid
    scaled down to at most about nine tiles' worth."""
    side = config.vision_config.image_size // config.vision_config.patch_size  # patches per tile side
    grid_h, grid_w = _best_grid(height, width, config.image_grid_pinpoints)
    rows = side * (grid_h // config.vision_config.image_size)
    cols = side * (grid_w // config.vision_config.image_size)
    if width / height > cols / rows:  # wider than the grid: padding above and below
        pad = (rows - int(round(height * (cols / width), 7))) // 2
        rows -= 2 * pad
    else:
        pad = (cols - int(round(width * (rows / height), 7))) // 2
        cols -= 2 * pad
    ratio = math.sqrt(rows * cols / (9 * side * side))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return side * side + rows * cols + rows


def image_tokens(config, batch) -> list[int]:
    """Return the image tokens each sample must carry, its images taken in order, one per run of <image> tokens."""
    per_image = [tokens_for_image(config, int(h), int(w)) for h, w in batch.get("image_sizes", [])]
    expected, k = [], 0
    for row in batch["input_ids"]:
        is_image = (row == config.image_token_index).int()
        runs = int(is_image[0]) + int(((is_image[1:] - is_image[:-1]) == 1).sum())
        expected.append(sum(per_image[k:k + runs]))
        k += runs
    return expected


def vision_sequences(config, batch) -> list[int]:
    """Return one sequence per crop the tower encodes (the whole view and its anyres tiles; the padding crops the
    processor adds to even out a batch are dropped by the model): its patch grid, no class token."""
    pixels = batch["pixel_values"]
    return [_vision.grid(pixels, config.vision_config.patch_size)] * _vision.real_tiles(pixels)


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in (Qwen2's special tokens and <image>), the anyres image processor and the template."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                                     named={"image_token": IMAGE, "video_token": VIDEO})
    size = config.vision_config.image_size
    image_processor = transformers.LlavaOnevisionImageProcessor(
        size={"height": size, "width": size}, image_grid_pinpoints=config.image_grid_pinpoints, do_pad=True)
    side = size // config.vision_config.patch_size
    save_processor_parts(folder, "LlavaOnevisionProcessor", tokenizer, image_processor, CHAT_TEMPLATE,
                         num_image_tokens=side * side, vision_feature_select_strategy="full")


def _pinpoints(size: int, most: int) -> list[list[int]]:
    return [[size * h, size * w] for h in range(1, most + 1) for w in range(1, most + 1)]


def _config(text: dict, vision: dict, tie: bool, pinpoints: list) -> dict:
    text = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "tie_word_embeddings": tie, **_qwen.TEXT_TOKEN_IDS, **text}
    vision = {"model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
              "vision_use_head": False, **vision}
    return dict(text_config=text, vision_config=vision, image_token_index=ID[IMAGE], video_token_index=ID[VIDEO],
                vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
                projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tie)


# SigLIP so400m at 384 pixels, patch 14, its last layer left out (the features come from the one before)
_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
               image_size=384, patch_size=14)

# From the published config.json of llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf.
SPEC = FamilySpec(
    name="llava-onevision",
    kind=VLM,
    config_class="LlavaOnevisionConfig",
    model_class="LlavaOnevisionForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=16, patch_size=8),
            tie=True, pinpoints=_pinpoints(16, 2),
        ),
        "0.5b": _config(
            dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=152000),
            _VISION, tie=True, pinpoints=_pinpoints(384, 6),
        ),
        "7b": _config(
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152128),
            _VISION, tie=False, pinpoints=_pinpoints(384, 6),
        ),
    },
    published_params={"0.5b": 0.894e9, "7b": 8.03e9},  # the checkpoints' parameter counts (safetensors)
    roles=LLAVA_ROLES,
    write_processor=write_processor,
    processor_class="LlavaOnevisionProcessor",
    default_recipe="llava-onevision.yaml",
    tiny_image_size=16,
    inputs=Inputs(turn_end="<|im_end|>", image_token=IMAGE, image_token_id="image_token_index",
                  image_tokens=image_tokens, vision_sequences=vision_sequences),
    gpu_sizes=("0.5b",),
)

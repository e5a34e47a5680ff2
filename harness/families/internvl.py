"""InternVL3 (transformers-native InternVLForConditionalGeneration): an InternViT vision tower, a pixel-shuffle MLP
projector (a quarter of the patches per token), and a Qwen2.5 language model; images are cut into 448-pixel tiles."""
from __future__ import annotations

from pathlib import Path

from . import _qwen, _vision
from ._files import save_processor_parts
from ._tokens import byte_level_tokenizer
from .base import LLAVA_ROLES, VLM, FamilySpec, Inputs

START, END, CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
SPECIALS = _qwen.SPECIALS + (START, END, CONTEXT, VIDEO)
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}

# The layout of InternVL3's published chat template: Qwen turns, each image as <IMG_CONTEXT> then a newline, which the
# processor expands to <img> + image_seq_length context tokens per tile + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokens_per_tile(config) -> int:
    """Return the image tokens one tile yields: its patches times downsample_ratio^2 (pixel shuffle)."""
    v = config.vision_config
    return int((v.image_size[0] // v.patch_size[0]) * (v.image_size[1] // v.patch_size[1]) * config.downsample_ratio ** 2)


def _runs(row, token_id: int) -> list[int]:
    """Return the lengths of the runs of token_id in a row of ids."""
    runs, n = [], 0
    for t in row.tolist() + [None]:
        if t == token_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def image_tokens(config, batch) -> list[int]:
    """Return the context tokens each sample must carry: tokens_per_tile for each tile of its images.

    The processor cuts each image into a grid of tiles (plus a thumbnail) and keeps no per-image tile count, but
    each image's <img>...</img> span holds whole tiles and the batch holds pixel_values.shape[0] tiles: a span is
    owed its tiles rounded up, and tiles the spans do not account for are owed by the last sample."""
    per_tile = tokens_per_tile(config)
    tiles = 0 if batch.get("pixel_values") is None else int(batch["pixel_values"].shape[0])
    owed = [sum(-(-n // per_tile) for n in _runs(row, config.image_token_id)) for row in batch["input_ids"]]
    if owed:
        owed[-1] += tiles - sum(owed)
    return [n * per_tile for n in owed]


def vision_sequences(config, batch) -> list[int]:
    """Return one sequence per tile (pixel_values holds every image's tiles and thumbnails in one flat batch): its
    patch grid and the class token, before pixel shuffle."""
    return _vision.per_image(batch["pixel_values"], config.vision_config.patch_size, extra=1)


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in (Qwen2's tokens and InternVL's), a one-tile image processor and the template."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                                     named={"start_image_token": START, "end_image_token": END,
                                            "context_image_token": CONTEXT, "video_token": VIDEO})
    height, width = config.vision_config.image_size
    image_processor = getattr(transformers, SPEC.image_processor_class)(size={"height": height, "width": width},
                                                         crop_to_patches=False)
    save_processor_parts(folder, "InternVLProcessor", tokenizer, image_processor, CHAT_TEMPLATE,
                         image_seq_length=tokens_per_tile(config))


def _config(text: dict, vision: dict, tie: bool) -> dict:
    text = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "vocab_size": 151674, "tie_word_embeddings": tie,
            **_qwen.TEXT_TOKEN_IDS, **text}
    vision = {"hidden_act": "gelu", "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "use_qk_norm": False,
              "attention_bias": True, "layer_scale_init_value": 0.1, "use_mean_pooling": True, **vision}
    return dict(text_config=text, vision_config=vision, image_token_id=ID[CONTEXT], downsample_ratio=0.5,
                projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
                tie_word_embeddings=tie)


# InternViT-300M at 448 pixels, patch 14: 32x32 patches, 256 tokens per tile
_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=[448, 448], patch_size=[14, 14])

# From the published config.json of OpenGVLab/InternVL3-{1B,8B}-hf.
SPEC = FamilySpec(
    name="internvl",
    kind=VLM,
    config_class="InternVLConfig",
    model_class="InternVLForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=[32, 32], patch_size=[8, 8]),
            tie=True,
        ),
        "1b": _config(
            dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2), _VISION, tie=False),  # lm_head apart from the embeddings, unlike Qwen2.5-0.5B
        "8b": _config(
            dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4), _VISION, tie=False),
    },
    published_params={"1b": 0.938e9, "8b": 7.94e9},  # the checkpoints' parameter counts (safetensors)
    roles=LLAVA_ROLES,
    write_processor=write_processor,
    processor_class="InternVLProcessor",
    # transformers 5.0-5.23 import it only with torchvision: there the family skips, saying so
    image_processor_class="GotOcr2ImageProcessor",
    default_recipe="internvl.yaml",
    tiny_image_size=32,
    inputs=Inputs(turn_end="<|im_end|>", image_token=CONTEXT, label_ignore=(START, END), image_tokens=image_tokens,
                  vision_sequences=vision_sequences),
    gpu_sizes=("1b",),
)

"""Llama 3.2 Vision (mllama): a two-stage ViT over image tiles, a projector of its multi-layer features, and a Llama 3.1
language model that reads the image through gated cross-attention layers interleaved with its self-attention layers."""
from __future__ import annotations

from pathlib import Path

from . import _vision
from ._tokens import byte_level_tokenizer
from .base import VLM, FamilySpec, Inputs

IMAGE = "<|image|>"
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|finetune_right_pad_id|>", IMAGE)
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}

# The layout of the published Llama 3.2 Vision chat template: header-delimited turns ending with <|eot_id|>, the
# image as one <|image|> token where the user put it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image|>{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# The 11B's cross-attention layers, at the same places in the tiny size's first four layers.
CROSS_ATTENTION_LAYERS = (3, 8, 13, 18, 23, 28, 33, 38)


def image_tokens(config, batch) -> list[int]:
    """Return the <|image|> tokens each sample must carry: one per image (its tiles are read by cross-attention)."""
    return [int(n) for n in batch["aspect_ratio_mask"][:, :, 0].sum(dim=1)]


def vision_sequences(config, batch) -> list[int]:
    """Return one sequence per image slot: all max_num_tiles tiles (those the aspect ratio leaves unused are encoded
    too, masked), each tile its patch grid and a class token padded to a multiple of 8; the global layers attend
    over the tiles together."""
    pixels = batch["pixel_values"]  # (samples, images, tiles, channels, height, width)
    per_tile = _vision.grid(pixels, config.vision_config.patch_size) + 1
    per_tile += -per_tile % 8
    return [int(pixels.shape[2]) * per_tile] * (int(pixels.shape[0]) * int(pixels.shape[1]))


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in, a tiling image processor at the tower's tile size and the chat template."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, CHAT_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>",
                                     pad="<|finetune_right_pad_id|>", named={"image_token": IMAGE})
    vision = config.vision_config
    image_processor = transformers.MllamaImageProcessor(
        size={"height": vision.image_size, "width": vision.image_size}, max_image_tiles=vision.max_num_tiles)
    processor = transformers.MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)


def init_weights(model) -> None:
    """Open the tanh gates transformers initialises to zero (the cross-attention layers' and the tile position
    embeddings'): closed, no image would reach the language model and its cross-attention LoRA would get no gradient."""
    import torch

    for name, param in model.named_parameters():
        if param.numel() == 1 and name.rpartition(".")[2].endswith("gate"):
            with torch.no_grad():
                param.uniform_(0.5, 1.0)


def _ratios(tiles: int) -> list[list[int]]:
    return [[h, w] for h in range(1, tiles + 1) for w in range(1, tiles + 1) if h * w <= tiles]


def _config(text: dict, vision: dict) -> dict:
    text = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
            "vocab_size": 128256, "bos_token_id": ID["<|begin_of_text|>"], "eos_token_id": ID["<|eot_id|>"],
            "pad_token_id": ID["<|finetune_right_pad_id|>"], "tie_word_embeddings": False, **text}
    layers = vision.get("intermediate_layers_indices", [3, 7, 15, 23, 30])
    vision = {"hidden_act": "gelu", "norm_eps": 1e-5, "intermediate_layers_indices": layers,
              "vision_output_dim": vision["hidden_size"] * (len(layers) + 1),
              "supported_aspect_ratios": _ratios(vision.get("max_num_tiles", 4)), **vision}
    return dict(text_config=text, vision_config=vision, image_token_index=ID[IMAGE])


# From the published config.json of meta-llama/Llama-3.2-11B-Vision-Instruct.
SPEC = FamilySpec(
    name="mllama",
    kind=VLM,
    config_class="MllamaConfig",
    model_class="MllamaForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320, cross_attention_layers=[3]),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_global_layers=1,
                 attention_heads=2, image_size=16, patch_size=8, max_num_tiles=1, intermediate_layers_indices=[0]),
        ),
        "11b": _config(
            dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
                 num_key_value_heads=8, cross_attention_layers=list(CROSS_ATTENTION_LAYERS)),
            dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_global_layers=8,
                 attention_heads=16, image_size=560, patch_size=14, max_num_tiles=4),
        ),
    },
    published_params={"11b": 10.67e9},  # the checkpoint's parameter count (safetensors)
    roles={
        "projector": r"(^|\.)multi_modal_projector(\.|$)",
        "vision_tower": r"(^|\.)vision_model(\.|$)",
        # the whole decoder layer that reads the image: its gated cross-attention and its MLP
        "cross_attention": r"(^|\.)language_model\.(model\.)?layers\.(%s)(\.|$)" % "|".join(map(str, CROSS_ATTENTION_LAYERS)),
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)language_model\.(model\.)?(layers|norm)(\.|$)",
    },
    write_processor=write_processor,
    processor_class="MllamaProcessor",
    default_recipe="mllama.yaml",
    tiny_image_size=16,
    # cross_attention_mask (samples, tokens, images, tiles) says which tokens read which image; with one token per
    # image there is no feature count to disagree with, so the model cannot refuse a missing <|image|>: the harness does
    inputs=Inputs(turn_end="<|eot_id|>", image_token=IMAGE, image_token_id="image_token_index", nested_images=True,
                  image_tokens=image_tokens, per_token=("cross_attention_mask",), model_refuses_mismatch=False,
                  vision_sequences=vision_sequences, vision_dense_mask=True),
    init_weights=init_weights,
    gpu_sizes=("11b",),
)

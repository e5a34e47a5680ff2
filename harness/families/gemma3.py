"""Gemma 3: a SigLIP vision tower, a projector that pools its patches to a fixed number of soft tokens, and a Gemma 3
language model (interleaved sliding-window and global attention)."""
from __future__ import annotations

import math
from pathlib import Path

from . import _vision
from ._tokens import byte_level_tokenizer
from .base import LLAVA_ROLES, VLM, FamilySpec, Inputs

# Gemma's special tokens, here numbered from 256 (after the byte tokens) in this order.
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
            "<end_of_image>", "<image_soft_token>")
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"

# The layout of Gemma 3's published chat template: <bos>, turns as <start_of_turn>role ... <end_of_turn>, the
# assistant called "model", and <start_of_image> where an image goes (the processor expands it to
# <start_of_image> + mm_tokens_per_image soft tokens + <end_of_image>).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<start_of_image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def image_tokens(config, batch) -> list[int]:
    """Return the soft tokens each sample must carry: mm_tokens_per_image for each <start_of_image> in it."""
    return [int((row == config.boi_token_index).sum()) * config.mm_tokens_per_image for row in batch["input_ids"]]


def vision_sequences(config, batch) -> list[int]:
    """Return each image's sequence in the SigLIP tower: its whole patch grid at the tower's resolution (64 x 64 at
    896 pixels), before the projector pools it to mm_tokens_per_image."""
    return _vision.per_image(batch["pixel_values"], config.vision_config.patch_size)


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in, a Gemma 3 image processor at the tower's image size and the chat template."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, CHAT_TEMPLATE, bos="<bos>", eos="<eos>", pad="<pad>",
                                     named={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
    size = config.vision_config.image_size
    image_processor = transformers.Gemma3ImageProcessor(size={"height": size, "width": size}, do_pan_and_scan=False)
    processor = transformers.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE, image_seq_length=config.mm_tokens_per_image)
    processor.save_pretrained(folder)


def init_weights(model) -> None:
    """Draw the projector's input projection, which transformers initialises to zero (no image would reach the model)."""
    import torch

    for name, param in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):
            with torch.no_grad():
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[0]))


def _config(text: dict, vision: dict, tokens_per_image: int) -> dict:
    text = {"rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
            "sliding_window": 1024, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
            "vocab_size": 262208, "pad_token_id": ID["<pad>"], "bos_token_id": ID["<bos>"],
            "eos_token_id": ID["<end_of_turn>"], **text}
    vision = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": False, **vision}
    return dict(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                boi_token_index=ID[BOI], eoi_token_index=ID[EOI], image_token_index=ID[IMAGE])


def _text(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, head_dim: int, scalar: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                query_pre_attn_scalar=scalar, rope_scaling={"rope_type": "linear", "factor": 8.0})


# SigLIP so400m at 896 pixels, patch 14: 64x64 patches pooled to 16x16 = 256 soft tokens per image.
_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
               image_size=896, patch_size=14)

# From the published config.json of google/gemma-3-{4b,12b,27b}-it.
SPEC = FamilySpec(
    name="gemma3",
    kind=VLM,
    config_class="Gemma3Config",
    model_class="Gemma3ForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, vocab_size=320, sliding_window=16),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8),
            tokens_per_image=4,
        ),
        "4b": _config(_text(2560, 10240, 34, 8, 4, 256, 256), _VISION, 256),
        "12b": _config(_text(3840, 15360, 48, 16, 8, 256, 256), _VISION, 256),
        "27b": _config(_text(5376, 21504, 62, 32, 16, 128, 168), _VISION, 256),
    },
    published_params={"4b": 4.30e9, "12b": 12.19e9, "27b": 27.43e9},  # the checkpoints' parameter counts (safetensors)
    roles=LLAVA_ROLES,
    write_processor=write_processor,
    processor_class="Gemma3Processor",
    default_recipe="gemma3.yaml",
    tiny_image_size=32,
    # Gemma 3's processor returns token_type_ids (1 on image tokens), which the model needs in training to let image
    # tokens attend to each other bidirectionally; images go one list per sample.
    inputs=Inputs(turn_end="<end_of_turn>", image_token=IMAGE, image_token_id="image_token_index",
                  label_ignore=(BOI, EOI), nested_images=True, image_tokens=image_tokens,
                  per_token=("token_type_ids",), vision_sequences=vision_sequences),
    init_weights=init_weights,
    gpu_sizes=("4b",),
)

"""SmolVLM2: a SigLIP vision tower, a pixel-shuffle projector (scale_factor^2 patches per token), and a SmolLM2
(Llama) language model; images are split into tiles plus a global view."""
from __future__ import annotations

from pathlib import Path

from . import _vision
from ._files import save_processor_parts
from ._tokens import byte_level_tokenizer
from .base import VLM, FamilySpec, Inputs

IMAGE, FAKE, GLOBAL, END = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
# SmolVLM's special tokens (the tile markers of a 2x2 split included), numbered from 256 in this order.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", END, FAKE, IMAGE, GLOBAL,
            *(f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)))
ID = {tok: 256 + i for i, tok in enumerate(SPECIALS)}

# The layout of SmolVLM2's published chat template: "<|im_start|>User:" and "Assistant:" turns that end with
# <end_of_utterance>, the image where the user put it.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tokens_per_tile(config) -> int:
    """Return the image tokens one tile yields: its patches over scale_factor^2 (pixel shuffle)."""
    v = config.vision_config
    return (v.image_size // v.patch_size) ** 2 // config.scale_factor ** 2


def image_tokens(config, batch) -> list[int]:
    """Return the image tokens each sample must carry: tokens_per_tile for each real (not padding) tile."""
    pixels = batch["pixel_values"]  # (samples, tiles, channels, height, width), padding tiles all zero
    real = (pixels.flatten(2) != 0).any(dim=-1).sum(dim=1)
    return [int(n) * tokens_per_tile(config) for n in real]


def vision_sequences(config, batch) -> list[int]:
    """Return one sequence per real tile (the splits and the global view): its patch grid, before pixel shuffle."""
    pixels = batch["pixel_values"]
    return [_vision.grid(pixels, config.vision_config.patch_size)] * _vision.real_tiles(pixels)


def write_processor(folder: Path, config) -> None:
    """Write the tokenizer stand-in, an image processor at the tower's size (no splitting) and the chat template."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, CHAT_TEMPLATE, bos="<|im_start|>", eos=END, pad="<|im_end|>",
                                     named={"image_token": IMAGE, "fake_image_token": FAKE,
                                            "global_image_token": GLOBAL, "end_of_utterance_token": END})
    size = config.vision_config.image_size
    tiny = config.text_config.hidden_size <= 256
    image_processor = getattr(transformers, SPEC.image_processor_class)(
        do_image_splitting=not tiny, size={"longest_edge": size if tiny else 4 * size},
        max_image_size={"longest_edge": size})
    save_processor_parts(folder, "SmolVLMProcessor", tokenizer, image_processor, CHAT_TEMPLATE,
                         image_seq_len=tokens_per_tile(config))


def _config(text: dict, vision: dict, scale_factor: int, tie: bool) -> dict:
    text = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "vocab_size": 49280,
            "max_position_embeddings": 8192, "tie_word_embeddings": tie, "pad_token_id": ID["<|im_end|>"],
            "bos_token_id": ID["<|im_start|>"], "eos_token_id": ID[END], **text}
    return dict(text_config=text, vision_config=vision, scale_factor=scale_factor, image_token_id=ID[IMAGE],
                tie_word_embeddings=tie, pad_token_id=ID["<|im_end|>"])


# From the published config.json of HuggingFaceTB/SmolVLM2-{256M-Video,2.2B}-Instruct.
SPEC = FamilySpec(
    name="smolvlm",
    kind=VLM,
    config_class="SmolVLMConfig",
    model_class="SmolVLMForConditionalGeneration",
    sizes={
        "tiny": _config(
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320),
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8),
            scale_factor=2, tie=True,
        ),
        "256m": _config(
            dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, rope_theta=100_000.0),
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=512, patch_size=16),
            scale_factor=4, tie=False,  # the published checkpoint keeps lm_head apart from the embeddings
        ),
        "2.2b": _config(
            dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, rope_theta=130_000.0),
            dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                 image_size=384, patch_size=14),
            scale_factor=3, tie=False,
        ),
    },
    published_params={"256m": 256.5e6, "2.2b": 2.25e9},  # the checkpoints' parameter counts (safetensors)
    roles={
        "projector": r"(^|\.)connector(\.|$)",
        "vision_tower": r"(^|\.)vision_model(\.|$)",
        "embeddings": r"(^|\.)embed_tokens$",
        "head": r"(^|\.)lm_head$",
        "language_backbone": r"(^|\.)text_model\.(layers|norm)(\.|$)",
    },
    write_processor=write_processor,
    processor_class="SmolVLMProcessor",
    # transformers 5.0-5.23 import it only with torchvision: there the family skips, saying so
    image_processor_class="SmolVLMImageProcessor",
    default_recipe="smolvlm.yaml",
    tiny_image_size=32,
    inputs=Inputs(turn_end=END, image_token=IMAGE, label_ignore=(FAKE, GLOBAL, *SPECIALS[7:]), nested_images=True,
                  image_tokens=image_tokens, vision_sequences=vision_sequences),
    gpu_sizes=("256m",),
)

"""What the Qwen families share: their special tokens, chat templates, processors and image-token geometry."""
from __future__ import annotations

from pathlib import Path

from ._tokens import added_tokens_decoder, byte_alphabet, load_bpe_tokenizer
from .base import Inputs

# The order of the real Qwen2 special tokens (151643..151656 in the published vocabulary); here they
# follow the 256 byte tokens, so a tiny vocabulary holds them.
SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
FIRST_SPECIAL_ID = 256
TOKEN_ID = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIALS)}

# Config attributes that carry token ids, pointed at this tokenizer's ids.
TEXT_TOKEN_IDS = {"bos_token_id": TOKEN_ID["<|endoftext|>"], "eos_token_id": TOKEN_ID["<|im_end|>"]}
VL_TOKEN_IDS = {
    "image_token_id": TOKEN_ID["<|image_pad|>"],
    "video_token_id": TOKEN_ID["<|video_pad|>"],
    "vision_start_token_id": TOKEN_ID["<|vision_start|>"],
    "vision_end_token_id": TOKEN_ID["<|vision_end|>"],
}

# The layout of Qwen's published chat template: a default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|>, and the assistant turn opened by add_generation_prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen3 adds these after <|video_pad|> (151657.. in the published vocabulary, fill-in-the-middle tokens left out)
QWEN3_SPECIALS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")

# Qwen3's layout: no default system turn; its hybrid-thinking template opens an empty <think> block when thinking
# is switched off, the way users fine-tune it for direct answers. Qwen3-VL's template: no system turn, no <think>.
QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

TURN_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"


def pixel_unit(config) -> int:
    """Return the side in pixels of the square one image token stands for: patch_size x spatial_merge_size."""
    return config.vision_config.patch_size * config.vision_config.spatial_merge_size


def grid_image_tokens(config, batch) -> list[int]:
    """Return the image placeholders each sample must carry: its images' t*h*w patches over merge_size^2."""
    merge = config.vision_config.spatial_merge_size
    grids = batch.get("image_grid_thw")
    per_image = [] if grids is None else [int(g.prod()) // (merge * merge) for g in grids]
    expected, k = [], 0
    for row in batch["input_ids"]:
        n_images = int((row == config.vision_start_token_id).sum())
        expected.append(sum(per_image[k:k + n_images]))
        k += n_images
    return expected


def grid_sequences(config, batch) -> list[int]:
    """Return the patches of each image the vision tower sees: its t*h*w grid (image_grid_thw)."""
    grids = batch.get("image_grid_thw")
    return [] if grids is None else [int(g.prod()) for g in grids]


def build_tokenizer(extra: tuple[str, ...] = (), chat_template: str = CHAT_TEMPLATE):
    """Return a tiny Qwen2 tokenizer: 256 byte tokens, then the real special tokens (and a family's extra ones)."""
    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    specials = SPECIALS + tuple(extra)
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added_tokens_decoder(specials, FIRST_SPECIAL_ID),
        "additional_special_tokens": list(specials[1:]),
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": chat_template,
    }
    return load_bpe_tokenizer(vocab, config)


def write_text(folder: Path, config) -> None:
    """Write a tokenizer for a Qwen2 language model into folder."""
    build_tokenizer().save_pretrained(folder)


def write_qwen3_text(folder: Path, config) -> None:
    """Write a tokenizer with Qwen3's special tokens and chat template into folder."""
    build_tokenizer(QWEN3_SPECIALS, QWEN3_TEMPLATE).save_pretrained(folder)


def write_qwen3_vl(folder: Path, config) -> None:
    """Write a tokenizer, image processor and chat template for a Qwen3-VL model into folder."""
    write_vl(folder, config, QWEN3_SPECIALS, QWEN3_TEMPLATE)


def write_vl(folder: Path, config, extra: tuple[str, ...] = (), chat_template: str = CHAT_TEMPLATE) -> None:
    """Write a tokenizer, image processor and chat template for a Qwen VL model into folder, as published checkpoints lay them out."""
    import transformers

    vision = config.vision_config
    unit = pixel_unit(config)
    # Tiny models take small images so a CPU forward stays fast; full sizes keep the published bounds.
    tiny = config.get_text_config().hidden_size <= 256
    min_pixels = unit * unit * (1 if tiny else 4)
    max_pixels = unit * unit * (64 if tiny else 16384)
    image_processor = transformers.Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    build_tokenizer(extra, chat_template).save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (Path(folder) / "chat_template.jinja").write_text(chat_template)


# The contract of every Qwen VL family: answers end with <|im_end|>, each image is <|image_pad|> repeated once per
# merged patch between <|vision_start|> and <|vision_end|>, images passed as one flat list, and transformers 5's
# processors add mm_token_type_ids (which tokens are image, video or text) beside input_ids.
VL_INPUTS = Inputs(turn_end=TURN_END, image_token=IMAGE_PAD, image_tokens=grid_image_tokens, per_token=("mm_token_type_ids",),
                   pixel_unit=pixel_unit, vision_sequences=grid_sequences)
TEXT_INPUTS = Inputs(turn_end=TURN_END)

"""What Qwen2, Qwen2-VL and Qwen2.5-VL share: their special tokens, chat template and processor."""
from __future__ import annotations

from pathlib import Path

from ._tokens import added_tokens_decoder, byte_alphabet, load_bpe_tokenizer

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


def build_tokenizer():
    """Return a tiny Qwen2 tokenizer: 256 byte tokens, then the real special tokens."""
    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added_tokens_decoder(SPECIALS, FIRST_SPECIAL_ID),
        "additional_special_tokens": list(SPECIALS[1:]),
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    return load_bpe_tokenizer(vocab, config)


def write_text(folder: Path, config) -> None:
    """Write a tokenizer for a Qwen2 language model into folder."""
    build_tokenizer().save_pretrained(folder)


def write_vl(folder: Path, config) -> None:
    """Write a tokenizer, image processor and chat template for a Qwen VL model into folder, as published checkpoints lay them out."""
    import transformers

    vision = config.vision_config
    unit = vision.patch_size * vision.spatial_merge_size
    # Tiny models take small images so a CPU forward stays fast; full sizes keep the published bounds.
    tiny = config.get_text_config().hidden_size <= 256
    min_pixels = unit * unit * (1 if tiny else 4)
    max_pixels = unit * unit * (64 if tiny else 16384)
    image_processor = transformers.Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    build_tokenizer().save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (Path(folder) / "chat_template.jinja").write_text(CHAT_TEMPLATE)

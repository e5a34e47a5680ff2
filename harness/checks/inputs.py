"""Model inputs per family kind: chat-formatted prompts with images for VLMs, text for LLMs, pairs for CLIP."""
from __future__ import annotations

from harness.families import DUAL_ENCODER, LLM, FamilySpec
from harness.util.errors import HarnessError

IGNORE = -100


def _messages(prompt: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def chat_text(processor, prompt: str, with_image: bool, answer: str | None = None) -> str:
    """Return the prompt laid out by the processor's chat template, with the answer appended if given."""
    text = processor.apply_chat_template(_messages(prompt, with_image), tokenize=False, add_generation_prompt=True)
    return text if answer is None else text + answer + "<|im_end|>"


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def build_inputs(family: FamilySpec, processor, prompts: list[str], images: list | None = None,
                 answers: list[str] | None = None, padding_side: str = "left"):
    """Return a batch (BatchFeature) for the family: images with prompts, text only, or CLIP pairs."""
    tok = _tokenizer(processor)
    # CLIP reads each caption's embedding at its first end-of-text token, which is also its pad token: left
    # padding would put that token in the padding, so dual encoders always pad on the right
    tok.padding_side = "right" if family.kind == DUAL_ENCODER else padding_side
    if family.kind == DUAL_ENCODER:
        return processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with_image = bool(images)
    answers = answers or [None] * len(prompts)
    texts = [chat_text(tok if family.kind == LLM else processor, p, with_image, a) for p, a in zip(prompts, answers)]
    if family.kind == LLM:
        batch = tok(texts, padding=True, return_tensors="pt")
    else:
        batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    if answers[0] is not None:
        batch["labels"] = training_labels(batch, tok, family)
    return batch


def training_labels(batch, tokenizer, family: FamilySpec, config=None):
    """Return labels: the input ids with padding and image placeholders ignored."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>") if family.has_images else None
    if image_pad is not None and image_pad != tokenizer.unk_token_id:
        labels[labels == image_pad] = IGNORE
    return labels


def image_token_counts(batch, config) -> tuple[list[int], list[int]]:
    """Return (placeholders found per sample, image features expected per sample) for a VLM batch."""
    merge = config.vision_config.spatial_merge_size
    ids = batch["input_ids"]
    found = (ids == config.image_token_id).sum(dim=1).tolist()
    grids = batch.get("image_grid_thw")
    per_image = [] if grids is None else [int(g.prod()) // (merge * merge) for g in grids]
    expected, k = [], 0
    start = config.vision_start_token_id
    for row in ids:
        n_images = int((row == start).sum())
        expected.append(sum(per_image[k:k + n_images]))
        k += n_images
    return found, expected


def check_placeholders(batch, config) -> None:
    """Raise if any sample's image placeholder tokens differ from the merged patch count of its images."""
    found, expected = image_token_counts(batch, config)
    for i, (f, e) in enumerate(zip(found, expected)):
        if f != e:
            raise HarnessError(
                f"sample {i}: expected {e} image placeholder tokens (id {config.image_token_id}) for its image grid "
                f"(t*h*w / merge_size^2), found {f}; build prompts with the processor so it expands the placeholders")


def without_one_placeholder(batch, config):
    """Return a copy of a one-sample VLM batch with its first image placeholder token removed: a mismatch to refuse."""
    import torch

    ids = batch["input_ids"][0]
    first = int((ids == config.image_token_id).nonzero()[0])
    broken = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}  # per-token types would no longer line up
    broken["input_ids"] = torch.cat([ids[:first], ids[first + 1:]])[None]
    broken["attention_mask"] = batch["attention_mask"][:, 1:]
    return type(batch)(broken)


PROMPT = "What colour and shape is in the picture?"
CAPTIONS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")


def example_batch(family: FamilySpec, processor, image_sizes: list[tuple[int, int]] | None = None,
                  count: int = 1, train: bool = False, with_images: bool = True, seed: int = 0, first: int = 0):
    """Return a batch of synthetic shape images (width, height per sample) with prompts, or CLIP pairs.

    VLMs get one image per sample and, with train=True, an answer to learn; LLMs get text; CLIP gets
    image/caption pairs. Sample i draws caption first+i with seed seed+first+i, so a batch's sample i equals
    the single-sample batch made with first=i.
    """
    from .images import shape_image

    size = family.tiny_image_size
    image_sizes = image_sizes or [(size, size)] * count
    captions = [CAPTIONS[(first + i) % len(CAPTIONS)] for i in range(len(image_sizes))]
    images = None
    if family.has_images and with_images:
        images = [shape_image(w, h, *c.split()[1:], seed=seed + first + i) for i, ((w, h), c) in enumerate(zip(image_sizes, captions))]
    if family.kind == DUAL_ENCODER:
        return build_inputs(family, processor, [f"a photo of {c}" for c in captions], images)
    prompts = [PROMPT] * len(image_sizes)
    return build_inputs(family, processor, prompts, images, answers=captions if train else None)


def sized_batch(family: FamilySpec, processor, batch_size: int, image_size: int, seq_len: int, device: str = "cpu"):
    """Return a training batch of batch_size samples, image_size-pixel images, about seq_len tokens each."""
    sizes = [(image_size, image_size)] * batch_size
    if family.kind == DUAL_ENCODER:
        return example_batch(family, processor, image_sizes=sizes).to(device)
    probe = example_batch(family, processor, image_sizes=sizes[:1], train=True)
    filler = max(1, seq_len - int(probe["input_ids"].shape[1]))
    from .images import shape_image

    images = [shape_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)] if family.has_images else None
    answers = ["a" * filler] * batch_size  # byte-level tokens: one per character
    return build_inputs(family, processor, [PROMPT] * batch_size, images, answers=answers).to(device)

"""Model inputs per family: chat-formatted prompts with images for VLMs, text for LLMs, pairs for dual encoders.

What differs between families (how a turn ends, the image placeholder, how images are passed, how many placeholders
an image needs) is read from the family's `inputs` contract, never from its name."""
from __future__ import annotations

from harness.families import DUAL_ENCODER, LLM, FamilySpec
from harness.util.errors import HarnessError

IGNORE = -100


def _messages(prompt: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def chat_text(processor, prompt: str, with_image: bool, answer: str | None = None, turn_end: str = "") -> str:
    """Return the prompt laid out by the processor's chat template, with the answer and the turn's end appended if given."""
    text = processor.apply_chat_template(_messages(prompt, with_image), tokenize=False, add_generation_prompt=True)
    return text if answer is None else text + answer + turn_end


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def build_inputs(family: FamilySpec, processor, prompts: list[str], images: list | None = None,
                 answers: list[str] | None = None, padding_side: str = "left"):
    """Return a batch (BatchFeature) for the family: images with prompts, text only, or dual-encoder pairs."""
    tok = _tokenizer(processor)
    contract = family.inputs
    # CLIP reads each caption's embedding at its first end-of-text token, which is also its pad token, and SigLIP at
    # its last token: left padding would move both, so dual encoders always pad on the right
    tok.padding_side = "right" if family.kind == DUAL_ENCODER else padding_side
    settings = {k: getattr(processor.image_processor, k) for k in contract.image_settings} if images else {}
    if family.kind == DUAL_ENCODER:
        padding = {"padding": contract.text_padding}
        if contract.text_padding == "max_length":
            padding["max_length"] = contract.text_max_length or tok.model_max_length
        return processor(text=prompts, images=images, return_tensors="pt", **padding, **settings)
    with_image = bool(images)
    answers = answers or [None] * len(prompts)
    template = tok if family.kind == LLM else processor
    texts = [chat_text(template, p, with_image, a, contract.turn_end) for p, a in zip(prompts, answers)]
    if family.kind == LLM:
        batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    else:
        if images and contract.nested_images:
            images = [[image] for image in images]
        batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt", add_special_tokens=False,
                          **settings)
    if answers[0] is not None:
        batch["labels"] = training_labels(batch, tok, family)
    return batch


def ignored_token_ids(tokenizer, family: FamilySpec) -> list[int]:
    """Return the ids never scored as labels: the family's image placeholder and the tokens its contract lists."""
    names = ([family.inputs.image_token] if family.inputs.image_token else []) + list(family.inputs.label_ignore)
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def training_labels(batch, tokenizer, family: FamilySpec, config=None):
    """Return labels: the input ids with padding, image placeholders and the family's other ignored tokens ignored."""
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE
    for token_id in ignored_token_ids(tokenizer, family):
        labels[labels == token_id] = IGNORE
    return labels


def placeholder_id(family: FamilySpec, config) -> int:
    """Return the id of the family's image placeholder token, as the model's config holds it."""
    attr = family.inputs.image_token_id
    value = getattr(config, attr, None)
    if value is None:
        raise HarnessError(f"family {family.name}: expected the config to hold the image placeholder id in {attr!r}, "
                           f"found none on {type(config).__name__}; fix inputs.image_token_id in the family spec")
    return int(value)


def image_token_counts(family: FamilySpec, batch, config) -> tuple[list[int], list[int]]:
    """Return (placeholders found per sample, placeholders the family's contract expects per sample) for a VLM batch."""
    if family.inputs.image_tokens is None:
        raise HarnessError(f"family {family.name} declares no image token count (inputs.image_tokens); "
                           "add one to its spec to check its placeholders")
    found = (batch["input_ids"] == placeholder_id(family, config)).sum(dim=1).tolist()
    return found, list(family.inputs.image_tokens(config, batch))


def check_placeholders(family: FamilySpec, batch, config) -> None:
    """Raise if any sample's image placeholder tokens differ from the count its images must produce."""
    found, expected = image_token_counts(family, batch, config)
    for i, (f, e) in enumerate(zip(found, expected)):
        if f != e:
            raise HarnessError(
                f"sample {i} of a {family.name} batch: expected {e} image placeholder tokens "
                f"({family.inputs.image_token}, id {placeholder_id(family, config)}) for its images, found {f}; "
                "build prompts with the processor so it expands the placeholders")


ALWAYS_PER_TOKEN = ("input_ids", "attention_mask", "labels")


def per_token_keys(batch) -> list[str]:
    """Return the batch entries laid out per token beside input_ids, other than attention_mask and labels."""
    shape = tuple(batch["input_ids"].shape)
    return [k for k, v in batch.items()
            if k not in ALWAYS_PER_TOKEN and hasattr(v, "shape") and tuple(v.shape[:2]) == shape]


def undeclared_per_token(family: FamilySpec, batch) -> list[str]:
    """Return the per-token entries of a batch that the family's contract does not list in inputs.per_token."""
    return [k for k in per_token_keys(batch) if k not in family.inputs.per_token]


def without_one_placeholder(family: FamilySpec, batch, config):
    """Return a copy of a one-sample VLM batch with its first image placeholder token removed: a mismatch to refuse.

    Every per-token input (the attention mask and those the family's contract lists: token types, a cross-attention
    mask) loses the same position, so only the placeholder count is wrong."""
    import torch

    ids = batch["input_ids"][0]
    first = int((ids == placeholder_id(family, config)).nonzero()[0])
    broken = dict(batch.items())
    for key in [k for k in (*ALWAYS_PER_TOKEN, *family.inputs.per_token) if k in batch]:
        value = batch[key]
        broken[key] = torch.cat([value[:, :first], value[:, first + 1:]], dim=1)
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

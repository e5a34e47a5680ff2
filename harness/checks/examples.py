"""The training-data path: a supervised example built the way user collators build one, and what must hold of it.

A collator renders the conversation with the chat template (a user turn, with an image for VLMs, then the
assistant's reply), runs the processor on it, and labels only the reply: the prompt is the same conversation
rendered up to the generation prompt, everything up to its length is -100, and so are padding and image tokens.
What must hold: the labelled span decodes to exactly the reply; no image, pad or vision special token carries a
label; the prompt's tokens are a prefix of the whole example's; every input the processor returns reaches the model.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from harness.families import LLM, FamilySpec

from .inputs import IGNORE, PROMPT

REPLY = "a red circle"
# Config attributes naming token ids that stand for media (image placeholders, vision start and end): a model
# config says which ids they are, so no family's ids are written here.
MEDIA_WORDS = ("image", "video", "vision", "audio")
SHOW = 3


@dataclass
class Example:
    """One supervised example: the batch the model gets, and how its labels were made."""

    batch: Any  # input_ids, attention_mask, labels and whatever the processor adds (pixel_values, grids...)
    reply: str
    prompt_length: int  # tokens of the prompt (the template up to the generation prompt), all labelled -100
    prompt_is_prefix: bool  # the prompt's tokens open the whole example's, as prompt-length masking assumes


def conversation(family: FamilySpec, prompt: str = PROMPT, reply: str | None = None) -> list[dict]:
    """Return the messages of one exchange: a user turn (an image and the prompt for VLMs), and the reply if given."""
    if family.kind == LLM:
        turns = [{"role": "user", "content": prompt}]
        return turns + ([{"role": "assistant", "content": reply}] if reply is not None else [])
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return turns + ([{"role": "assistant", "content": [{"type": "text", "text": reply}]}] if reply is not None else [])


def tokenizer_of(processor):
    """Return the processor's tokenizer (a language model's processor is its tokenizer)."""
    return getattr(processor, "tokenizer", processor)


def _encode(family: FamilySpec, processor, text: str, image):
    if family.kind == LLM:
        return tokenizer_of(processor)([text], return_tensors="pt", add_special_tokens=False)
    return processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)


def supervised_example(family: FamilySpec, processor, reply: str = REPLY, prompt: str = PROMPT, seed: int = 0) -> Example:
    """Return a one-sample training example with labels on the reply only, as a user's collator builds it."""
    from .images import shape_image

    image = None
    if family.kind != LLM:
        size = family.tiny_image_size
        image = shape_image(size, size, *reply.split()[1:], seed=seed)
    template = processor if family.kind != LLM else tokenizer_of(processor)
    full_text = template.apply_chat_template(conversation(family, prompt, reply), tokenize=False)
    prompt_text = template.apply_chat_template(conversation(family, prompt), tokenize=False, add_generation_prompt=True)
    batch = _encode(family, processor, full_text, image)
    prompt_ids = _encode(family, processor, prompt_text, image)["input_ids"][0]
    ids = batch["input_ids"]
    n = len(prompt_ids)
    is_prefix = n <= ids.shape[1] and bool((ids[0, :n] == prompt_ids).all())
    labels = ids.clone()
    labels[:, :n] = IGNORE
    labels[batch["attention_mask"] == 0] = IGNORE
    batch["labels"] = labels
    return Example(batch, reply, n, is_prefix)


def media_token_ids(config) -> dict[str, int]:
    """Return the token ids a model config names for media (image_token_id, vision_start_token_id, Gemma 3's and
    LLaVA's image_token_index...), by attribute."""
    found = {}
    for c in (config, getattr(config, "text_config", None)):
        for attr, value in (vars(c).items() if c is not None else ()):
            if attr.endswith(("_token_id", "_token_index")) and isinstance(value, int) and any(w in attr for w in MEDIA_WORDS):
                found.setdefault(attr, value)
    return found


def labelled_text(example: Example, tokenizer) -> str:
    """Return the labelled span decoded, special tokens dropped, surrounding whitespace stripped."""
    labels = example.batch["labels"][0]
    return tokenizer.decode(labels[labels != IGNORE].tolist(), skip_special_tokens=True).strip()


def label_problems(example: Example, tokenizer, config, name: str) -> list[str]:
    """Return one sentence per way the example's labels break the collator contract; empty when they keep it."""
    problems = []
    if not example.prompt_is_prefix:
        problems.append(f"training example of {name}: expected the prompt rendered with add_generation_prompt=True to "
                        f"open the whole conversation's tokens ({example.prompt_length} tokens), found it does not; "
                        "masking the prompt by its length then labels the wrong tokens: check the chat template")
    span = labelled_text(example, tokenizer)
    if span != example.reply:
        problems.append(f"training example of {name}: expected the labelled span to decode to the reply {example.reply!r}, "
                        f"found {span!r}" + ("; the labels cover part of the prompt (does the chat template's "
                                             "generation prompt match its assistant turn?)" if len(span) > len(example.reply)
                                             else ""))
    labels = example.batch["labels"][0]
    forbidden = {**media_token_ids(config), "pad_token_id": tokenizer.pad_token_id}
    for attr, token in forbidden.items():
        if token is None:
            continue
        n = int((labels == token).sum())
        if n:
            problems.append(f"training example of {name}: {n} labels are token {token} ({attr}); media and padding "
                            "tokens must be -100")
    if not (labels != IGNORE).any():
        problems.append(f"training example of {name}: every label is -100, so the example trains nothing")
    return problems


def model_inputs(model) -> set[str]:
    """Return the argument names the model's forward (or its inner model's, which **kwargs feed) takes by name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set()
    for m in (base, getattr(base, "model", None)):
        if m is not None:
            names |= {p.name for p in inspect.signature(type(m).forward).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def unused_inputs(model, batch) -> list[str]:
    """Return the batch keys no forward of the model names: they vanish into **kwargs and never reach the model."""
    taken = model_inputs(model)
    return sorted(k for k in batch if k not in taken)


def position_ids(model, family: FamilySpec, batch):
    """Return the position ids the language model's rotary embedding receives on batch (M-RoPE: one row per axis).

    The model's own computation (get_rope_index for Qwen VL families, wherever a version keeps it) is read where it
    is used, so no version's method is called by name.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rotary = [(n, m) for n, m in base.named_modules() if type(m).__name__.endswith("RotaryEmbedding")
              and family.role_of(n) not in ("vision_tower", "projector")]
    if not rotary:
        from harness.util.errors import HarnessError

        raise HarnessError(f"{type(base).__name__}: no rotary embedding module outside the vision tower to read "
                           "position ids from; this check applies to rotary-position language models")
    seen = []

    def grab(module, args, kwargs):
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if pos is not None and not seen:
            seen.append(pos.detach().clone())

    # Some versions keep an unused rotary module per layer besides the shared one: the first that runs is read.
    handles = [m.register_forward_pre_hook(grab, with_kwargs=True) for _, m in rotary]
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    return seen[0] if seen else None

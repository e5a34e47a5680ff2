"""What a training batch holds, read from the family's own processor: the numbers the memory estimate sizes by.

The harness's training sample (harness.checks.inputs.sized_batch: a prompt, an image of image_size pixels, an answer
filling seq_len) is laid out by the processor the family writes for a config (or a checkpoint's own), on the CPU,
nothing loaded. From that batch, per sample:

  tokens            the attention mask's total: the language model's sequence, image placeholders included
  text_positions    the input ids' width: the positions a tower computes, padding included (a dual encoder's
                    captions padded to the longest, or to max_length)
  vision_sequences  the family's inputs.vision_sequences: the sequence of each pass through the vision tower's
                    layers (one per image, tile or crop it encodes, class tokens and padding included)
  token bytes       the bytes of the per-token tensors (input ids, attention mask, labels, token types, a
                    cross-attention mask) a position; image bytes: the rest (pixel values, their masks, grids)

Samples of sized_batch are alike, so a batch of up to PROBE_SAMPLES is read and scaled (a dual encoder's captions
differ: its widest caption among them sets text_positions).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROBE_SAMPLES = 8


@dataclass(frozen=True)
class Layout:
    """One sample of a training batch, as its family's processor lays it out (see the module docstring)."""

    tokens: int
    text_positions: int
    vision_sequences: tuple[int, ...] = ()
    token_bytes: int = 24  # a position's bytes over the per-token tensors
    image_bytes: int = 0

    @property
    def vision_tokens(self) -> int:
        return sum(self.vision_sequences)

    def input_bytes(self, positions: int | None = None) -> int:
        """Return a sample's bytes on the GPU at a number of positions (default: the layout's own)."""
        return self.token_bytes * (self.text_positions if positions is None else positions) + self.image_bytes


def read_layout(family, config, batch, samples: int) -> Layout:
    """Return the per-sample Layout of a processor batch of `samples` samples."""
    from harness.checks.inputs import per_token_keys
    from harness.util.errors import HarnessError

    ids = batch["input_ids"]
    per_token = {"input_ids", "attention_mask", "labels", *per_token_keys(batch)}
    tensors = {k: v for k, v in batch.items() if hasattr(v, "nbytes")}
    token_bytes = sum(tensors[k].nbytes for k in tensors if k in per_token) // ids.numel()
    image_bytes = sum(v.nbytes for k, v in tensors.items() if k not in per_token) // samples
    sequences: tuple[int, ...] = ()
    if family.has_images and batch.get("pixel_values") is not None:
        if family.inputs.vision_sequences is None:
            raise HarnessError(f"family {family.name} declares no vision_sequences in its inputs contract: the memory "
                               "estimate cannot size its vision tower; add one to its spec (harness/families/)")
        found = list(family.inputs.vision_sequences(config, batch))
        if len(found) % samples:
            raise HarnessError(f"family {family.name}: inputs.vision_sequences gave {len(found)} sequences for "
                               f"{samples} alike samples; expected a multiple of {samples}")
        sequences = tuple(found[:len(found) // samples])
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) // samples if mask is not None else int(ids.shape[1])
    return Layout(tokens, int(ids.shape[1]), sequences, token_bytes, image_bytes)


def sample_layout(family, config, processor, image_size: int, seq_len: int) -> Layout:
    """Return the Layout of the harness's training sample at image_size pixels and seq_len tokens."""
    from harness.checks import inputs

    samples = PROBE_SAMPLES if family.kind == "dual-encoder" else 1
    batch = inputs.sized_batch(family, processor, samples, image_size, seq_len)
    return read_layout(family, config, batch, samples)


def processor_for(family, config, checkpoint: Path | None = None):
    """Return the processor of a checkpoint, or the one the family writes for a config (written to a temporary
    folder and read back, as a checkpoint's would be)."""
    from harness.model.load import load_processor

    if checkpoint is not None:
        return load_processor(checkpoint, family)
    folder = Path(tempfile.mkdtemp(prefix="qlora-harness-layout-"))
    try:
        family.write_processor(folder, config)
        (folder / "config.json").write_text(config.to_json_string())
        return load_processor(folder, family)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_CACHE: dict = {}


def layout_of(family, config, image_size: int, seq_len: int) -> Layout:
    """Return the Layout of the harness's training sample for a config (its family's processor; cached by config)."""
    key = (family.name, config.to_json_string(), int(image_size), int(seq_len))
    if key not in _CACHE:
        _CACHE[key] = sample_layout(family, config, processor_for(family, config), image_size, seq_len)
    return _CACHE[key]


def encoded_vision_tokens(model, family, batch) -> int:
    """Return the tokens a model's vision tower encodes for a batch, counted at the input of its first layer (the
    first child of the first ModuleList under the family's vision_tower role) in a forward without gradients: what
    inputs.vision_sequences must add up to."""
    import torch

    from harness.util.errors import HarnessError

    first = next((m[0] for name, m in model.named_modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) and family.role_of(name) == "vision_tower"), None)
    if first is None:
        raise HarnessError(f"family {family.name}: expected a stack of layers (a ModuleList) under its vision_tower "
                           "role, found none; check the role's pattern in the family spec")
    seen = []
    handle = first.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(next(iter(args), None) if args else
                                             kwargs.get("hidden_states", next(iter(kwargs.values())))),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    return sum(t.numel() // t.shape[-1] for t in seen)

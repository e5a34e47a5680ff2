"""Logits and greedy generation on a batch, with the model in eval mode."""
from __future__ import annotations


def logits(model, batch):
    """Return the logits of a batch in eval mode without gradients (CLIP: logits_per_image)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return out.logits_per_image if hasattr(out, "logits_per_image") else out.logits


def greedy(model, batch, max_new_tokens: int = 8):
    """Return the new token ids of greedy decoding, one row per sample."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=max_new_tokens)
    return out[:, batch["input_ids"].shape[1]:]

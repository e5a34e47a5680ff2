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


def greedy_scored(model, batch, max_new_tokens: int = 8, top: int = 5):
    """Return (new token ids, per step the `top` best processed scores and their ids, per step whether each row's
    token is its step's argmax): greedy decoding as generate did it, with what it chose from."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=max_new_tokens,
                             output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[:, batch["input_ids"].shape[1]:]
    scores = torch.stack([s.float() for s in out.scores], dim=1)  # (batch, steps, vocab), after the logits processors
    values, ids = scores.topk(min(top, scores.shape[-1]), dim=-1)
    argmax = scores.argmax(dim=-1) == tokens[:, :scores.shape[1]]
    return tokens, values, ids, argmax

"""Is gradient checkpointing really acting? It runs only in training mode: count the layers that checkpoint.

A model with checkpointing enabled but left in eval mode keeps every activation and says nothing (Qwen2.5-7B
QLoRA at batch 4 x 512 tokens peaked at 26.6 GiB instead of 9.8). Counting the calls made through each
layer's checkpoint function during a real forward tells the two apart.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

FUNC = "_gradient_checkpointing_func"  # what transformers' checkpointed layers call, transformers 4.57 and 5.x


@dataclass
class Checkpointing:
    """Layers with checkpointing switched on, and how many of them ran checkpointed in the forward counted."""

    enabled_layers: int = 0
    checkpointed_calls: int = 0

    def problem(self, wanted: bool) -> str | None:
        """Return why checkpointing does not do what the recipe asks, or None if it does."""
        if wanted and self.enabled_layers == 0:
            return "the recipe asks for gradient checkpointing, but no layer of the model has it enabled"
        if wanted and self.checkpointed_calls == 0:
            return (f"gradient checkpointing is enabled on {self.enabled_layers} layers but none ran checkpointed: "
                    "the model was in eval mode, which keeps every activation; call model.train() before the step")
        if not wanted and self.checkpointed_calls:
            return f"the recipe turns gradient checkpointing off, but {self.checkpointed_calls} layer calls checkpointed"
        return None


def enabled_layers(model) -> list:
    """Return the modules whose gradient checkpointing is switched on."""
    return [m for m in model.modules()
            if getattr(m, "gradient_checkpointing", False) is True and callable(getattr(m, FUNC, None))]


@contextmanager
def counting(model):
    """Yield a Checkpointing record filled in by the forward passes run inside the block."""
    layers = enabled_layers(model)
    record = Checkpointing(enabled_layers=len(layers))
    saved = []
    for module in layers:
        original = getattr(module, FUNC)

        def counted(*args, _original=original, **kwargs):
            record.checkpointed_calls += 1
            return _original(*args, **kwargs)

        saved.append((module, FUNC in vars(module), original))
        setattr(module, FUNC, counted)
    try:
        yield record
    finally:
        for module, own, original in saved:
            if own:
                setattr(module, FUNC, original)
            else:
                delattr(module, FUNC)

"""Training dynamics: K identical optimizer steps (same seed, data and adapter init), the loss at each, and where two
trajectories part.

A change in LoRA scaling, loss normalisation or gradient flow leaves one step's loss alone at most: the first loss
is the base model's (LoRA B starts at zero), so a scaling change shows from the second step, a loss normalisation
change at the first, and a gradient that no longer flows as a trajectory that stops falling.
"""
from __future__ import annotations

from . import train

STEPS = 6  # optimizer steps compared
LEARNING_RATE = 1e-3  # larger than the recipes' 2e-4, so a tiny model's loss moves well beyond run-to-run noise
SEED = 0


def trajectory(model, batch, steps: int = STEPS, learning_rate: float = LEARNING_RATE, seed: int = SEED) -> list[float]:
    """Return the loss before each of `steps` AdamW steps on the same batch (the model trains in place)."""
    import torch

    torch.manual_seed(seed)  # dropout draws from it: the same draws on both sides
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    return [train.train_step(model, batch, optimizer) for _ in range(steps)]


def relative_gaps(reference: list[float], candidate: list[float]) -> list[float]:
    """Return |candidate - reference| / |reference| at each step both trajectories have."""
    return [abs(c - r) / max(abs(r), 1e-12) for r, c in zip(reference, candidate)]


def parting_step(reference: list[float], candidate: list[float], tolerance: float) -> int | None:
    """Return the first step (0-based) at which the trajectories differ by more than tolerance (relative), or None."""
    for step, gap in enumerate(relative_gaps(reference, candidate)):
        if gap > tolerance:
            return step
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))

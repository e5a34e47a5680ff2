"""What a vision tower is fed, read from a processor's outputs: patch grids, real tiles, class tokens."""
from __future__ import annotations


def grid(pixels, patch) -> int:
    """Return the patches of one image or tile of pixels (..., height, width) at a patch size (an int or (h, w))."""
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return (int(pixels.shape[-2]) // ph) * (int(pixels.shape[-1]) // pw)


def real_tiles(pixels) -> int:
    """Return the tiles of a (samples, tiles, channels, height, width) batch that are not padding: the processor pads
    every sample to the most tiles with all-zero ones, which the model drops (a normalised image is never all zero)."""
    return int((pixels.flatten(2) != 0).any(dim=-1).sum())


def per_image(pixels, patch, extra: int = 0) -> list[int]:
    """Return one sequence per image of an (images, channels, height, width) batch: its patches plus extra tokens."""
    return [grid(pixels, patch) + extra] * int(pixels.shape[0])

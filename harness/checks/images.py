"""Synthetic images drawn with PIL: coloured shapes on a plain background, reproducible from a seed."""
from __future__ import annotations

import random

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def shape_image(width: int, height: int, colour: str = "red", shape: str = "circle", seed: int = 0):
    """Return an RGB PIL image of one coloured shape at a seeded position, with light noise."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    side = max(4, min(width, height) // 2)
    x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
    box = (x0, y0, x0 + side, y0 + side)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    for _ in range(width * height // 50):
        img.putpixel((rng.randrange(width), rng.randrange(height)), tuple(rng.randrange(256) for _ in range(3)))
    return img

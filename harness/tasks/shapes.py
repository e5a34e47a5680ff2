"""The shapes task: a coloured shape in a cell of a grid; questions on its colour, shape, position, box, point.

Scenes are drawn with PIL from a seed, so a data set is a (count, seed, size, grid) tuple, never a folder.
Scene i has colour i mod 4 and shape (i div 4) mod 3, so any 12 consecutive scenes hold every colour x shape
once and accuracy on a multiple of 12 scenes compares with chance exactly.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from harness.checks.images import COLOURS, SHAPES
from harness.util.errors import unknown

from . import grounding

# Where the shape's centre lies, by thirds of the image: the row, then the column. Every name has both words, so
# none is the start of another and the answer cannot stop early.
POSITIONS = tuple(f"{row} {col}" for row in ("top", "middle", "bottom") for col in ("left", "centre", "right"))
# Labellings no checkpoint was trained on, which only the image can answer: each colour called by the next
# colour's name (words a trained VLM already writes), or by a made-up code word (new words for CLIP's text side).
SWAPPED_NAMES = {"red": "green", "green": "blue", "blue": "yellow", "yellow": "red"}
CODE_WORDS = {"red": "dax", "green": "wug", "blue": "kip", "yellow": "fep"}
BACKGROUND = (245, 245, 240)
IOU_CORRECT = 0.5  # a predicted box counts as right when it covers the true one this well (the usual detection bar)


@dataclass(frozen=True)
class Scene:
    """One shape of a colour covering span x span cells from cell (row, col) of a grid x grid image of size x size
    pixels; seed draws its noise."""

    colour: str
    shape: str
    cell: tuple[int, int]
    size: int
    grid: int
    seed: int
    span: int = 1

    @property
    def box(self) -> grounding.Box:
        """Return the shape's bounding box in pixels (x1, y1, x2, y2)."""
        step = self.size / self.grid
        margin = max(1, round(step / 8))
        row, col = self.cell
        return (col * step + margin, row * step + margin,
                (col + self.span) * step - margin, (row + self.span) * step - margin)

    @property
    def position(self) -> str:
        """Return where the shape's centre lies, as one of POSITIONS."""
        x1, y1, x2, y2 = self.box
        third = self.size / 3
        return POSITIONS[3 * min(2, int((y1 + y2) / 2 // third)) + min(2, int((x1 + x2) / 2 // third))]

    def image(self):
        """Return the scene as an RGB PIL image, with light seeded pixel noise."""
        from PIL import Image, ImageDraw

        rng = random.Random(self.seed)
        img = Image.new("RGB", (self.size, self.size), BACKGROUND)
        draw = ImageDraw.Draw(img)
        x1, y1, x2, y2 = (round(v) for v in self.box)
        fill = COLOURS[self.colour]
        if self.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif self.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)
        for _ in range(self.size * self.size // 50):
            xy = (rng.randrange(self.size), rng.randrange(self.size))
            img.putpixel(xy, tuple(rng.randrange(256) for _ in range(3)))
        return img


@dataclass(frozen=True)
class Task:
    """A question about a scene: its prompt, its answer, and the answers it may have (empty for boxes and points)."""

    name: str
    question: Callable[[Scene], str]
    answer: Callable[[Scene], str]
    choices: tuple[str, ...] = ()


def _box_answer(scene: Scene) -> str:
    return grounding.format_box(scene.box, scene.size, scene.size)


def _point_answer(scene: Scene) -> str:
    return grounding.format_point(grounding.centre(scene.box), scene.size, scene.size)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("colour", lambda s: "What colour is the shape?", lambda s: s.colour, tuple(COLOURS)),
    Task("shape", lambda s: "What shape is it?", lambda s: s.shape, SHAPES),
    Task("position", lambda s: "Where is the shape?", lambda s: s.position, POSITIONS),
    Task("box", lambda s: f"Give the box of the {s.colour} {s.shape}.", _box_answer),
    Task("point", lambda s: f"Point to the {s.colour} {s.shape}.", _point_answer),
    Task("swapped", lambda s: "What is the swapped name of the colour?", lambda s: SWAPPED_NAMES[s.colour],
         tuple(COLOURS)),
    Task("code", lambda s: "Which code word names the colour?", lambda s: CODE_WORDS[s.colour],
         tuple(CODE_WORDS.values())),
)}


def get_task(name: str) -> Task:
    """Return a task by name, or raise with the nearest known name."""
    try:
        return TASKS[name]
    except KeyError:
        raise unknown("shapes task", name, TASKS) from None


@dataclass(frozen=True)
class Sample:
    """A scene, a task's question about it and the expected answer."""

    scene: Scene
    task: str
    question: str
    answer: str


def scenes(count: int, seed: int, size: int, grid: int = 4, span: int = 1) -> list[Scene]:
    """Return count scenes, colour and shape cycling through every combination, cells and noise drawn from seed."""
    rng = random.Random(seed)
    colours = list(COLOURS)
    places = grid - span + 1
    out = []
    for i in range(count):
        cell = (rng.randrange(places), rng.randrange(places))
        out.append(Scene(colours[i % len(colours)], SHAPES[(i // len(colours)) % len(SHAPES)], cell, size, grid,
                         seed=rng.randrange(2**31), span=span))
    return out


def ask(scenes_: Sequence[Scene], task: str) -> list[Sample]:
    """Return one sample per scene, asking the named task."""
    t = get_task(task)
    return [Sample(s, t.name, t.question(s), t.answer(s)) for s in scenes_]


def mixed(count: int, tasks: Sequence[str], seed: int, size: int, grid: int = 4, span: int = 1) -> list[Sample]:
    """Return count samples over fresh scenes, each asking a task drawn from tasks (seeded)."""
    rng = random.Random(seed + 1)
    return [ask([s], rng.choice(list(tasks)))[0] for s in scenes(count, seed, size, grid, span)]


def parse_choice(text: str, choices: Sequence[str]) -> str | None:
    """Return the choice named first in a free-text answer ('The shape is in the top-left.' -> 'top left'), or None."""
    words = " ".join(re.findall(r"[a-z]+", text.lower().replace("-", " ")))
    found = [(m.start(), -len(c), c) for c in choices for m in re.finditer(rf"\b{re.escape(c)}\b", words)]
    return min(found)[2] if found else None


def is_correct(sample: Sample, text: str) -> bool:
    """Return whether a generated answer is right: the expected choice named first, a box with IoU >= 0.5, or a
    point inside the shape's box."""
    size = sample.scene.size
    if sample.task == "box":
        return grounding.iou(grounding.parse_box(text, size, size), sample.scene.box) >= IOU_CORRECT
    if sample.task == "point":
        return grounding.point_in_box(grounding.parse_point(text, size, size), sample.scene.box)
    return parse_choice(text, get_task(sample.task).choices) == sample.answer


def caption_classes() -> list[tuple[str, str]]:
    """Return every (colour, shape) pair, the classes a CLIP model tells apart on this task."""
    return [(c, s) for s in SHAPES for c in COLOURS]


def caption(colour: str, shape: str) -> str:
    """Return the CLIP prompt of a class."""
    return f"a photo of a {colour} {shape}"

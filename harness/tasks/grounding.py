"""Boxes and points in Qwen2-VL's grounding format, and how well a predicted one matches the truth.

Qwen2-VL writes a box as `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`, corners normalised to 0..1000 of the
image's width and height, optionally after the phrase it refers to in `<|object_ref_start|>..<|object_ref_end|>`.
Qwen2-VL has no point syntax of its own; a point is written here with the same tokens and scale and one
coordinate pair, `<|box_start|>(x,y)<|box_end|>`, so it costs the same tokens a box corner does.
"""
from __future__ import annotations

import re

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
SCALE = 1000  # Qwen2-VL normalises box corners to 0..1000 whatever the image size

_PAIR = r"\s*\((\d+),\s*(\d+)\)\s*"
_BOX = re.compile(re.escape(BOX_START) + _PAIR + "," + _PAIR + re.escape(BOX_END))
_POINT = re.compile(re.escape(BOX_START) + _PAIR + re.escape(BOX_END))

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
Point = tuple[float, float]  # x, y in pixels


def normalise(xys: tuple[float, ...], width: int, height: int) -> tuple[int, ...]:
    """Return pixel coordinates (x, y, x, y, ...) on Qwen2-VL's 0..1000 scale."""
    return tuple(int(v / (width if i % 2 == 0 else height) * SCALE) for i, v in enumerate(xys))


def _write(xys: tuple[float, ...], width: int, height: int, phrase: str | None) -> str:
    scaled = normalise(xys, width, height)
    pairs = ",".join(f"({x},{y})" for x, y in zip(scaled[::2], scaled[1::2]))
    ref = f"{REF_START}{phrase}{REF_END}" if phrase else ""
    return f"{ref}{BOX_START}{pairs}{BOX_END}"


def _read(pattern: re.Pattern, text: str, width: int, height: int) -> tuple[float, ...] | None:
    found = pattern.search(text)
    if found is None:
        return None
    return tuple(int(v) * (width if i % 2 == 0 else height) / SCALE for i, v in enumerate(found.groups()))


def format_box(box: Box, width: int, height: int, phrase: str | None = None) -> str:
    """Return a pixel box as Qwen2-VL writes it, after its referring phrase when one is given."""
    return _write(box, width, height, phrase)


def parse_box(text: str, width: int, height: int) -> Box | None:
    """Return the first box written in text, in pixels of a width x height image, or None if there is none."""
    return _read(_BOX, text, width, height)


def format_point(point: Point, width: int, height: int, phrase: str | None = None) -> str:
    """Return a pixel point in Qwen2-VL's grounding tokens (one coordinate pair on the 0..1000 scale)."""
    return _write(point, width, height, phrase)


def parse_point(text: str, width: int, height: int) -> Point | None:
    """Return the first point written in text, in pixels of a width x height image, or None if there is none."""
    return _read(_POINT, text, width, height)


def iou(a: Box | None, b: Box | None) -> float:
    """Return the intersection over union of two boxes; 0 when either is missing or empty."""
    if a is None or b is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])



def centre(box: Box) -> Point:
    """Return a box's centre."""
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def point_in_box(point: Point | None, box: Box) -> bool:
    """Return whether a point lies inside a box (edges included); False when the point is missing."""
    return point is not None and box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def point_distance(point: Point | None, target: Point, width: int, height: int) -> float:
    """Return the distance between two points as a share of the image diagonal; 1.0 when the point is missing."""
    if point is None:
        return 1.0
    return ((point[0] - target[0]) ** 2 + (point[1] - target[1]) ** 2) ** 0.5 / (width ** 2 + height ** 2) ** 0.5

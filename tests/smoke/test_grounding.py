"""Qwen2-VL's grounding format: boxes and points written on the 0..1000 scale, parsed back, and scored."""
import pytest

from harness.tasks import grounding, shapes


@pytest.mark.parametrize("width,height", [(448, 448), (640, 360)])
def test_a_box_and_a_point_survive_the_format_within_a_pixel(width, height):
    box = (31.0, 47.0, 210.0, 300.0)
    text = grounding.format_box(box, width, height, phrase="the red circle")
    assert text.startswith("<|object_ref_start|>the red circle<|object_ref_end|><|box_start|>(")
    parsed = grounding.parse_box(text, width, height)
    assert max(abs(a - b) for a, b in zip(parsed, box)) <= max(width, height) / grounding.SCALE
    point = grounding.centre(box)
    back = grounding.parse_point(grounding.format_point(point, width, height), width, height)
    assert grounding.point_distance(back, point, width, height) < 0.002


def test_a_point_is_not_read_as_a_box_nor_a_box_as_a_point():
    box_text = grounding.format_box((10, 10, 100, 100), 448, 448)
    point_text = grounding.format_point((50, 50), 448, 448)
    assert grounding.parse_point(box_text, 448, 448) is None
    assert grounding.parse_box(point_text, 448, 448) is None
    assert grounding.parse_box("no box here", 448, 448) is None


def test_scores_tell_a_hit_from_a_miss():
    box = (100.0, 100.0, 200.0, 200.0)
    assert grounding.iou(box, box) == 1.0 and grounding.iou(box, (300, 300, 400, 400)) == 0.0
    assert grounding.iou(box, None) == 0.0
    assert grounding.point_in_box((150, 199), box) and not grounding.point_in_box((150, 201), box)
    assert not grounding.point_in_box(None, box)
    assert grounding.point_distance(None, (0, 0), 448, 448) == 1.0


def test_the_point_task_is_right_inside_the_shape_and_wrong_outside():
    scene = shapes.scenes(1, 7, 448, grid=3)[0]
    sample = shapes.ask([scene], "point")[0]
    assert shapes.is_correct(sample, sample.answer)
    x1, y1, x2, y2 = scene.box
    outside = (x2 + 5, y2 + 5) if x2 + 5 < 448 and y2 + 5 < 448 else (x1 - 5, y1 - 5)
    assert not shapes.is_correct(sample, grounding.format_point(outside, 448, 448))
    assert not shapes.is_correct(sample, "somewhere in the middle")

"""What the seed experiments do beyond memory: training data per family kind, a learning-rate schedule,
generation on a real image, grounding scored by IoU, and a merge check."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Sequence

from harness.checks import inputs
from harness.families import DUAL_ENCODER, LLM
from harness.util.errors import unknown

from . import grounding, learn, shapes

EVAL_SEED = 10_000  # held-out scenes; training draws from seed 1 on
GROUNDING_TASKS = ("box", "point")


def describe(scene: shapes.Scene) -> str:
    """Return a sentence about a scene: what an LLM learns when it has no image."""
    return f"The {scene.colour} {scene.shape} is at the {scene.position}."


def training_batches(family, processor, tasks: Sequence[str], count: int, batch_size: int, image: int, seq_len: int,
                     grid: int) -> Iterator:
    """Yield count training batches: shapes questions with images (VLM, each asking one of tasks), scene
    descriptions (LLM), or CLIP pairs."""
    if family.kind == DUAL_ENCODER:
        for step in range(count):
            scenes = shapes.scenes(batch_size, 1 + step, image, grid)
            yield inputs.build_inputs(family, processor, [shapes.caption(s.colour, s.shape) for s in scenes],
                                      [s.image() for s in scenes])
        return
    if family.kind == LLM:
        for step in range(count):
            rng = random.Random(1 + step)
            texts = []
            for _ in range(batch_size):
                sentences = " ".join(describe(s) for s in shapes.scenes(seq_len // 24 + 1, rng.randrange(2**31), 96, grid))
                texts.append(sentences[: max(8, seq_len - 32)])
            yield inputs.build_inputs(family, processor, ["Describe the scenes."] * batch_size, answers=texts,
                                      padding_side="right")
        return
    yield from learn.shape_batches(family, processor, list(tasks), count, batch_size, 1, image, grid)


def schedule(optimizer, name: str, warmup_steps: int, steps: int):
    """Return the learning-rate scheduler a name asks for ('constant': None, 'cosine': cosine with warm-up)."""
    if name == "constant":
        return None
    if name == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    raise unknown("learning-rate schedule", name, ["constant", "cosine"])


def photo(size: int):
    """Return (image, source): a real photograph (scikit-image's Chelsea the cat) resized to size, or a drawn
    scene when scikit-image is not installed."""
    try:
        import skimage.data
        from PIL import Image

        return Image.fromarray(skimage.data.chelsea()).convert("RGB").resize((size, size)), "photo: skimage chelsea"
    except ImportError:
        return shapes.scenes(1, EVAL_SEED, size)[0].image(), "drawn scene (scikit-image not installed)"


def generation(model, family, processor, image_size: int, device: str) -> dict:
    """Return greedy generation on a real image, run twice: the tokens, the text, and whether both runs agree."""
    import torch

    from harness.model.generate import greedy

    image, source = photo(image_size)
    batch = inputs.build_inputs(family, processor, ["Describe the image."], [image]).to(device)
    first, second = greedy(model, batch), greedy(model, batch)
    tok = getattr(processor, "tokenizer", processor)
    return {"image": source, "tokens": first[0].tolist(), "text": tok.decode(first[0]),
            "deterministic": bool(torch.equal(first, second))}


def grounding_eval(model, family, processor, tasks: Sequence[str], image: int, grid: int, count: int) -> dict:
    """Return, per grounding task ('box', 'point'), the answers on held-out scenes scored against the truth, and how
    well the targets survive being written in the grounding format and parsed back (the format's round trip)."""
    scenes = shapes.scenes(count, EVAL_SEED, image, grid)
    out = {}
    for task in tasks:
        if task not in GROUNDING_TASKS:
            raise unknown("grounding task", task, GROUNDING_TASKS)
        samples = shapes.ask(scenes, task)
        answers = learn.generate_answers(model, family, processor, samples)
        score = _box_scores if task == "box" else _point_scores
        out[task] = {**score(answers, samples, image), "count": count, "example_target": samples[0].answer,
                     "example_answer": answers[0]}
    return out


def _box_scores(answers: list[str], samples, image: int) -> dict:
    """Mean IoU, share with IoU >= 0.5, share parsed; the worst IoU of a target parsed back."""
    boxes = [grounding.parse_box(a, image, image) for a in answers]
    ious = [grounding.iou(b, s.scene.box) for b, s in zip(boxes, samples)]
    trip = [grounding.iou(grounding.parse_box(s.answer, image, image), s.scene.box) for s in samples]
    return {"mean_iou": sum(ious) / len(ious), "iou_at_least_0.5": sum(i >= shapes.IOU_CORRECT for i in ious) / len(ious),
            "parsed": sum(b is not None for b in boxes) / len(boxes), "target_round_trip_min_iou": min(trip)}


def _point_scores(answers: list[str], samples, image: int) -> dict:
    """Share inside the shape's box, mean distance to its centre (share of the diagonal), share parsed; the largest
    distance of a target parsed back."""
    points = [grounding.parse_point(a, image, image) for a in answers]
    centres = [grounding.centre(s.scene.box) for s in samples]
    distances = [grounding.point_distance(p, c, image, image) for p, c in zip(points, centres)]
    trip = [grounding.point_distance(grounding.parse_point(s.answer, image, image), c, image, image)
            for s, c in zip(samples, centres)]
    return {"in_box": sum(grounding.point_in_box(p, s.scene.box) for p, s in zip(points, samples)) / len(points),
            "mean_distance": sum(distances) / len(distances), "parsed": sum(p is not None for p in points) / len(points),
            "target_round_trip_max_distance": max(trip)}


def merge_check(model, family, processor, image: int, folder: Path | None) -> dict:
    """Return how merged copies (dequantized base + LoRA) agree with the adapted 4-bit model, on a held-out scene.

    The deployable copy is bf16 (saved to folder when given); a float32 copy is compared too, as the reference
    that only the 4-bit kernels separate from the adapter model. Each: max and mean |delta logits| over the logits'
    spread (std) and whether greedy tokens agree. Beside them: how far the adapter moves the logits, and the largest
    ||delta W|| / ||W||: a delta under bf16's resolution (2^-8 relative) is partly rounded away in a bf16 merge.
    """
    import torch

    from harness.model import merge
    from harness.model.generate import greedy, logits

    device = next(p.device for p in model.parameters())
    scene = shapes.scenes(1, EVAL_SEED, image)[0]
    batch = inputs.build_inputs(family, processor, ["Give the box of the shape."], [scene.image()]).to(device)
    adapted = logits(model, batch).float()
    spread = adapted.std()
    adapted_tokens = greedy(model, batch)
    with model.disable_adapter():
        base = logits(model, batch).float()
    result = {"adapter_effect_over_std": float((adapted - base).abs().max() / spread),
              "largest_delta_over_weight": merge.largest_delta_over_weight(model), "bf16_resolution": 2.0**-8,
              "saved_to": None}
    for dtype in ("bfloat16", "float32"):
        try:
            merged = merge.merged_model(model, dtype)
        except torch.OutOfMemoryError:
            result[dtype] = {"skipped": f"no room for a {dtype} copy of the model next to the 4-bit one"}
            continue
        out = logits(merged, batch).float()
        result[dtype] = {"max_abs_logit_delta_over_std": float((out - adapted).abs().max() / spread),
                         "mean_abs_logit_delta_over_std": float((out - adapted).abs().mean() / spread),
                         "same_greedy_tokens": bool(torch.equal(greedy(merged, batch), adapted_tokens))}
        if dtype == "bfloat16" and folder is not None:
            merge.save_merged(merged, processor, folder)
            result["saved_to"] = str(folder)
        del merged
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result

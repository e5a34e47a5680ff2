"""What the seed experiments do beyond memory: training data per family kind, a loop with gradient accumulation
and a learning-rate schedule, generation on a real image, grounding scored by IoU, and a merge check."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import grounding, inputs, learn, shapes, train
from .errors import unknown
from .families import DUAL_ENCODER, LLM

EVAL_SEED = 10_000  # held-out scenes; training draws from seed 1 on


def describe(scene: shapes.Scene) -> str:
    """Return a sentence about a scene: what an LLM learns when it has no image."""
    return f"The {scene.colour} {scene.shape} is at the {scene.position}."


def training_batches(family, processor, task: str, count: int, batch_size: int, image: int, seq_len: int,
                     grid: int) -> Iterator:
    """Yield count training batches: shapes questions with images (VLM), scene descriptions (LLM), or CLIP pairs."""
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
    yield from learn.shape_batches(family, processor, [task], count, batch_size, 1, image, grid)


def schedule(optimizer, name: str, warmup_steps: int, steps: int):
    """Return the learning-rate scheduler a name asks for ('constant': None, 'cosine': cosine with warm-up)."""
    if name == "constant":
        return None
    if name == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    raise unknown("learning-rate schedule", name, ["constant", "cosine"])


def fit(model, batches: Iterable, optimizer, grad_accum: int = 1, scheduler=None,
        on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Run optimizer steps of grad_accum micro-batches each; return each step's loss (the micro-batches' mean)."""
    device = next(p.device for p in model.parameters())
    model.train()
    losses, micro, total = [], 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    for batch in batches:
        loss = train.forward_loss(model, batch.to(device)) / grad_accum
        loss.backward()
        total += float(loss.detach())
        micro += 1
        if micro == grad_accum:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            if on_step is not None:
                on_step(len(losses) - 1, total)
            micro, total = 0, 0.0
    return losses


def keep_training_layout(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference (AVX512-BF16) at an eval forward: once repacked,
    a later training forward takes the inference kernel and fails on Linear layers with a bias ("a view of a leaf
    Variable that requires grad is being used in an in-place operation"). Experiments evaluate between steps."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def save_merged(model, processor, folder: Path) -> None:
    """Write a merged model with its tokenizer and image processor to folder, all or nothing.

    The parts are saved one by one: a processor the harness assembled without torchvision (no video processor)
    cannot save itself whole under transformers 5.
    """
    from .atomic import staged_folder

    with staged_folder(folder) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        for part in ("tokenizer", "image_processor"):
            if getattr(processor, part, None) is not None:
                getattr(processor, part).save_pretrained(stage)


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

    from .generate import greedy

    image, source = photo(image_size)
    batch = inputs.build_inputs(family, processor, ["Describe the image."], [image]).to(device)
    first, second = greedy(model, batch), greedy(model, batch)
    tok = getattr(processor, "tokenizer", processor)
    return {"image": source, "tokens": first[0].tolist(), "text": tok.decode(first[0]),
            "deterministic": bool(torch.equal(first, second))}


def grounding_eval(model, family, processor, image: int, grid: int, count: int) -> dict:
    """Return box answers on held-out scenes scored against the truth: mean IoU, share parsed, share with IoU >= 0.5;
    and the worst IoU of the targets written in the grounding format and parsed back (the format's round trip)."""
    samples = shapes.ask(shapes.scenes(count, EVAL_SEED, image, grid), "box")
    answers = learn.generate_answers(model, family, processor, samples)
    boxes = [grounding.parse_box(a, image, image) for a in answers]
    ious = [grounding.iou(b, s.scene.box) for b, s in zip(boxes, samples)]
    round_trip = [grounding.iou(grounding.parse_box(s.answer, image, image), s.scene.box) for s in samples]
    return {"count": count, "mean_iou": sum(ious) / count, "parsed": sum(b is not None for b in boxes) / count,
            "iou_at_least_0.5": sum(i >= shapes.IOU_CORRECT for i in ious) / count,
            "target_round_trip_min_iou": min(round_trip), "example_target": samples[0].answer,
            "example_answer": answers[0]}


def merge_check(model, family, processor, image: int, folder: Path | None) -> dict:
    """Return how a merged 16-bit copy (dequantized base + LoRA) agrees with the adapted 4-bit model: max |delta| of
    the logits as a share of their standard deviation, and equal greedy tokens; saved to folder when given."""
    import torch

    from . import merge
    from .generate import greedy, logits

    device = next(p.device for p in model.parameters())
    scene = shapes.scenes(1, EVAL_SEED, image)[0]
    batch = inputs.build_inputs(family, processor, ["Give the box of the shape."], [scene.image()]).to(device)
    adapted = logits(model, batch).float()
    adapted_tokens = greedy(model, batch)
    merged = merge.merged_model(model)
    out = logits(merged, batch).float()
    result = {"max_abs_logit_delta_over_std": float((out - adapted).abs().max() / adapted.std()),
              "same_greedy_tokens": bool(torch.equal(greedy(merged, batch), adapted_tokens)),
              "saved_to": None}
    if folder is not None:
        save_merged(merged, processor, folder)
        result["saved_to"] = str(folder)
    del merged
    return result

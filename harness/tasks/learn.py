"""Many steps rather than one: supervised answers on the shapes task, accuracy by generation, CLIP classification,
and a control that cuts the image features off from the language model."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from harness.checks import inputs, train
from harness.families import DUAL_ENCODER, FamilySpec, get_family
from harness.model import calls
from harness.util.errors import HarnessError
from harness.util.resources import data_path

from . import shapes

FIXTURES = data_path("checkpoints")  # shipped in the wheel (harness/data/checkpoints)
TRAINED_META = "shapes.json"  # written by fixtures/train_tiny.py into each trained checkpoint
EVAL_SEED, EVAL_COUNT = 10_000, 48  # held-out scenes (training draws seeds 0..steps); 48 = 4 x every colour x shape


@contextmanager
def deterministic(seed: int = 0):
    """Within the block, torch's random state starts from seed and only deterministic algorithms run."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def trained_checkpoint(name: str, root: Path = FIXTURES) -> tuple[Path, dict]:
    """Return (folder, record) of a checkpoint trained by fixtures/train_tiny.py; raise if it was never built."""
    folder = Path(root) / name
    if not (folder / TRAINED_META).is_file():
        raise HarnessError(f"trained checkpoint {folder} has no {TRAINED_META}; build it with "
                           f"`python fixtures/train_tiny.py {name}`")
    return folder, json.loads((folder / TRAINED_META).read_text())


def eval_scenes(record: dict, count: int = EVAL_COUNT, seed: int = EVAL_SEED) -> list[shapes.Scene]:
    """Return the held-out scenes of a trained checkpoint's task, at its image size and grid."""
    return shapes.scenes(count, seed, record["image_size"], record["grid"], record["span"])


def trained_accuracy(model, family: FamilySpec, processor, record: dict, count: int = EVAL_COUNT) -> dict[str, float]:
    """Return the accuracy on held-out scenes of each task a checkpoint was trained on (CLIP: its caption classes)."""
    scenes_ = eval_scenes(record, count)
    if family.kind == DUAL_ENCODER:
        classes = shapes.caption_classes()
        predicted = clip_predictions(model, processor, [s.image() for s in scenes_],
                                     [shapes.caption(*c) for c in classes])
        return {"caption": sum(classes[p] == (s.colour, s.shape) for p, s in zip(predicted, scenes_)) / len(scenes_)}
    out = {}
    for task in record["tasks"]:
        samples = shapes.ask(scenes_, task)
        out[task] = accuracy(samples, generate_answers(model, family, processor, samples))
    return out


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def chat_batch(family: FamilySpec, processor, samples: Sequence[shapes.Sample], with_answers: bool):
    """Return a VLM batch of samples via the processor and chat template; with answers, labels cover them only."""
    images = [s.scene.image() for s in samples]
    prompts = [s.question for s in samples]
    if not with_answers:
        return inputs.build_inputs(family, processor, prompts, images, padding_side="left")
    answers = [s.answer for s in samples]
    batch = inputs.build_inputs(family, processor, prompts, images, answers=answers, padding_side="right")
    batch["labels"] = answer_labels(batch, _tokenizer(processor), answers, family.inputs.turn_end)
    return batch


def prompt_batch(family: FamilySpec, processor, prompts: Sequence[str], images: Sequence, min_pixels: int | None = None,
                 max_pixels: int | None = None):
    """Return a left-padded VLM batch of prompts, one image each, resized within [min_pixels, max_pixels] if given."""
    tok = _tokenizer(processor)
    tok.padding_side = "left"
    texts = [inputs.chat_text(processor, p, with_image=True) for p in prompts]
    images = [[image] for image in images] if family.inputs.nested_images else list(images)
    kwargs = {}
    if min_pixels is not None or max_pixels is not None:
        default = processor.image_processor.size
        kwargs["size"] = {"shortest_edge": min_pixels or default["shortest_edge"],
                          "longest_edge": max_pixels or default["longest_edge"]}
    return processor(text=texts, images=images, padding=True, return_tensors="pt", **kwargs)


def answer_labels(batch, tokenizer, answers: Sequence[str], turn_end: str = ""):
    """Return labels that score only each right-padded row's answer and the end-of-turn text after it."""
    labels = batch["input_ids"].clone()
    labels[:] = inputs.IGNORE
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for row, (length, answer) in enumerate(zip(lengths, answers)):
        n = len(tokenizer(answer + turn_end, add_special_tokens=False)["input_ids"])
        labels[row, length - n:length] = batch["input_ids"][row, length - n:length]
    return labels


def shape_batches(family: FamilySpec, processor, tasks: Sequence[str], steps: int, batch_size: int, seed: int,
                  size: int, grid: int = 4, span: int = 1) -> Iterator:
    """Yield steps training batches of fresh scenes (seeded per step), each sample asking one of tasks."""
    for step in range(steps):
        samples = shapes.mixed(batch_size, tasks, seed * 1_000_003 + step, size, grid, span)
        yield chat_batch(family, processor, samples, with_answers=True)


def keep_4bit_layout(model) -> None:
    """Stop bitsandbytes repacking the model's 4-bit weights for CPU inference, so it can train after it evaluated.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight at its first eval forward, and a
    repacked layer with a bias fails in training ('a view of a leaf Variable ... in-place operation'). Loops that
    alternate evaluation and training keep the layout they loaded; the arithmetic is the same.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def fit(model, batches: Iterable, optimizer, scheduler=None,
        on_step: Callable[[int, float], None] | None = None, grad_accum: int = 1) -> list[float]:
    """Run optimizer steps of grad_accum batches each (LoRA or full weights, whatever requires grad); return each
    step's loss (the mean over its batches)."""
    device = next(model.parameters()).device
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


def decode_answer(tokenizer, ids, turn_end: str = "") -> str:
    """Return generated ids as text up to the end of the turn (turn_end, EOS or padding), special tokens such as
    <|box_start|> kept."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for end in {turn_end, tokenizer.eos_token, tokenizer.pad_token} - {None, ""}:
        text = text.split(end)[0]
    return text.strip()


def generate_answers(model, family: FamilySpec, processor, samples: Sequence[shapes.Sample], batch_size: int = 32,
                     max_new_tokens: int | None = None) -> list[str]:
    """Return the model's greedy answer to each sample (prompts through the processor and chat template)."""
    import torch

    tok = _tokenizer(processor)
    if max_new_tokens is None:  # room for the longest expected answer and its end-of-turn token
        max_new_tokens = max(len(tok(s.answer, add_special_tokens=False)["input_ids"]) for s in samples) + 2
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        batch = chat_batch(family, processor, samples[start:start + batch_size], with_answers=False).to(model.device)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        out += [decode_answer(tok, row, family.inputs.turn_end) for row in ids[:, batch["input_ids"].shape[1]:]]
    return out


def accuracy(samples: Sequence[shapes.Sample], answers: Sequence[str]) -> float:
    """Return the fraction of answers that are right (shapes.is_correct)."""
    return sum(shapes.is_correct(s, a) for s, a in zip(samples, answers)) / len(samples)


@contextmanager
def image_features_cut(model, family: FamilySpec, role: str = "projector"):
    """Within the block, the family's projector (found through its role) outputs zeros: no image reaches the LM."""
    import torch

    roots = calls.role_roots(model, family, [role])
    if not roots:
        raise HarnessError(f"{family.name}: no module in role {role!r} to cut the image features at; the family "
                           f"spec's roles are {sorted(family.roles)}; give a role that carries the image features")
    modules = dict(model.named_modules())

    def zero(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise HarnessError(f"{family.name}: role {role} returned {type(output).__name__}, expected a tensor of "
                               "image features; cut at a role whose modules return tensors")
        return torch.zeros_like(output)

    handles = [modules[name].register_forward_hook(zero) for name in roots]
    try:
        yield roots
    finally:
        for h in handles:
            h.remove()


def clip_batch(processor, images, class_texts: Sequence[str], family: FamilySpec | None = None):
    """Return a dual-encoder batch pairing every image with every class prompt (laid out by the family's contract
    when given: SigLIP 2 pads captions to its fixed length and passes its patch settings)."""
    if family is not None:
        return inputs.build_inputs(family, processor, list(class_texts), list(images))
    return processor(text=list(class_texts), images=list(images), padding=True, return_tensors="pt")


def clip_step(model, batch, labels, optimizer) -> float:
    """Run one training step of cross-entropy over the class prompts (CLIP-LoRA's objective); return the loss."""
    import torch

    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(**batch).logits_per_image.float(), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def clip_predictions(model, processor, images, class_texts: Sequence[str], batch_size: int = 64,
                     family: FamilySpec | None = None) -> list[int]:
    """Return the index of the best-matching class prompt for each image."""
    import torch

    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = clip_batch(processor, images[start:start + batch_size], class_texts, family).to(model.device)
        with torch.no_grad():
            out += model(**batch).logits_per_image.argmax(dim=1).tolist()
    return out


@dataclass
class Learning:
    """Accuracy before and after training on a task, and the training losses."""

    before: float
    after: float
    losses: list[float]


def learn_task(model, family: FamilySpec, processor, recipe, task: str, record: dict, steps: int, batch_size: int,
               seed: int = 1, cut_images: bool = False) -> Learning:
    """Return the held-out accuracy on a shapes task before and after steps of training (LoRA: the recipe's optimizer).

    cut_images zeroes the image features (at the projector role) in training and evaluation: the control run.
    """
    from contextlib import nullcontext

    keep_4bit_layout(model)
    samples = shapes.ask(eval_scenes(record), task)
    cut = image_features_cut(model, family) if cut_images else nullcontext()
    with cut:
        before = accuracy(samples, generate_answers(model, family, processor, samples))
        batches = shape_batches(family, processor, [task], steps, batch_size, seed, record["image_size"],
                                record["grid"], record["span"])
        losses = fit(model, batches, train.make_optimizer(model, recipe))
        after = accuracy(samples, generate_answers(model, family, processor, samples))
    return Learning(before, after, losses)


def few_shot_clip(model, processor, recipe, task: str, prompt: str, record: dict, shots: int, steps: int,
                  seed: int = 1) -> Learning:
    """Return CLIP's held-out accuracy on a task's classes before (zero-shot) and after steps on a k-shot set.

    The classes are the task's choices written into prompt ('a photo of a shape at the {}'); the k-shot set holds
    shots scenes of each class, and every step trains on all of it (CLIP-LoRA's cross-entropy over class prompts).
    """
    import torch

    keep_4bit_layout(model)
    choices = shapes.get_task(task).choices
    prompts = [prompt.format(c) for c in choices]
    answer = shapes.get_task(task).answer
    test = eval_scenes(record)
    pool = shapes.scenes(40 * shots * len(choices), seed, record["image_size"], record["grid"], record["span"])
    train_scenes = [s for c in choices for s in [s for s in pool if answer(s) == c][:shots]]
    if len(train_scenes) != shots * len(choices):
        raise HarnessError(f"few-shot {task}: drew too few scenes of some class for {shots} shots; draw a larger pool")
    labels = torch.tensor([choices.index(answer(s)) for s in train_scenes])
    family = get_family(recipe.family)
    batch = clip_batch(processor, [s.image() for s in train_scenes], prompts, family).to(model.device)
    images = [s.image() for s in test]
    truth = [choices.index(answer(s)) for s in test]

    def score() -> float:
        predicted = clip_predictions(model, processor, images, prompts, family=family)
        return sum(p == t for p, t in zip(predicted, truth)) / len(test)

    before = score()
    optimizer = train.make_optimizer(model, recipe)
    losses = [clip_step(model, batch, labels.to(model.device), optimizer) for _ in range(steps)]
    return Learning(before, score(), losses)

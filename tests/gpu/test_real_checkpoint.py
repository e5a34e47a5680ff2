"""A real checkpoint of your own on the GPU: `pytest tests/gpu/test_real_checkpoint.py --checkpoint PATH`.

PATH is a local Qwen2-VL, Qwen2.5-VL (Instruct) or CLIP folder, or its models--ORG--NAME entry of the Hugging Face
cache; its family is read from its config.json. The checks are those the tiny trained checkpoints pass on CPU,
at full size: the shapes task in 16-bit and 4-bit NF4, QLoRA learning a new labelling through the image (and a
control without the image staying at chance), CLIP few-shot beating zero-shot, merging for deployment, and
expected answers on real photographs (public domain, shipped with scikit-image). Without --checkpoint every test
skips and says so.
"""
import pytest
import skimage.data
import torch
from PIL import Image

from harness.families import DUAL_ENCODER
from harness.model import load, merge, pipeline
from harness.model.generate import logits
from harness.plugin import isolation
from harness.recipe import default_recipe
from harness.tasks import learn, shapes

# photo -> (question for a VLM, words any of which make its answer right, CLIP prompt)
PHOTOS = {
    "chelsea": ("What animal is in the picture? Answer with one word.", ("cat", "kitten"), "a photo of a cat"),
    "astronaut": ("What is the job of the person in the picture? Answer with one word.", ("astronaut",),
                  "a photo of an astronaut"),
    "coffee": ("What drink is in the picture? Answer with one word.", ("coffee", "espresso", "cappuccino", "latte"),
               "a photo of a cup of coffee"),
}
# Shapes scenes at a size real models read: a 448-pixel image, the shape covering a quarter of it, nine places.
SCENES = {"image_size": 448, "grid": 4, "span": 2}
CLIP_SCENES = {"image_size": 224, "grid": 4, "span": 2}
VLM_TASKS = ("colour", "shape")
REQUIRED_16BIT = 0.90  # a real instruct model names the colour and shape of a flat drawn shape
NF4_MAX_DROP = 4 / 48  # as for the tiny checkpoints (tests/smoke/test_trained.py)
CHANCE, LEARNT = 1 / 4, 0.90
QLORA_STEPS, QLORA_BATCH = 150, 4
MERGE_MAX_OF_SPREAD, MERGE_MEAN_OF_SPREAD = 0.5, 0.01  # as for the tiny checkpoints (tests/slow/test_merge.py)
MERGE_STEPS, MERGE_LEARNING_RATE = 20, 5e-3
CLIP_SHOTS, CLIP_STEPS, CLIP_MIN_GAIN, CLIP_LEARNING_RATE = 8, 200, 0.10, 1e-3


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def real(pytestconfig, request):
    """(folder, family, device) of the --checkpoint; skip without one, or without a GPU."""
    path = pytestconfig.getoption("--checkpoint")
    if not path:
        pytest.skip("no --checkpoint given: pass --checkpoint PATH (a local Qwen2-VL, Qwen2.5-VL or CLIP folder) "
                    "to run the behaviour checks on a real model")
    device = str(request.getfixturevalue("cuda"))
    folder = load.resolve_checkpoint(path)
    return folder, load.detect_family(folder), device


def _recipe(family, four_bit: bool):
    recipe = default_recipe(family.name)
    return recipe if four_bit else recipe.replace(quantization={"load_in_4bit": False})


@pytest.fixture(scope="module", params=[False, True], ids=["16bit", "4bit"])
def loaded(request, real):
    """The checkpoint loaded on the GPU, in 16-bit then in 4-bit NF4 (one at a time)."""
    folder, family, device = real
    model = load.load_model(folder, family, _recipe(family, request.param), device=device)
    processor = load.load_processor(folder, family)
    yield request.param, family, model, processor
    del model  # the root conftest returns the GPU memory after the last test that used it


_accuracy: dict[bool, dict[str, float]] = {}


def _vlm_only(family):
    if family.kind == DUAL_ENCODER:
        pytest.skip(f"{family.name} is a dual encoder: this check is for VLMs")


def _clip_only(family):
    if family.kind != DUAL_ENCODER:
        pytest.skip(f"{family.name} is a VLM: this check is for CLIP")


@pytest.mark.parametrize("name", list(PHOTOS))
def test_a_real_photo_is_answered(loaded, name):
    four_bit, family, model, processor = loaded
    question, words, clip_prompt = PHOTOS[name]
    if family.kind == DUAL_ENCODER:
        prompts = [p for _, _, p in PHOTOS.values()]
        predicted = learn.clip_predictions(model, processor, [photo(name)], prompts)[0]
        assert prompts[predicted] == clip_prompt, f"{name}: expected {clip_prompt!r}, CLIP chose {prompts[predicted]!r}"
        return
    batch = learn.prompt_batch(family, processor, [question], [photo(name)]).to(model.device)
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = learn.decode_answer(processor.tokenizer, ids[0, batch["input_ids"].shape[1]:])
    assert any(w in answer.lower() for w in words), f"{name}: expected one of {words}, the model said {answer!r}"


def test_the_shapes_task_in_16_bit_and_within_the_bound_in_4_bit(loaded):
    four_bit, family, model, processor = loaded
    _vlm_only(family)
    record = dict(SCENES, tasks=list(VLM_TASKS))
    scores = {}
    for task in VLM_TASKS:
        samples = shapes.ask(learn.eval_scenes(record), task)
        scores[task] = learn.accuracy(samples, learn.generate_answers(model, family, processor, samples, 8, 16))
    _accuracy[four_bit] = scores
    if not four_bit:
        assert min(scores.values()) >= REQUIRED_16BIT, scores
    else:
        assert False in _accuracy, "the 16-bit run did not record its accuracy (run the whole module)"
        drops = {t: _accuracy[False][t] - scores[t] for t in VLM_TASKS}
        assert max(drops.values()) <= NF4_MAX_DROP, f"16-bit {_accuracy[False]}, 4-bit {scores}"


def _harnessed(real, cache_dir, **replace):
    """(recipe, harnessed) of the checkpoint: 4-bit, LoRA per the family's default recipe with replace applied."""
    torch.manual_seed(0)
    folder, family, device = real
    recipe = default_recipe(family.name).replace(**replace) if replace else default_recipe(family.name)
    # the size names the case only; the architecture comes from the checkpoint's config.json
    case = pipeline.case(family.name, family.size_names()[0], recipe, checkpoint=folder)
    return recipe, pipeline.harness(case, cache_dir, device=device)


@pytest.mark.parametrize("cut_images", [False, True], ids=["qlora", "control-without-image"])
def test_qlora_learns_a_new_labelling_through_the_image(real, cache_dir, cut_images):
    _vlm_only(real[1])
    recipe, h = _harnessed(real, cache_dir)
    try:
        result = learn.learn_task(h.model, h.case.family, h.processor, recipe, "swapped", SCENES, QLORA_STEPS,
                                  QLORA_BATCH, cut_images=cut_images)
    finally:
        del h
        isolation.release_gpu_memory()
    assert result.before <= CHANCE
    if cut_images:
        assert result.after <= CHANCE, f"the control reached {result.after:.2f} without the image"
    else:
        assert result.after >= LEARNT, f"{result.before:.2f} -> {result.after:.2f} after {QLORA_STEPS} steps"


def test_clip_few_shot_beats_zero_shot(real, cache_dir):
    _clip_only(real[1])
    recipe, h = _harnessed(real, cache_dir, training={"learning_rate": CLIP_LEARNING_RATE})
    try:
        result = learn.few_shot_clip(h.model, h.processor, recipe, "code", "a photo of a {} shape", CLIP_SCENES,
                                     CLIP_SHOTS, CLIP_STEPS)
    finally:
        del h
        isolation.release_gpu_memory()
    assert result.after >= result.before + CLIP_MIN_GAIN, f"zero-shot {result.before:.2f}, few-shot {result.after:.2f}"


def test_the_merged_model_gives_the_adapter_models_outputs(real, cache_dir):
    recipe, h = _harnessed(real, cache_dir, lora={"dropout": 0.0})
    family = h.case.family
    try:
        # a few steps, so that the adapter moves the outputs clearly (B starts at zero)
        optimizer = torch.optim.AdamW([p for p in h.model.parameters() if p.requires_grad], lr=MERGE_LEARNING_RATE)
        if family.kind == DUAL_ENCODER:
            batch = learn.clip_batch(h.processor, [photo(n) for n in PHOTOS], [p for _, _, p in PHOTOS.values()])
            for _ in range(MERGE_STEPS):  # an arbitrary pairing, to move CLIP away from its own
                learn.clip_step(h.model, batch.to(real[2]), torch.tensor([1, 2, 0], device=real[2]), optimizer)
        else:
            samples = shapes.ask(learn.eval_scenes(dict(SCENES), count=4), "swapped")
            learn.fit(h.model, [learn.chat_batch(family, h.processor, samples, with_answers=True)] * MERGE_STEPS,
                      optimizer)
            batch = learn.chat_batch(family, h.processor, samples, with_answers=False)
        batch = batch.to(real[2])
        expected = logits(h.model, batch).float()
        with h.model.disable_adapter():
            base = logits(h.model, batch).float()
        merged = merge.merged_model(h.model)
        found = logits(merged, batch).float()
    finally:
        del h
        isolation.release_gpu_memory()
    spread, difference = float(expected.std()), (found - expected).abs()
    assert float((expected - base).abs().max()) > MERGE_MAX_OF_SPREAD * spread, "the adapter barely moved: no proof"
    assert float(difference.max()) <= MERGE_MAX_OF_SPREAD * spread
    assert float(difference.mean()) <= MERGE_MEAN_OF_SPREAD * spread

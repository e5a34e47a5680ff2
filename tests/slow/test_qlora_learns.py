"""QLoRA learns through the image: on the 4-bit model, a labelling the checkpoint never saw goes from no better
than chance to >= 90% in 150 LoRA steps; the same run with the image features cut off stays at chance.

The labelling calls each colour by the next colour's name (harness.tasks.shapes.SWAPPED_NAMES), asked with a question
the checkpoint never saw, so only the image can tell the answer. The control zeroes the projector's output (found
through the family's projector role): its inputs no longer differ between samples, so whatever it learns it
answers the same for all, which on the balanced held-out scenes is at best chance.
"""
import pytest

from harness.model import pipeline
from harness.recipe import default_recipe
from harness.tasks import learn

CHECKPOINT = "qwen2.5-vl-shapes"
CHANCE = 1 / 4  # four colours, equally often among the held-out scenes
LEARNT = 0.90
STEPS, BATCH_SIZE = 150, 8
# The default recipe's LoRA (q/k/v/o of the language backbone, NF4 + double quant), with a learning rate for
# tiny models and no gradient checkpointing (nothing to save at this size, and slower on CPU).
RECIPE = default_recipe("qwen2.5-vl").replace(
    lora={"r": 16, "alpha": 16, "dropout": 0.0},
    training={"learning_rate": 2e-3, "gradient_checkpointing": False})


def _learn(cache_dir, cut_images: bool) -> learn.Learning:
    folder, record = learn.trained_checkpoint(CHECKPOINT)
    case = pipeline.case(record["family"], "tiny", RECIPE, checkpoint=folder)
    with learn.deterministic(seed=0):
        h = pipeline.harness(case, cache_dir)
        assert h.model.get_base_model().is_loaded_in_4bit
        return learn.learn_task(h.model, case.family, h.processor, RECIPE, "swapped", record, STEPS, BATCH_SIZE,
                                cut_images=cut_images)


@pytest.fixture(scope="module")
def qlora_run(cache_dir) -> learn.Learning:
    return _learn(cache_dir, cut_images=False)


@pytest.fixture(scope="module")
def control_run(cache_dir) -> learn.Learning:
    return _learn(cache_dir, cut_images=True)


def test_the_checkpoint_does_not_know_the_new_labelling(qlora_run):
    assert qlora_run.before <= CHANCE


def test_qlora_on_the_4bit_model_learns_it(qlora_run):
    assert qlora_run.after >= LEARNT, f"accuracy {qlora_run.before:.2f} -> {qlora_run.after:.2f} after {STEPS} steps"


def test_with_the_image_cut_off_it_stays_at_chance(control_run):
    assert control_run.after <= CHANCE, f"control reached {control_run.after:.2f} without the image"
    # the control did train: its loss fell to the label prior's, it only had nothing to see
    assert control_run.losses[-1] < control_run.losses[0]

"""The seed experiments are data: every one names a recipe that parses, variants that derive from it, and the
memory estimate they print counts the weights exactly as the loaded model holds them."""
import pytest

from harness.cli import main
from harness.measure import estimate, memory, variants
from harness.recipe import RECIPES_DIR, load_recipe
from harness.tasks import experiments
from harness.util.errors import HarnessError

SEEDS = list(experiments.EXPERIMENTS.values())


@pytest.mark.parametrize("exp", SEEDS, ids=[e.name for e in SEEDS])
def test_each_seed_experiment_has_a_recipe_and_variants_that_derive(exp):
    recipe = load_recipe(exp.recipe_path)
    assert experiments.for_recipe(exp.recipe_path) is exp
    for variant in exp.variants:
        derived = variants.derive(recipe, variant)
        assert derived.family == recipe.family
    for size in experiments.SIZES:
        assert exp.sizes[size] and exp.batch_sizes[size]


def test_every_seed_recipe_file_belongs_to_an_experiment():
    files = sorted(p.name for p in RECIPES_DIR.glob("seed-*.yaml"))
    assert files == sorted(e.recipe for e in SEEDS)


def test_the_grounding_recipe_is_the_seed_s():
    exp = experiments.get_experiment("seed-qwen2-vl-grounding")
    r = load_recipe(exp.recipe_path)
    q, lo, t = r.quantization, r.lora, r.training
    assert (q.quant_type, q.double_quant, q.compute_dtype) == ("nf4", True, "bfloat16")
    assert (lo.r, lo.alpha, lo.dropout, set(lo.target_modules)) == (64, 16, 0.1, {"q_proj", "k_proj", "v_proj", "o_proj"})
    assert (t.batch_size, t.seq_len, t.gradient_checkpointing) == (2, 2048, True)
    assert exp.grad_accum["full"] == 8 and exp.schedule == "cosine" and exp.warmup_steps["full"] > 0


def test_the_rank_ablation_varies_rank_and_optimizer_only():
    exp = experiments.get_experiment("seed-qwen2.5-rank-ablation")
    base = load_recipe(exp.recipe_path)
    arms = [variants.derive(base, v) for v in exp.variants]
    assert sorted({a.lora.r for a in arms}) == [4, 8, 16]
    assert {a.training.optimizer for a in arms} == {"paged_adamw_32bit", "paged_adamw_8bit"}
    assert {a.lora.alpha / a.lora.r for a in arms} == {2}
    assert exp.sizes["full"] == ("0.5b", "1.5b", "3b", "7b")


def test_a_recipe_that_is_no_seed_experiment_is_refused_by_name(tmp_path, capsys):
    assert main(["run", str(RECIPES_DIR / "clip.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "clip.yaml is not a seed experiment's" in err and "recipes/seed-clip-few-shot.yaml" in err
    assert list(tmp_path.iterdir()) == []


def test_full_size_without_a_gpu_is_refused(tmp_path, capsys):
    from harness.util import env

    if env.has_cuda():
        pytest.skip("this checks the refusal on a machine without a CUDA GPU")
    recipe = RECIPES_DIR / "seed-clip-static-dynamic.yaml"
    assert main(["run", str(recipe), "--size", "full", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_estimated_weights_equal_the_loaded_model_s_inventory(qlora):
    # the estimate counts a meta-device model by the recipe's rules; the loaded 4-bit model is the truth
    case = qlora.case
    if case.recipe.literal:
        pytest.skip("a literal recipe's 16-bit modules are the library's choice, known once built: the estimate "
                    "models the shorthand sections")
    counts = estimate.meta_counts(case.family, case.size, case.recipe)
    loaded = memory.inventory_bytes(qlora.model.get_base_model(), case.recipe.quantization.double_quant)
    assert counts["weights_bytes"] == loaded["total"]
    assert counts["trainable_params"] == qlora.expected_trainable


def test_the_estimate_grows_with_batch_and_shrinks_with_checkpointing():
    exp = experiments.get_experiment("seed-qwen2-vl-grounding")
    recipe = load_recipe(exp.recipe_path)
    from harness.families import get_family

    family = get_family(recipe.family)
    image = family.tiny_image_size  # the tiny model's own images: the recipe's 448 px would dwarf its language model
    one, two = (estimate.from_meta(family, "tiny", recipe, n, 128, image_size=image) for n in (1, 2))
    no_gc = estimate.from_meta(family, "tiny", recipe.replace(training={"gradient_checkpointing": False}), 2, 128,
                               image_size=image)
    assert two.backward_peak_bytes == 2 * one.backward_peak_bytes
    assert two.weights_bytes == one.weights_bytes and two.optimizer_bytes == one.optimizer_bytes
    assert no_gc.backward_peak_bytes > two.backward_peak_bytes
    eight_bit = estimate.from_meta(family, "tiny", recipe.replace(training={"optimizer": "paged_adamw_8bit"}), 2, 128)
    assert eight_bit.optimizer_bytes * 4 == two.optimizer_bytes


def test_an_unknown_optimizer_in_the_estimate_is_named():
    recipe = load_recipe(RECIPES_DIR / "seed-qwen2.5-rank-ablation.yaml").replace(training={"optimizer": "sgd"})
    from harness.families import get_family

    with pytest.raises(HarnessError, match="unknown optimizer .memory estimate. 'sgd'"):
        estimate.from_meta(get_family("qwen2.5"), "tiny", recipe, 1, 64)

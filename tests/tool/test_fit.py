"""`qlora-harness fit`: the peak by part and batch size on a card, from the config alone; card names wherever a
memory size is accepted; the held-out estimates committed before the GPU measured them."""
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.families import FAMILIES, get_family
from harness.measure import estimate, fit, held_out, layout
from harness.measure.matrix import GPU_MATRIX
from harness.recipe import default_recipe
from harness.report import build as report
from harness.report import estimates
from harness.util.cards import CARDS
from harness.util.errors import HarnessError
from harness.util.resources import data_path
from harness.util.units import GiB, parse_bytes


@pytest.fixture(scope="module")
def t4_plan():
    return fit.plan(default_recipe("qwen2.5-vl"), "T4")


def test_fit_prints_every_part_and_a_verdict_per_batch_size(capsys):
    assert main(["fit", "harness/data/recipes/qwen2.5-vl.yaml", "--gpu", "T4", "--batch-size", "1", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    for part in fit.PARTS + ("peak + fixed overhead", "largest batch size that fits"):
        assert part in out, part
    assert "bs1" in out and "bs32" in out and "fits" in out and " no" in out


def test_the_largest_fitting_batch_fits_and_the_next_does_not(t4_plan):
    p = t4_plan
    n = p.largest_fitting
    assert n >= 1
    extra = fit.plan(default_recipe("qwen2.5-vl"), "T4", batch_sizes=[n, n + 1])
    assert extra.verdict(extra.estimates[n]) == "fits" and extra.verdict(extra.estimates[n + 1]) != "fits"


def test_parts_add_up_to_the_peak(t4_plan):
    for e in t4_plan.estimates.values():
        live = e.weights_bytes + e.adapters_bytes + e.optimizer_bytes + e.inputs_bytes
        assert e.total_bytes == live + max(e.activations_bytes + e.logits_bytes, e.gradients_bytes
                                           + e.optimizer_step_bytes)


def test_json_names_the_card_and_each_batch_size(capsys):
    assert main(["fit", "harness/data/recipes/qwen2.5.yaml", "--gpu", "16GiB", "--size", "0.5b", "--seq-len", "256",
                 "--batch-size", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["card_bytes"] == 16 * GiB and data["tokens_per_sample"] > 200
    assert data["batch_sizes"]["2"]["verdict"] == "fits" and data["largest_fitting_batch_size"] >= 2


def test_a_longer_image_costs_more_and_a_card_too_small_fits_nothing(capsys):
    small = fit.plan(default_recipe("qwen2-vl"), "H200", size="2b", image_size=224, batch_sizes=[2])
    large = fit.plan(default_recipe("qwen2-vl"), "H200", size="2b", image_size=896, seq_len=1200, batch_sizes=[2])
    assert large.estimates[2].total_bytes > small.estimates[2].total_bytes
    assert main(["fit", "harness/data/recipes/qwen2.5-vl.yaml", "--gpu", "4GiB"]) == 1
    assert "no batch size fits" in capsys.readouterr().out


def test_fit_reads_a_checkpoint_config_without_loading_weights():
    folder = data_path("checkpoints", "qwen2.5-vl-shapes")
    p = fit.plan(default_recipe("qwen2.5-vl"), "T4", checkpoint=folder, image_size=56, seq_len=96, batch_sizes=[1])
    assert p.size == "qwen2.5-vl-shapes" and p.tokens_per_sample > 0
    assert p.estimates[1].weights_bytes < 2**24  # the tiny checkpoint's config, not the 7B's


def test_card_names_are_memory_sizes_and_an_unknown_one_is_refused_by_name():
    assert parse_bytes("T4") == CARDS["T4"].total_bytes == 15360 * 2**20
    assert parse_bytes("rtx4090") == parse_bytes("RTX 4090") == CARDS["RTX 4090"].total_bytes
    assert fit.card_memory("a100-80gb") == ("A100-80GB", 81920 * 2**20)
    with pytest.raises(HarnessError, match="did you mean A10G"):
        fit.card_memory("A10")
    with pytest.raises(HarnessError, match="T4"):
        parse_bytes("T5")


def test_a_recipe_budget_may_name_a_card():
    from harness.measure.profile import step_budget

    recipe = default_recipe("qwen2.5-vl").replace(training={"gpu_budget": "A10G"})
    assert step_budget(recipe, None) == CARDS["A10G"].total_bytes


def test_held_out_estimates_are_committed_for_configurations_the_records_do_not_hold():
    committed = held_out.read_estimates()
    results = Path(held_out.ROOT) / "results"
    # the held-out measurements (results/held-out/<gpu>/) are these configurations' own records: the matrix's are not
    records = {p.stem for p in results.rglob("*.json") if "held-out" not in p.relative_to(results).parts}
    assert len(committed) >= 12 and set(committed) == {c.case().id for c in held_out.CONFIGS}
    assert not set(committed) & records
    data = json.loads(held_out.ESTIMATES_PATH.read_text())
    assert len(data["estimate_code"]["sha256"]) == 64 and data["estimate_code"]["commit"]


# ---- every family: fit on a laptop, the vision tokens the tower encodes, the estimate against its records -------

H200 = Path(held_out.ROOT) / "results" / "nvidia-h200-140gib-cuda13.0"
RECORDED = sorted({family for family, _size, _batches in GPU_MATRIX})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fit_answers_for_every_family_from_its_config(name):
    family = get_family(name)
    if family.unavailable():
        pytest.skip(family.unavailable())
    size = (family.gpu_sizes or family.size_names())[0]
    p = fit.plan(default_recipe(name), "T4", size=size, batch_sizes=[1, 2])
    one, two = p.estimates[1], p.estimates[2]
    assert p.tokens_per_sample > 0 and one.weights_bytes > 0 and one.activations_bytes + one.logits_bytes > 0
    assert two.total_bytes > one.total_bytes  # a second sample costs its activations and inputs
    if family.has_images:
        assert two.inputs_bytes - one.inputs_bytes > 3 * 64 * 64  # the second sample's pixel values at least


def _family_rows(name: str) -> list[dict]:
    experiments, profiles = report.load_results([H200])
    ours = [r for r in profiles if r.get("recipe", {}).get("family") == name]
    return estimates.rows([], ours, report.record_estimates, report.label)


@pytest.mark.parametrize("name", RECORDED)
def test_the_estimate_is_within_10_percent_of_each_familys_records(name):
    if get_family(name).unavailable():  # today's estimate needs the family's processor: SmolVLM's under 4.57
        pytest.skip(get_family(name).unavailable())
    rows = _family_rows(name)
    assert rows, f"no training-mode rows of {name} in {H200}"
    misses = [(r["source"], r["batch_size"], f"{r['error']:+.1%}") for r in rows
              if not estimate.agrees(r["measured_bytes"], r["estimated_bytes"])]
    assert not misses, misses


def test_a_family_this_transformers_cannot_build_keeps_its_stored_estimates_in_the_report(monkeypatch):
    # SmolVLM under transformers 4.57: its processor needs torchvision, so the layout cannot be built here
    def no_processor(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'torchvision'")

    monkeypatch.setattr(layout, "processor_for", no_processor)
    monkeypatch.setattr(type(get_family("smolvlm")), "unavailable",
                        lambda self, *a, **k: "needs torchvision" if self.name == "smolvlm" else None)
    report._meta_cache.clear()
    _, profiles = report.load_results([H200])
    smolvlm = [r for r in profiles if r.get("recipe", {}).get("family") == "smolvlm"]

    assert smolvlm and all(report.record_estimates(r) == r.get("estimates", {}) for r in smolvlm)


def test_an_estimate_blind_to_the_vision_tower_misses_the_records(monkeypatch):
    # the broken case: the vision tower's tokens ignored (no tower activations, no tower outputs)
    monkeypatch.setattr(layout.Layout, "vision_tokens", property(lambda self: 0))
    report._meta_cache.clear()
    misses = [r for r in _family_rows("mllama") if not estimate.agrees(r["measured_bytes"], r["estimated_bytes"])]
    assert misses and all(r["error"] < -0.10 for r in misses)


def test_an_estimate_that_checkpoints_every_stack_misses_mllamas_records(monkeypatch):
    # the broken case: Mllama's vision layers taken for checkpointing layers (they are plain modules: every
    # layer's activations stay whatever the recipe)
    monkeypatch.setattr(estimate, "checkpointable_roles", lambda model, family: None)
    report._meta_cache.clear()
    try:
        rows = _family_rows("mllama")
    finally:
        report._meta_cache.clear()
    assert rows and all(not estimate.agrees(r["measured_bytes"], r["estimated_bytes"]) for r in rows)

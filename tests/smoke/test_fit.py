"""`qlora-harness fit`: the peak by part and batch size on a card, from the config alone; card names wherever a
memory size is accepted; the held-out estimates committed before the GPU measured them."""
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.measure import fit, held_out
from harness.recipe import default_recipe
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
    records = {p.stem for p in (Path(held_out.ROOT) / "results").rglob("*.json")}
    assert len(committed) >= 12 and set(committed) == {c.case().id for c in held_out.CONFIGS}
    assert not set(committed) & records
    data = json.loads(held_out.ESTIMATES_PATH.read_text())
    assert len(data["estimate_code"]["sha256"]) == 64 and data["estimate_code"]["commit"]

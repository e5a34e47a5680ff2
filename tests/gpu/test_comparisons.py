"""One workload, its variants side by side in one run: what quantization, checkpointing and their traps cost.

The claims are the physics of each change, checked against figures computed from the model's own module
inventory where one exists: 4-bit cuts static memory to the NF4 minimum; checkpointing trades activations
for recompute, but only in training mode; a 16-bit vision tower costs its 16-bit bytes; peft's k-bit
preparation costs two bytes per non-quantized parameter.
"""
from pathlib import Path

import pytest

from harness.checks.checkpointing import Checkpointing
from harness.measure.matrix import SIDE_BY_SIDE
from harness.measure.variants import VARIANTS
from harness.recipe import default_recipe
from harness.report import table
from harness.util import env

GiB = 2**30
RESULTS = Path(__file__).resolve().parents[2] / "results"


def _f(comparison, name):
    if name not in comparison:
        pytest.skip(f"this comparison has no {name} variant")
    return comparison[name].figures


def _last_ok(*figure_sets) -> int:
    sizes = [n for n in table.batch_sizes(figure_sets[0]) if all(f.get(f"status_bs{n}") == "ok" for f in figure_sets)]
    assert sizes, "no batch size ran in every variant compared"
    return sizes[-1]


def test_every_variant_keeps_its_recipe_and_only_lora_trains(comparison):
    for name, p in comparison.items():
        if not p.case.recipe.training.prepare_for_kbit_training:  # its fp32 upcast is checked below
            assert p.violations == [], name
        assert p.trainable_params == p.expected_trainable_params > 0, name


def test_static_memory_of_each_variant_is_its_inventory_minimum(comparison):
    for name, p in comparison.items():
        loaded, minimum = p.figures["loaded_allocated_bytes"], p.figures["minimum_bytes"]
        print(f"{p.case.id}: loaded {loaded / GiB:.2f} GiB, minimum {minimum / GiB:.2f} GiB")
        assert minimum * 0.99 < loaded < minimum * 1.02 + 128 * 2**20, name


def test_4bit_cuts_static_memory(comparison):
    bf16, qlora = _f(comparison, "bf16-lora"), _f(comparison, "qlora")
    print(f"static: bf16 LoRA {bf16['static_allocated_bytes'] / GiB:.2f} GiB, "
          f"QLoRA {qlora['static_allocated_bytes'] / GiB:.2f} GiB")
    assert qlora["minimum_bytes"] < bf16["minimum_bytes"]
    assert qlora["static_allocated_bytes"] < bf16["static_allocated_bytes"]


def test_checkpointing_trades_activations_for_recompute(comparison):
    plain, gc = _f(comparison, "qlora"), _f(comparison, "qlora-gc")
    n = _last_ok(plain, gc)
    print(f"activations at batch {n}: QLoRA {plain[f'activations_bs{n}_bytes'] / GiB:.2f} GiB, "
          f"QLoRA + GC {gc[f'activations_bs{n}_bytes'] / GiB:.2f} GiB")
    assert gc[f"checkpointed_calls_bs{n}"] > 0 and plain[f"checkpointed_calls_bs{n}"] == 0
    assert gc[f"activations_bs{n}_bytes"] < 0.5 * plain[f"activations_bs{n}_bytes"]
    assert gc[f"peak_allocated_bs{n}_bytes"] < plain[f"peak_allocated_bs{n}_bytes"]


def test_checkpointing_does_nothing_in_eval_mode(comparison):
    gc, trap = _f(comparison, "qlora-gc"), _f(comparison, "qlora-gc-eval")
    n = _last_ok(gc, trap)
    print(f"peak at batch {n}: QLoRA + GC {gc[f'peak_allocated_bs{n}_bytes'] / GiB:.2f} GiB, "
          f"left in eval mode {trap[f'peak_allocated_bs{n}_bytes'] / GiB:.2f} GiB")
    trapped = Checkpointing(trap["checkpointing_layers"], trap[f"checkpointed_calls_bs{n}"])
    assert trapped.enabled_layers > 0 and "eval mode" in trapped.problem(wanted=True)
    assert trap[f"activations_bs{n}_bytes"] > 2 * gc[f"activations_bs{n}_bytes"]


def test_a_16bit_vision_tower_costs_its_16bit_bytes(comparison):
    gc, v16 = _f(comparison, "qlora-gc"), _f(comparison, "qlora-gc-vision16")
    measured = v16["static_allocated_bytes"] - gc["static_allocated_bytes"]
    predicted = v16["minimum_bytes"] - gc["minimum_bytes"]
    n = _last_ok(gc, v16)
    print(f"vision tower + projector 16-bit: static +{measured / GiB:.2f} GiB (inventory +{predicted / GiB:.2f}), "
          f"peak at batch {n} {gc[f'peak_allocated_bs{n}_bytes'] / GiB:.2f} -> {v16[f'peak_allocated_bs{n}_bytes'] / GiB:.2f} GiB")
    assert predicted > 0
    assert abs(measured - predicted) < 0.05 * predicted + 64 * 2**20


def test_kbit_preparation_upcasts_every_16bit_weight_to_fp32(comparison):
    gc, prep = _f(comparison, "qlora-gc"), _f(comparison, "qlora-gc-kbit-prep")
    measured = prep["static_allocated_bytes"] - gc["static_allocated_bytes"]
    predicted = prep["fp32_upcast_bytes"]
    n = _last_ok(gc, prep)
    peak = prep[f"peak_allocated_bs{n}_bytes"] - gc[f"peak_allocated_bs{n}_bytes"]
    print(f"prepare_model_for_kbit_training: static +{measured / GiB:.2f} GiB (predicted +{predicted / GiB:.2f}), "
          f"peak at batch {n} +{peak / GiB:.2f} GiB")
    assert abs(measured - predicted) < 0.05 * predicted + 64 * 2**20
    assert peak >= measured * 0.95
    # the audit sees it too: 16-bit Linear layers (the head) are float32 now, and nothing else is wrong
    violations = comparison["qlora-gc-kbit-prep"].violations
    assert violations and all("float32" in v for v in violations)


def test_comparison_matches_the_stored_baselines(comparison, baseline_problems):
    problems = [msg for p in comparison.values() for msg in baseline_problems(p.record())]
    assert problems == []


def _write_table(pytestconfig, name: str, title: str, rows, recipe) -> str:
    from harness.util.atomic import write_text

    text = (f"# {title}\n\nGPU {env.gpu_fingerprint()}; {table.versions_line(rows[0][1])}; "
            f"image {recipe.training.image_size}px, sequence {recipe.training.seq_len} tokens, LoRA r={recipe.lora.r}. "
            "Each step is measured after one warm-up step (first step s: warm-up, including any compilation).\n\n"
            + table.comparison_table(rows))
    path = Path(pytestconfig.getoption("--results-dir") or RESULTS) / env.gpu_fingerprint() / name
    write_text(path, text)
    print(text)
    return path.read_text()


def test_comparison_table_is_written(comparison, pytestconfig):
    first = next(iter(comparison.values()))
    family, size = first.case.family.name, first.case.size
    rows = [(VARIANTS[name].label, p.record()) for name, p in comparison.items()]
    text = _write_table(pytestconfig, f"comparison-{family}-{size}.md",
                        f"{family} {size}: variants compared on one workload", rows, first.case.recipe)
    assert all(f"| {label} |" in text for label, _ in rows)


@pytest.mark.unsloth
def test_side_by_side_with_unsloth(comparison_records, unsloth_profile_of, pytestconfig):
    # Not on the comparison fixture: it waits for the Unsloth children, so it runs with their tests, last, and reads
    # the comparison's records from the worker that profiled them.
    family, size, names = SIDE_BY_SIDE
    unsloth = unsloth_profile_of(family, size)
    assert "error" not in unsloth, unsloth["error"]
    records = comparison_records(family, size)
    rows = [(VARIANTS[n].label, records[n]) for n in names] + [(VARIANTS["unsloth"].label, unsloth)]
    text = _write_table(pytestconfig, f"side-by-side-{family}-{size}.md",
                        f"{family} {size}: bf16 LoRA, QLoRA (peft), QLoRA + GC, Unsloth", rows,
                        default_recipe(family))
    assert all(f"| {label} |" in text for label, _ in rows)

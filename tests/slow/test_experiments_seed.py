"""The five seed experiments at tiny size on CPU, as `qlora-harness run` runs them: every arm runs, audits clean,
counts its LoRA exactly, trains, and records what CPU can measure while naming each GPU-only figure as absent.
Then `qlora-harness report` turns the results into tables and plots. (About 2-3 minutes on 2 cores.)"""
import json

import pytest

from harness.cli import main
from harness.tasks import experiments
from harness.tasks.run import NO_GPU

SEEDS = list(experiments.EXPERIMENTS)


@pytest.fixture(scope="module")
def results(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("seed")
    codes = {}
    for name in SEEDS:
        exp = experiments.get_experiment(name)
        codes[name] = main(["run", str(exp.recipe_path), "--size", "tiny", "--out", str(out),
                            "--cache-dir", str(cache_dir)])
    return out, codes, {name: json.loads((out / f"{name}.json").read_text()) for name in SEEDS}


def _arms(results, name):
    return {r["variant"]: r for r in results[2][name]["records"]}


@pytest.mark.parametrize("name", SEEDS)
def test_every_arm_runs_audits_clean_and_trains_only_its_lora(results, name):
    _, codes, data = results
    result = data[name]
    assert codes[name] == 0 and result["complete"] and result["device"] == "cpu"
    for r in result["records"]:
        if r["backend"] == "unsloth":
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
            continue
        assert r["status"] == "ok", r.get("error")
        assert r["violations"] == []
        assert r["trainable_params"] == r["expected_trainable_params"] > 0
        assert 0 < r["trainable_percent"] < 100
        steps = result["settings"]["steps"]
        assert len(r["losses"]) == steps and all(loss > 0 for loss in r["losses"])


@pytest.mark.parametrize("name", SEEDS)
def test_cpu_records_measure_time_and_host_memory_and_name_vram_absent(results, name):
    result = results[2][name]
    for r in (r for r in result["records"] if r["status"] == "ok"):
        for n in result["settings"]["batch_sizes"]:
            f = r["figures"]
            assert f[f"status_bs{n}"] == "ok" and f[f"step_time_bs{n}_ms"] > 0 and f[f"host_rss_bs{n}_bytes"] > 0
            assert f"peak_allocated_bs{n}_bytes" not in f and r["absent"][f"peak_allocated_bs{n}_bytes"] == NO_GPU
            e = r["estimates"][str(n)]
            # the peak: what lives through the step plus the larger of the loss's backward and the optimizer step
            live = sum(e[k] for k in ("weights_bytes", "adapters_bytes", "optimizer_bytes", "inputs_bytes"))
            assert e["total_bytes"] == live + max(e["activations_bytes"] + e["logits_bytes"],
                                                  e["gradients_bytes"] + e["optimizer_step_bytes"])


def test_rank_ablation_trainable_params_grow_with_the_rank(results):
    arms = _arms(results, "seed-qwen2.5-rank-ablation")
    r4 = arms["r4-paged_adamw_32bit"]["trainable_params"]
    assert arms["r8-paged_adamw_32bit"]["trainable_params"] == 2 * r4
    assert arms["r16-paged_adamw_32bit"]["trainable_params"] == arms["r16-paged_adamw_8bit"]["trainable_params"] == 4 * r4
    opt32 = arms["r16-paged_adamw_32bit"]["estimates"]["2"]["optimizer_bytes"]
    assert arms["r16-paged_adamw_8bit"]["estimates"]["2"]["optimizer_bytes"] * 4 == opt32


def test_grounding_targets_round_trip_and_the_merge_agrees(results):
    r = _arms(results, "seed-qwen2-vl-grounding")["recipe"]
    box, point, m = r["grounding"]["box"], r["grounding"]["point"], r["merge"]
    assert box["target_round_trip_min_iou"] > 0.95 and box["example_target"].startswith("<|box_start|>(")
    assert point["target_round_trip_max_distance"] < 0.01 and point["example_target"].count(",") == 1
    assert 0 <= box["mean_iou"] <= 1 and 0 <= point["in_box"] <= 1
    for dtype in ("bfloat16", "float32"):
        assert m[dtype]["same_greedy_tokens"] and m[dtype]["max_abs_logit_delta_over_std"] < 0.1, dtype
    assert m["largest_delta_over_weight"] > 0 and m["saved_to"]
    assert r["training"]["grad_accum"] == 2 and r["training"]["schedule"] == "cosine"


def test_feasibility_generates_deterministically_on_an_image(results):
    for variant in ("qlora", "qlora-gc"):
        assert _arms(results, "seed-qwen2.5-vl-feasibility")[variant]["generation"]["deterministic"]


def test_few_shot_reports_accuracy_and_dora_adds_its_magnitudes(results):
    arms = _arms(results, "seed-clip-few-shot")
    for r in arms.values():
        assert 0 <= r["few_shot"]["zero_shot_accuracy"] <= 1 and 0 <= r["few_shot"]["few_shot_accuracy"] <= 1
    assert arms["qlora-dora"]["trainable_params"] > arms["recipe"]["trainable_params"] == arms["lora-16bit"]["trainable_params"]


def test_the_report_of_the_tiny_runs_has_every_arm(results, tmp_path):
    out, _, data = results
    assert main(["report", str(out), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for result in data.values():
        assert f"## {result['title']}" in text
        assert all(f"| {r['label']} | tiny |" in text for r in result["records"])
    assert (tmp_path / "seed-qwen2.5-rank-ablation-rank-time.png").is_file()

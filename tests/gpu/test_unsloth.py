"""The Unsloth backend under the same audits as peft, each case in its own process (`-m unsloth`)."""
import pytest

from harness.measure.matrix import UNSLOTH_CASES

pytestmark = pytest.mark.unsloth


@pytest.fixture(scope="module", params=UNSLOTH_CASES, ids=[f"{f}-{s}--unsloth" for f, s, _ in UNSLOTH_CASES])
def record(request, unsloth_profile_of):
    family, size, _ = request.param
    rec = unsloth_profile_of(family, size)
    assert "error" not in rec, f"Unsloth run failed:\n{rec['error']}\n{rec.get('log_tail', '')}"
    return rec


def test_unsloth_keeps_the_recipe_and_only_lora_trains(record):
    assert record["violations"] == []
    assert record["trainable_params"] == record["expected_trainable_params"] > 0


def test_every_unsloth_lora_parameter_gets_a_gradient(record):
    assert record["without_gradient"] == []


def test_unsloth_generation_is_deterministic(record):
    assert record["generation"]["deterministic"]
    assert all(len(row) == 8 for row in record["generation"]["tokens"])


def test_unsloth_steps_run_with_compile_time_reported_apart(record):
    for step in record["steps"]:
        assert step["status"] == "ok", step["error"]
        assert step["warmup_time_ms"] > 0 and step["step_time_ms"] > 0
        print(f"{record['case']} batch {step['batch_size']}: first step (compile) {step['warmup_time_ms'] / 1000:.1f} s, "
              f"step {step['step_time_ms']:.0f} ms, peak {step['peak_allocated_bytes'] / 2**30:.2f} GiB, "
              f"host RSS {step['host_rss_bytes'] / 2**30:.2f} GiB")
    times = {k.removesuffix("_time_s"): v for k, v in record["figures"].items() if k.endswith("_time_s")}
    print(f"{record['case']} seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


def test_unsloth_memory_matches_the_stored_baseline(record, baseline_problems):
    stored = {k: record[k] for k in ("case", "gpu", "versions", "workers", "recipe", "figures", "steps")}
    assert baseline_problems(stored) == []

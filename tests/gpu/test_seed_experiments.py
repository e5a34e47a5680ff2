"""The seed experiments at full size on a CUDA GPU, through pytest: the runs `qlora-harness run` makes, saved under
--results-dir/<gpu>/seed when given. Minutes each (Qwen2.5-VL-7B feasibility about 5), so they carry the seed marker:
`pytest -m seed -k clip`. Every arm must run, audit clean, count its LoRA exactly, and land near its memory estimate.
"""
import json
from pathlib import Path

import pytest

from harness.measure import estimate
from harness.tasks import experiments
from harness.tasks.run import run_experiment
from harness.util import env

pytestmark = pytest.mark.seed


@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_a_seed_experiment_runs_at_full_size(name, cuda, cache_dir, pytestconfig, tmp_path):
    chosen = pytestconfig.getoption("--results-dir")
    out = (tmp_path if chosen is None else Path(chosen) / env.gpu_fingerprint()) / "seed"
    result = json.loads(run_experiment(experiments.get_experiment(name), "full", out, cache_dir).read_text())

    assert result["complete"] and result["device"] == "cuda"
    for r in result["records"]:
        if r["status"] == "skipped":
            assert r["backend"] == "unsloth" and r["reason"], r
            continue
        assert r["status"] == "ok", r.get("error")
        assert r["violations"] == [] and r["trainable_params"] == r["expected_trainable_params"] > 0
        f = r["figures"]
        assert f["static_allocated_bytes"] > 0
        for n in result["settings"]["batch_sizes"]:
            assert f[f"status_bs{n}"] in ("ok", "oom"), (r["case"], n)
            if f[f"status_bs{n}"] != "ok" or r["backend"] != "peft":
                continue
            measured, estimated = f[f"peak_allocated_bs{n}_bytes"], r["estimates"][str(n)]["total_bytes"]
            assert estimate.agrees(measured, estimated), (r["case"], n, measured, estimated)  # DoRA included

"""The estimate's honest test on the GPU: configurations not in the records, their estimates committed beforehand
(results/held-out/estimates.json), measured here; each record is written before it is judged, so the report shows
misses too.

    pytest -m gpu tests/gpu/test_held_out.py            # records under results/held-out/<gpu>/
    qlora-harness report results/nvidia-h200-140gib-cuda13.0 results/held-out --out report
"""
from __future__ import annotations

import pytest

from harness.measure import baselines, estimate, held_out
from harness.util import env

pytestmark = pytest.mark.gpu

COMMITTED = held_out.read_estimates()


@pytest.mark.parametrize("config", held_out.CONFIGS, ids=[c.name for c in held_out.CONFIGS])
def test_a_held_out_configuration_lands_within_the_agreement_of_its_committed_estimate(config, cuda, cache_dir,
                                                                                      pytestconfig):
    from harness.measure import probe
    from harness.measure.profile import profile_case

    case = config.case()
    committed = COMMITTED.get(case.id)
    assert committed, f"no committed estimate for {case.id}: run python -m harness.measure.held_out and commit it"
    profile = profile_case(case, [config.batch_size], cache_dir)
    record = {**profile.record(), "held_out": config.name, "label": f"held out: {config.name}",
              "committed_estimate": committed}
    root = pytestconfig.getoption("--results-dir") or held_out.ESTIMATES_PATH.parent
    baselines.write_baseline(baselines.baseline_path(root, env.gpu_fingerprint(), case.id), record)
    probe.release()
    n = config.batch_size
    assert profile.figures[f"status_bs{n}"] == "ok", f"{case.id}: batch {n} did not run ({profile.figures})"
    measured = profile.figures[f"peak_allocated_bs{n}_bytes"]
    estimated = committed["estimate"]["total_bytes"]
    assert estimate.agrees(measured, estimated), (
        f"{case.id} at batch {n}: estimated {estimated / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB "
        f"({estimated / measured - 1:+.1%}); expected within {estimate.AGREEMENT:.0%}")

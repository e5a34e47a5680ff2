"""The GPU tier: `pytest -m gpu` (add --update-baselines on a new GPU, --gpu-budget 24GiB to emulate a smaller card).

Full-size synthetic checkpoints are built on the GPU, loaded in 4-bit through from_pretrained, and
profiled once per case: static VRAM, training steps at three batch sizes, OOM recorded rather than fatal.
One full-size model is held at a time per process; it is freed before the next case loads.

Several processes may share one GPU (`pytest -m gpu -n 6`, as .ci/gpu-run does): memory figures are per process
and relative to what the process held before the load, so each case measures the same as in a serial run. Each
case's tests form one xdist group (its profile is computed once, in one worker); checkpoints are built once per
cache and evicted, least recently used first, when the disk needs room (harness.model.disk).
"""
from __future__ import annotations

import time

import pytest

from harness.measure import baselines, probe, variants
from harness.measure.matrix import COMPARISONS, GPU_MATRIX, UNSLOTH_CASES
from harness.model import disk, pipeline
from harness.plugin import phases, shared
from harness.recipe import default_recipe
from harness.util import env
from harness.util.units import parse_bytes


def xdist_group_of(item) -> str | None:
    """Return the group whose tests must share a worker: one case's profile, one comparison, one Unsloth run."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if "gpu_case" in params:
        return f"gpu-{params['gpu_case'][0].id}"
    if "comparison_set" in params:
        family, size = params["comparison_set"][:2]
        return f"comparison-{family}-{size}"
    if "record" in params:  # test_unsloth's module fixture: (family, size, batch sizes)
        family, size = params["record"][:2]
        return f"unsloth-{family}-{size}"
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = xdist_group_of(item) if "gpu" in str(item.fspath) else None
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


def _record_phases(profile) -> None:
    phases.add("loads", profile.figures["load_time_s"])
    phases.add("measured steps", sum((s.step_time_ms or 0) + (s.warmup_time_ms or 0) for s in profile.steps) / 1000)


def gpu_cases():
    """Return pytest params (case, batch sizes) for the GPU matrix; a family this transformers lacks skips, saying why."""
    out = []
    for f, s, sizes in GPU_MATRIX:
        case = pipeline.case(f, s, default_recipe(f))
        why = case.family.unavailable()
        out.append(pytest.param((case, sizes), id=case.id, marks=[pytest.mark.skip(reason=why)] if why else []))
    return out


def pytest_generate_tests(metafunc):
    if "gpu_case" in metafunc.fixturenames:
        metafunc.parametrize("gpu_case", gpu_cases(), scope="session")
    if "comparison_set" in metafunc.fixturenames:
        metafunc.parametrize("comparison_set", COMPARISONS, ids=[f"{f}-{s}" for f, s, _, _ in COMPARISONS],
                             scope="session")


@pytest.fixture(scope="session")
def budget(pytestconfig, cuda):
    text = pytestconfig.getoption("--gpu-budget")
    limit = parse_bytes(text) if text else None
    probe.apply_budget(limit)
    return limit


class _Held:
    """The one full-size case in GPU memory, and its profile."""

    key = None
    profile = None
    checkpoint = None


@pytest.fixture(scope="session")
def gpu_profile(gpu_case, cuda, budget, cache_dir, pytestconfig):
    from harness.measure.profile import profile_case

    case, batch_sizes = gpu_case
    if _Held.key != case.id:
        _Held.profile = None
        probe.release()
        if _Held.checkpoint is not None and pytestconfig.getoption("--evict-checkpoints"):
            disk.try_evict(_Held.checkpoint)  # unless another worker is reading it
        _Held.profile = profile_case(case, batch_sizes, cache_dir, budget=budget)
        _Held.key, _Held.checkpoint = case.id, _Held.profile.checkpoint
        _record_phases(_Held.profile)
    return _Held.profile


@pytest.fixture(scope="session")
def comparison(comparison_set, cuda, budget, cache_dir) -> dict:
    """Every variant of one workload profiled in this run, by variant name (models freed after each)."""
    from harness.measure.profile import profile_case

    family, size, batch_sizes, names = comparison_set
    _Held.profile, _Held.key = None, None
    probe.release()
    base = default_recipe(family)
    profiles = {}
    for name in names:
        variant = variants.get_variant(name)
        case = pipeline.case(family, size, variants.derive(base, variant), variant=name)
        profiles[name] = profile_case(case, batch_sizes, cache_dir, training=variant.training, budget=budget)
        _record_phases(profiles[name])
    return profiles


@pytest.fixture(scope="session")
def baseline_problems(pytestconfig, cuda):
    """Check a measured record against its stored baseline: [] when within tolerance; write it in update mode.

    No baseline for this GPU: the test skips, saying how to create one. Never a silent pass.
    """
    fingerprint = env.gpu_fingerprint()
    root = pytestconfig.getoption("--baselines-dir") or baselines.project_baselines(pytestconfig.rootpath)
    results = pytestconfig.getoption("--results-dir")

    def check(record: dict) -> list[str]:
        path = baselines.baseline_path(root, fingerprint, record["case"])
        if results:
            baselines.write_baseline(baselines.baseline_path(results, fingerprint, record["case"]), record)
        if pytestconfig.getoption("--update-baselines"):
            baselines.write_baseline(path, record)
            return [] if baselines.read_baseline(path)["figures"] == record["figures"] else [f"{path} did not round-trip"]
        stored = baselines.read_baseline(path)
        if stored is None:
            pytest.skip(f"no baseline for {record['case']} on {fingerprint}: create it with "
                        f"pytest -m gpu --update-baselines (writes {path})")
        return baselines.compare(record, stored)

    return check


@pytest.fixture(scope="session")
def unsloth_profile_of(cuda, cache_dir, tmp_path_factory, request):
    """Return a function (family, size) -> the Unsloth record of that case, run once per test run (under xdist the
    workers share it: the side-by-side comparison and the Unsloth tests ask from different workers)."""
    from harness.measure import unsloth_backend

    reason = unsloth_backend.unavailable()
    records = {}
    folder = shared.run_folder(request, cache_dir)

    def compute(family: str, size: str) -> dict:
        sizes = next(b for f, s, b in UNSLOTH_CASES if (f, s) == (family, size))
        case = pipeline.case(family, size, default_recipe(family))
        _Held.profile, _Held.key = None, None
        probe.release()
        out = tmp_path_factory.mktemp("unsloth") / f"{family}-{size}.json"
        with pipeline.reading(case, cache_dir, device="cuda") as checkpoint:  # the child loads it
            start = time.perf_counter()
            record = unsloth_backend.run_isolated(family, size, checkpoint, sizes, out)
            phases.add("unsloth", time.perf_counter() - start)
        return record

    def run(family: str, size: str) -> dict:
        if reason:
            pytest.skip(reason)
        if (family, size) not in records:
            records[(family, size)], _ = shared.once(folder, f"unsloth-{family}-{size}", lambda: compute(family, size))
        return records[(family, size)]

    return run

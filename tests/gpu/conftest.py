"""The GPU tier: `pytest -m gpu` (add --update-baselines on a new GPU, --gpu-budget 24GiB to emulate a smaller card).

Full-size synthetic checkpoints are built on the GPU, loaded in 4-bit through from_pretrained, and
profiled once per case: static VRAM, training steps at three batch sizes, OOM recorded rather than fatal.
One full-size model is held at a time per process; it is freed before the next case loads.

Several processes may share one GPU (`pytest -m gpu -n 6`, as .ci/gpu-run does): memory figures are per process
and relative to what the process held before the load, so each case measures the same as in a serial run.

How a run spends its time: the tests of one checkpoint share a worker and groups go out costliest first
(harness.plugin.schedule; run with --dist loadgroup, as .ci/gpu-run does), each profile is computed once per run
(a second one, in another worker, fails the test, saying so), and the Unsloth children start in the background at
the run's first test (harness.plugin.unsloth_runs): their tests, and the side-by-side table, run last and wait.
Checkpoints are built a few at once per cache and evicted, least recently used first, when the disk needs room
(harness.model.disk).
"""
from __future__ import annotations

import functools
import os

import pytest

from harness.measure import baselines, probe, variants
from harness.measure.matrix import COMPARISONS, GPU_MATRIX
from harness.model import disk, pipeline
from harness.plugin import phases, schedule, shared, unsloth_runs
from harness.recipe import default_recipe
from harness.util import env, jobs
from harness.util.units import parse_bytes


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the run's owner (the xdist controller, or the only process)
        os.environ[jobs.WATCH_ENV] = str(os.getpid())  # background jobs stop when it is gone


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    # Before every other plugin (pytest-xdist reads the xdist_group marks there): each GPU test's group. After
    # them all (pytest's own ordering by fixture parameter included): the groups in schedule order.
    gpu = [i for i in items if "gpu" in str(i.fspath)]
    for item in gpu:
        group = schedule.xdist_group_of(item)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    slots = iter(schedule.longest_first([i for i in items if "gpu" in str(i.fspath)]))
    items[:] = [next(slots) if "gpu" in str(i.fspath) else i for i in items]
    return result


def _record_phases(profile) -> None:
    phases.add("loads", profile.figures["load_time_s"])
    phases.add("measured steps", sum((s.step_time_ms or 0) + (s.warmup_time_ms or 0) for s in profile.steps) / 1000)


@functools.cache
def gpu_cases():
    """Return pytest params (case, batch sizes) for the GPU matrix (built once per process: every test asks)."""
    return [pytest.param((c, sizes), id=c.id)
            for c, sizes in ((pipeline.case(f, s, default_recipe(f)), sizes) for f, s, sizes in GPU_MATRIX)]


def pytest_runtest_setup(item):
    # A family this transformers lacks, or whose classes do not import, skips with the reason: asked here, in the
    # worker that runs the case, not at collection (importing 13 families' classes there cost each worker 10 s).
    params = schedule.params_of(item)
    if "gpu_case" in params:
        why = params["gpu_case"][0].family.unavailable()
        if why:
            pytest.skip(why)


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
def run_folder(request, cache_dir, tmp_path_factory):
    """The folder this run's processes share (records computed once, background jobs): one per test run."""
    return shared.run_folder(request, cache_dir) or tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def gpu_profile(gpu_case, cuda, budget, cache_dir, pytestconfig, run_folder):
    from harness.measure.profile import profile_case

    case, batch_sizes = gpu_case
    if _Held.key != case.id:
        _Held.profile = None
        probe.release()
        if _Held.checkpoint is not None and pytestconfig.getoption("--evict-checkpoints"):
            disk.try_evict(_Held.checkpoint)  # unless another worker is reading it
        shared.once_per_run(run_folder, case.id)
        _Held.profile = profile_case(case, batch_sizes, cache_dir, budget=budget)
        _Held.key, _Held.checkpoint = case.id, _Held.profile.checkpoint
        _record_phases(_Held.profile)
    return _Held.profile


def _profile_variants(family, size, batch_sizes, names, cache_dir, budget) -> dict:
    from harness.measure.profile import profile_case

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


def _records(profiles: dict) -> dict:
    return {name: p.record() for name, p in profiles.items()}


@pytest.fixture(scope="session")
def comparison(comparison_set, cuda, budget, cache_dir, run_folder) -> dict:
    """Every variant of one workload profiled in this run, by variant name (models freed after each); their records
    go to the run's folder for the side-by-side table, which waits for them in another worker."""
    family, size, batch_sizes, names = comparison_set
    profiles = {}

    def compute() -> dict:
        profiles.update(_profile_variants(family, size, batch_sizes, names, cache_dir, budget))
        return _records(profiles)

    shared.once_per_run(run_folder, f"comparison {family}-{size}")
    _, here = shared.once(run_folder, f"comparison-{family}-{size}", compute)
    if not here:  # the side-by-side table profiled it first (run on its own): the tests here need the profiles
        compute()
    return profiles


@pytest.fixture(scope="session")
def comparison_records(cuda, budget, cache_dir, run_folder):
    """Return a function (family, size) -> the records of that comparison's variants, by name: the comparison's own
    worker's, waited for, or profiled here when the run has none."""
    def get(family: str, size: str) -> dict:
        _, _, batch_sizes, names = next(c for c in COMPARISONS if c[:2] == (family, size))
        return shared.once(run_folder, f"comparison-{family}-{size}", lambda: _records(
            _profile_variants(family, size, batch_sizes, names, cache_dir, budget)))[0]

    return get


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


@pytest.fixture(scope="session", autouse=True)
def unsloth_children(request, cache_dir, run_folder):
    """At each worker's first GPU test: the first process of the run starts every Unsloth child the run's tests
    will wait for, in the background (harness.plugin.unsloth_runs)."""
    unsloth_runs.launch([c for c in map(schedule.unsloth_case_of, request.session.items) if c], cache_dir, run_folder)


@pytest.fixture(scope="session")
def unsloth_profile_of(cuda, cache_dir, run_folder):
    """Return a function (family, size) -> the Unsloth record of that case, once per test run: its children, started
    at the run's start, waited for (started here if nothing started them)."""
    from harness.measure import unsloth_backend

    reason = unsloth_backend.unavailable()
    records = {}

    def collect(family: str, size: str) -> dict:
        record, seconds = unsloth_runs.collect(family, size, cache_dir, run_folder)
        phases.add("unsloth", seconds)
        return record

    def run(family: str, size: str) -> dict:
        if reason:
            pytest.skip(reason)
        if (family, size) not in records:
            records[(family, size)], _ = shared.once(run_folder, f"unsloth-{family}-{size}",
                                                     lambda: collect(family, size))
        return records[(family, size)]

    return run

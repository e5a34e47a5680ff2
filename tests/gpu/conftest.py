"""The GPU tier: `pytest -m gpu` (add --update-baselines on a new GPU, --gpu-budget 24GiB to emulate a smaller card).

Full-size synthetic checkpoints are built on the GPU, loaded in 4-bit through from_pretrained, and
profiled once per case: static VRAM, training steps at three batch sizes, OOM recorded rather than fatal.
One full-size model is held at a time per process; it is freed before the next case loads.

Several processes may share one GPU (`pytest -m gpu -n 6`, as .ci/gpu-run does): memory figures are per process
and relative to what the process held before the load, so each case measures the same as in a serial run.

How a run spends its time (the GPU has room for several cases at once; the checkpoints are what is slow):
- The tests of one checkpoint (its matrix case, its comparison variants, its held-out configurations) form one
  xdist group (run with --dist loadgroup, as .ci/gpu-run does): the checkpoint is built and read in one worker,
  and each profile is computed once per run (a second one, in another worker, fails the test, saying so).
- Groups run longest first (their parameter count times their profiles), so no big group starts last.
- The Unsloth children start in the background at the run's first test (harness.util.jobs), each case's
  checkpoint built and held for them first; their tests, and the side-by-side table that needs them, run last
  and only wait for the records.
Checkpoints are built once per cache and evicted, least recently used first, when the disk needs room
(harness.model.disk).
"""
from __future__ import annotations

import functools
import json
import os
import time

import pytest

from harness.families import get_family
from harness.measure import baselines, probe, variants
from harness.measure.matrix import COMPARISONS, GPU_MATRIX, SIDE_BY_SIDE, UNSLOTH_CASES
from harness.model import disk, pipeline
from harness.plugin import phases, shared
from harness.recipe import default_recipe
from harness.util import env, jobs
from harness.util.units import parse_bytes


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the run's owner (the xdist controller, or the only process)
        os.environ[jobs.WATCH_ENV] = str(os.getpid())  # background jobs stop when it is gone


def _params(item) -> dict:
    return item.callspec.params if hasattr(item, "callspec") else {}


def unsloth_case_of(item) -> tuple[str, str] | None:
    """Return the (family, size) whose Unsloth record a test waits for, or None."""
    if not item.get_closest_marker("unsloth"):
        return None
    params = _params(item)
    return tuple(params["record"][:2]) if "record" in params else SIDE_BY_SIDE[:2]


def work_of(item) -> tuple[str, str, float] | None:
    """Return (xdist group, profile, cost) of a GPU test: its checkpoint's group, the profile it needs and that
    profile's cost (the checkpoint's published parameter count per profile); None for a test outside the groups."""
    params = _params(item)
    waits_for = unsloth_case_of(item)
    if waits_for:
        return f"unsloth-{waits_for[0]}-{waits_for[1]}", "unsloth", 0.0
    if "gpu_case" in params:
        case = params["gpu_case"][0]
        family, size, profile, count = case.family.name, case.size, case.id, 1
    elif "comparison_set" in params:
        family, size, _, names = params["comparison_set"]
        profile, count = f"comparison-{family}-{size}", len(names)
    elif "config" in params and hasattr(params["config"], "case"):  # a held-out configuration
        family, size, profile, count = params["config"].family, params["config"].size, params["config"].name, 1
    elif item.get_closest_marker("checkpoint"):  # a test that builds its own case: @pytest.mark.checkpoint(f, s)
        (family, size), profile, count = item.get_closest_marker("checkpoint").args, item.nodeid, 1
    else:
        return None
    return f"checkpoint-{family}-{size}", profile, count * get_family(family).published_params[size]


def xdist_group_of(item) -> str | None:
    """Return the group whose tests must share a worker: one checkpoint's profiles, or one Unsloth case's waiters."""
    work = work_of(item)
    return work[0] if work else None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = xdist_group_of(item) if "gpu" in str(item.fspath) else None
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(wrapper=True, specname="pytest_collection_modifyitems")  # after every other plugin's ordering
def pytest_order_longest_first(config, items):  # (pytest's own, by fixture parameter, included)
    result = yield
    ordered = longest_first([i for i in items if "gpu" in str(i.fspath)])
    slots = iter(ordered)
    items[:] = [next(slots) if "gpu" in str(i.fspath) else i for i in items]
    return result


def longest_first(items: list) -> list:
    """Return GPU tests in group order, the costliest group first and the Unsloth waiters last; within a group its
    tests by profile, each profile's tests together and in their order, the waiting ones at the end."""
    cost: dict[str, dict[str, float]] = {}
    for item in items:
        work = work_of(item)
        if work:
            cost.setdefault(work[0], {})[work[1]] = work[2]
    total = {group: sum(profiles.values()) for group, profiles in cost.items()}
    first_seen = {}
    for index, item in enumerate(items):
        work = work_of(item)
        first_seen.setdefault((work[0], work[1]) if work else item.nodeid, index)

    def key(pair):
        index, item = pair
        work = work_of(item)
        if work is None:  # no group: after the groups, before the waiters
            return (1, 0.0, "", index, index)
        waiting = unsloth_case_of(item) is not None
        return (2 if waiting else 0, -total[work[0]], work[0], first_seen[(work[0], work[1])], index)

    return [item for _, item in sorted(enumerate(items), key=key)]


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
    if "gpu_case" in _params(item):
        why = _params(item)["gpu_case"][0].family.unavailable()
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


LAUNCH = "unsloth-launch"  # claimed in the run folder by the process that starts the run's Unsloth children


def _launched(run_folder, family: str, size: str):
    return run_folder / f"unsloth-{family}-{size}.launched.json"


_HELD = []  # locks on the Unsloth cases' checkpoints, kept by the process that built them until it exits


@pytest.fixture(scope="session", autouse=True)
def unsloth_children(request, cache_dir, run_folder):
    """At each worker's first GPU test: the first process of the run starts every Unsloth child the run's tests
    will wait for, in the background, before their checkpoints exist (the children import Unsloth meanwhile), then
    builds those checkpoints, the biggest first, and holds them until it exits (the benchmarks read the biggest)."""
    from harness.measure import unsloth_backend
    from harness.model import synth
    from harness.util.atomic import write_json

    wanted = sorted({c for c in map(unsloth_case_of, request.session.items) if c},
                    key=lambda c: -get_family(c[0]).published_params[c[1]])
    if not wanted or unsloth_backend.unavailable() or not shared.claim(run_folder, LAUNCH)[0]:
        return
    started = {}
    for family, size in wanted:
        sizes = next(b for f, s, b in UNSLOTH_CASES if (f, s) == (family, size))
        folder = synth.checkpoint_folder(get_family(family), size, cache_dir)
        try:
            stems = unsloth_backend.start(family, size, folder, sizes, run_folder, built=False)
        except Exception as e:  # noqa: BLE001 - the waiting tests report it
            write_json(_launched(run_folder, family, size), {"error": f"{type(e).__name__}: {e}"})
            continue
        started[(family, size)] = stems
        write_json(_launched(run_folder, family, size), {"stems": {k: str(v) for k, v in stems.items()},
                                                          "started": time.time()})
    for (family, size), stems in started.items():
        try:
            with pipeline.reading(pipeline.case(family, size, default_recipe(family)), cache_dir, device="cuda") as f:
                _HELD.append(disk.hold(f))  # from its build until the children hold it themselves, and after
        except Exception as e:  # noqa: BLE001 - the children stop waiting and report it
            for stem in stems.values():
                unsloth_backend.abort_file(stem).write_text(f"{type(e).__name__}: {e}")


@pytest.fixture(scope="session")
def unsloth_profile_of(cuda, cache_dir, run_folder):
    """Return a function (family, size) -> the Unsloth record of that case, run once per test run: the children
    started in the background at the run's start, waited for; started here if nothing started them."""
    from pathlib import Path

    from harness.measure import unsloth_backend

    reason = unsloth_backend.unavailable()
    records = {}

    def collect(family: str, size: str) -> dict:
        launched = _launched(run_folder, family, size)
        start = time.perf_counter()
        if shared.claim(run_folder, LAUNCH, take=False)[1]:  # launched, or being launched, by a process of the run
            deadline = time.monotonic() + 900
            while not launched.is_file() and time.monotonic() < deadline:
                time.sleep(1)  # its checkpoint is being built
        if launched.is_file():
            info = json.loads(launched.read_text())
            if "error" in info:
                return {"case": f"{family}-{size}--unsloth", "error": f"starting its children failed: {info['error']}"}
            stems = {k: Path(v) for k, v in info["stems"].items()}
        else:  # nothing started it (the launch was skipped): start it here
            sizes = next(b for f, s, b in UNSLOTH_CASES if (f, s) == (family, size))
            case = pipeline.case(family, size, default_recipe(family))
            with pipeline.reading(case, cache_dir, device="cuda") as folder:
                stems = unsloth_backend.start(family, size, folder, sizes, run_folder)
                record = unsloth_backend.collect(family, size, stems)
            phases.add("unsloth", time.perf_counter() - start)
            return record
        record = unsloth_backend.collect(family, size, stems)
        walls = [v for k, v in record.get("figures", {}).items() if k.endswith("child_wall_time_s")]
        phases.add("unsloth", max(walls, default=time.perf_counter() - start))
        return record

    def run(family: str, size: str) -> dict:
        if reason:
            pytest.skip(reason)
        if (family, size) not in records:
            records[(family, size)], _ = shared.once(run_folder, f"unsloth-{family}-{size}",
                                                     lambda: collect(family, size))
        return records[(family, size)]

    return run

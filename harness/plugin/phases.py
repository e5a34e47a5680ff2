"""Where a GPU session's wall time goes: seconds per phase, summed over the session's workers, in one line at the end;
with --results-dir, the session's timeline too (RESULTS/timeline.json): every test's worker, xdist group, start,
stop and outcome, every phase figure with when it was added, and the checkpoint builds.

Fixtures add what they measured (`add`); each test's pending figures, and the worker and group it ran in, travel
with its reports as user properties, so under pytest-xdist they reach the controller through xdist's public report
channel, as do the reports' own start and stop. Checkpoint builds come from the cache's build log
(harness.model.synth), benchmarks from the benchmark tests' durations.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from harness.model import synth
from harness.util.atomic import write_json

PROPERTY = "qlora-harness phase"
LANE = "qlora-harness lane"  # the user property naming the worker and xdist group a test ran in
TIMELINE = "timeline.json"  # written into --results-dir
ORDER = ("checkpoint builds", "loads", "measured steps", "unsloth", "benchmarks")
_pending: list[tuple[str, float, float]] = []  # this process's figures (phase, seconds, when) not yet sent
_totals: dict[str, float] = defaultdict(float)  # what this process's reports carried (the controller's: all)
_tests: dict[str, dict] = {}  # nodeid -> the test's lane, start, stop and outcome, as its reports carried them
_figures: list[dict] = []  # every phase figure the reports carried, with when it was added and by which test
_started = pytest.StashKey[float]()


def add(phase: str, seconds: float) -> None:
    """Record seconds spent in a phase by this process (sent with the running test's report), and when."""
    _pending.append((phase, float(seconds), time.time()))


def worker_id(config) -> str:
    """Return this session's pytest-xdist worker id (gw0, gw1...), or 'main' outside xdist. Read from the worker's
    config, not PYTEST_XDIST_WORKER: a session started from inside a worker (a subprocess) inherits that variable."""
    return (getattr(config, "workerinput", None) or {}).get("workerid", "main")


def group_of(item) -> str | None:
    """Return the name a test's xdist_group marker gives (the tests --dist loadgroup keeps in one worker), or None."""
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return None
    name = marker.args[0] if marker.args else marker.kwargs.get("name")
    return None if name is None else str(name)


def longest_lane(tests: list[dict]) -> tuple[str, float, str | None, float] | None:
    """Return the busiest worker (its tests' seconds from setup to teardown, summed) and its longest xdist group:
    (worker, seconds, group or None, the group's seconds); None without tests."""
    lanes: dict[str, float] = defaultdict(float)
    groups: dict[tuple[str, str], float] = defaultdict(float)
    for t in tests:
        seconds = t["stop"] - t["start"]
        lanes[t["worker"]] += seconds
        if t.get("group") is not None:
            groups[t["worker"], t["group"]] += seconds
    if not lanes:
        return None
    worker = max(lanes, key=lanes.get)
    ours = {g: s for (w, g), s in groups.items() if w == worker}
    group = max(ours, key=ours.get) if ours else None
    return worker, lanes[worker], group, ours.get(group, 0.0)


def timeline_line(path: Path, tests: list[dict]) -> str:
    """Return the timeline's line: where it was written and the longest worker lane, with its longest group."""
    text = f"qlora-harness timeline: {path}"
    lane = longest_lane(tests)
    if lane is None:
        return text + "; no test ran"
    worker, seconds, group, group_s = lane
    text += f"; the longest worker lane {worker} {seconds:.0f} s"
    return text + (f" (its longest group {group} {group_s:.0f} s)" if group is not None else " (no xdist groups)")


def line(totals: dict[str, float], builds: list[dict], wall_s: float, workers: int) -> str:
    """Return the summary line: each phase's seconds (summed over workers), the builds, the session's wall time."""
    parts = [f"checkpoint builds {sum(b['seconds'] for b in builds):.0f} s ({len(builds)} built)"]
    parts += [f"{name} {totals[name]:.0f} s" for name in ORDER[1:] if totals.get(name)]
    parts += [f"{name} {seconds:.0f} s" for name, seconds in sorted(totals.items()) if name not in ORDER]
    who = f"summed over {workers} workers" if workers > 1 else "one process"
    return f"qlora-harness phases ({who}): " + ", ".join(parts) + f"; wall {int(wall_s // 60)} min {wall_s % 60:.0f} s"


def pytest_configure(config):
    config.stash[_started] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        item.user_properties.append((LANE, {"worker": worker_id(item.config), "group": group_of(item)}))
    while _pending:
        item.user_properties.append((PROPERTY, list(_pending.pop(0))))
    yield


def _outcome(report, before: str | None) -> str:
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:  # setup or teardown failing: an error, whatever the call did
        return "error"
    return before or report.outcome  # a setup that skipped: skipped


def _note_test(report) -> None:
    lane = next((value for name, value in report.user_properties if name == LANE), {})
    test = _tests.setdefault(report.nodeid, {"worker": lane.get("worker", "main"), "nodeid": report.nodeid,
                                             "group": lane.get("group"), "start": report.start,
                                             "stop": report.stop, "outcome": None})
    if report.when == "setup":
        test["start"] = report.start
    test["stop"] = max(test["stop"], report.stop)
    test["outcome"] = _outcome(report, test["outcome"])


def pytest_runtest_logreport(report):
    _note_test(report)
    if report.when == "teardown":
        worker = _tests[report.nodeid]["worker"]
        for name, value in report.user_properties:
            if name == PROPERTY:
                phase, seconds, *at = value
                _totals[phase] += float(seconds)
                _figures.append({"phase": phase, "seconds": float(seconds), "at": at[0] if at else None,
                                 "worker": worker, "nodeid": report.nodeid})
    if report.when == "call" and "benchmark" in report.keywords:
        _totals["benchmarks"] += report.duration


def timeline(started: float, wall_s: float, workers: int, builds: list[dict]) -> dict:
    """Return the session's timeline from what the reports carried: tests and phase figures in time order."""
    return {"started": started, "wall_s": wall_s, "workers": workers,
            "tests": sorted(_tests.values(), key=lambda t: (t["start"], t["nodeid"])),
            "phases": sorted(_figures, key=lambda f: (f["at"] or 0, f["nodeid"])), "builds": builds}


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "workerinput", None) is not None:
        return  # a worker: its reports went to the controller, which writes the session's lines
    results = config.getoption("--results-dir", None)
    if not _totals and not (results and _tests):
        return  # nothing measured (a CPU session), no timeline asked for
    started = config.stash[_started]
    cache = config.getoption("--cache-dir", None)
    builds = [b for b in synth.builds(Path(cache) if cache else synth.default_cache_dir())
              if b.get("at", 0) >= started]
    workers = config.getoption("numprocesses", None)
    workers = workers if isinstance(workers, int) and workers > 0 else 1
    wall_s = time.time() - started
    if _totals:
        terminalreporter.write_line(line(_totals, builds, wall_s, workers))
    if results and _tests:
        path = Path(results) / TIMELINE
        data = timeline(started, wall_s, workers, builds)
        write_json(path, data)
        terminalreporter.write_line(timeline_line(path, data["tests"]))

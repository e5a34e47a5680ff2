"""Where a GPU session's wall time goes: seconds per phase, summed over the session's workers, in one line at the end.

Fixtures add what they measured (`add`); each test's pending figures travel with its teardown report as user
properties, so under pytest-xdist they reach the controller through xdist's public report channel. Checkpoint
builds come from the cache's build log (harness.model.synth), benchmarks from the benchmark tests' durations.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from harness.model import synth

PROPERTY = "qlora-harness phase"
ORDER = ("checkpoint builds", "loads", "measured steps", "unsloth", "benchmarks")
_pending: list[tuple[str, float]] = []  # this process's figures not yet attached to a report
_totals: dict[str, float] = defaultdict(float)  # what this process's reports carried (the controller's: all)
_started = pytest.StashKey[float]()


def add(phase: str, seconds: float) -> None:
    """Record seconds spent in a phase by this process (sent with the running test's report)."""
    _pending.append((phase, float(seconds)))


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
    while _pending:
        item.user_properties.append((PROPERTY, list(_pending.pop(0))))
    yield


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == PROPERTY:
                phase, seconds = value
                _totals[phase] += float(seconds)
    if report.when == "call" and "benchmark" in report.keywords:
        _totals["benchmarks"] += report.duration


def pytest_terminal_summary(terminalreporter, config):
    if not _totals:
        return  # nothing measured: a CPU session
    started = config.stash[_started]
    cache = config.getoption("--cache-dir", None)
    builds = [b for b in synth.builds(Path(cache) if cache else synth.default_cache_dir())
              if b.get("at", 0) >= started]
    workers = config.getoption("numprocesses", None)
    terminalreporter.write_line(line(_totals, builds, time.time() - started, workers if isinstance(workers, int) else 1))

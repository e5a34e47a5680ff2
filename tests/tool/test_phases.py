"""The GPU session's last line says where the wall time went, summed over workers (harness.plugin.phases)."""
import json

import pytest

from harness.plugin import phases

pytest_plugins = ["pytester"]

INNER = """
from harness.plugin import phases

def test_one_load():
    phases.add("loads", 2.0)
    phases.add("measured steps", 3.0)

def test_another_load():
    phases.add("loads", 1.5)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_phases_measured_in_workers_reach_the_last_line(pytester, workers, tmp_path, monkeypatch):
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("QLORA_HARNESS_CACHE", str(tmp_path))  # an empty cache: no builds in this session

    result = pytester.runpytest_subprocess("-p", "harness.plugin.phases", "-p", "no:cacheprovider", *workers)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["qlora-harness phases (*): checkpoint builds 0 s (0 built), loads 4 s, "
                                 "measured steps 3 s; wall *"])


def test_the_line_names_each_phase_and_the_builds():
    text = phases.line({"loads": 12.4, "unsloth": 100, "measured steps": 30},
                       [{"seconds": 20.0}, {"seconds": 25.5}], wall_s=272, workers=4)

    assert text == ("qlora-harness phases (summed over 4 workers): checkpoint builds 46 s (2 built), loads 12 s, "
                    "measured steps 30 s, unsloth 100 s; wall 4 min 32 s")


TIMED = """
import time

import json

import pytest

from harness.plugin import phases


@pytest.fixture
def slow_setup_and_teardown():
    time.sleep(0.2)
    yield
    time.sleep(0.2)


@pytest.fixture
def cuda():
    pytest.skip("needs a CUDA GPU")


@pytest.fixture
def broken():
    raise RuntimeError("a fixture that fails")


@pytest.mark.xdist_group("vlm-7b")
def test_load():
    time.sleep(0.3)
    phases.add("loads", 2.0)


@pytest.mark.xdist_group("vlm-7b")
def test_step(slow_setup_and_teardown):
    time.sleep(0.3)


def test_small():
    phases.add("measured steps", 1.0)


def test_not_here(cuda):
    pass


def test_broken(broken):
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadgroup"]], ids=["serial", "xdist"])
def test_a_session_with_results_writes_its_timeline(pytester, workers, tmp_path, monkeypatch):
    pytester.makepyfile(test_inner=TIMED)
    monkeypatch.setenv("QLORA_HARNESS_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"

    result = pytester.runpytest_subprocess("-p", "harness.plugin.options", "-p", "harness.plugin.phases",
                                           "-p", "no:cacheprovider", "--results-dir", str(results), *workers)

    result.assert_outcomes(passed=3, skipped=1, errors=1)
    timeline = json.loads((results / phases.TIMELINE).read_text())
    tests = {t["nodeid"].split("@")[0].split("::")[-1]: t for t in timeline["tests"]}  # loadgroup adds @group
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_load": "passed", "test_step": "passed", "test_small": "passed", "test_not_here": "skipped",
        "test_broken": "error"}
    assert {name: t["group"] for name, t in tests.items()} == {
        "test_load": "vlm-7b", "test_step": "vlm-7b", "test_small": None, "test_not_here": None, "test_broken": None}
    lanes = {t["worker"] for t in tests.values()}
    assert lanes <= ({"gw0", "gw1"} if workers else {"main"}) and lanes
    assert tests["test_load"]["worker"] == tests["test_step"]["worker"]  # a group stays in one worker
    assert timeline["workers"] == (2 if workers else 1)
    end = timeline["started"] + timeline["wall_s"]
    for lane in lanes:  # each worker's tests one after the other, inside the session, each setup before its teardown
        mine = [t for t in timeline["tests"] if t["worker"] == lane]
        assert all(timeline["started"] <= t["start"] < t["stop"] <= end for t in mine)
        assert all(a["stop"] <= b["start"] for a, b in zip(mine, mine[1:]))
    assert tests["test_step"]["stop"] - tests["test_step"]["start"] >= 0.7  # from its setup to its teardown's end
    figures = {f["phase"]: f for f in timeline["phases"]}
    assert sorted(figures) == ["loads", "measured steps"] and figures["loads"]["seconds"] == 2.0
    loaded = tests["test_load"]
    assert figures["loads"]["worker"] == loaded["worker"]
    assert loaded["start"] <= figures["loads"]["at"] <= loaded["stop"]  # when it was added: during its test
    assert timeline["builds"] == []
    result.stdout.fnmatch_lines(["qlora-harness phases (*): checkpoint builds 0 s (0 built), loads 2 s, "
                                 "measured steps 1 s; wall *",
                                 f"qlora-harness timeline: {results / phases.TIMELINE}; the longest worker lane "
                                 f"{loaded['worker']} * s (its longest group vlm-7b * s)"])


def test_the_longest_lane_is_the_busiest_worker_and_its_longest_group():
    tests = [{"worker": "gw0", "group": "a", "start": 0, "stop": 50},
             {"worker": "gw0", "group": "b", "start": 50, "stop": 80},
             {"worker": "gw0", "group": "b", "start": 80, "stop": 110},
             {"worker": "gw1", "group": "c", "start": 0, "stop": 100}]

    assert phases.longest_lane(tests) == ("gw0", 110, "b", 60)
    assert phases.timeline_line("out/timeline.json", tests) == (
        "qlora-harness timeline: out/timeline.json; the longest worker lane gw0 110 s (its longest group b 60 s)")
    assert phases.longest_lane([{"worker": "main", "group": None, "start": 0, "stop": 5}]) == ("main", 5, None, 0.0)


def test_the_benchmark_session_waits_for_the_tier_before_its_first_test(tmp_path):
    # .ci/gpu-run starts the benchmarks beside the tier: imports and collection overlap it, the timings must not
    import os
    import re
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = tmp_path / "tier-finished"
    threading.Timer(8.0, done.touch).start()  # the tier ends 8 s from now
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/bench", "-m", "gpu and benchmark", "-q",
                          "-p", "no:cacheprovider", "-k", "dequantize"], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "QLORA_HARNESS_START_AFTER": str(done), "QLORA_HARNESS_CACHE": str(tmp_path)},
                         timeout=300)
    took = time.monotonic() - started

    assert "2 skipped" in out.stdout, out.stdout + out.stderr
    assert took >= 8.0
    assert re.search(r"qlora-harness phases \(one process\): .*waiting for the tier \d+ s", out.stdout), out.stdout

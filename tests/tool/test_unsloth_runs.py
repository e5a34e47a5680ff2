"""The GPU tier's Unsloth runs (harness.plugin.unsloth_runs), without a GPU: the children of every case start before
any checkpoint is built, the biggest case first; a checkpoint that fails to build tells its children why; one
process of a run starts them, and any other waits for what it started; in a parallel run the biggest case's steps child
keeps the CPU priority and every other process of the run yields its own."""
from contextlib import contextmanager

import pytest

from harness.measure import unsloth_backend
from harness.plugin import unsloth_runs


@pytest.fixture
def backend(monkeypatch, tmp_path):
    """A stand-in for the children and the builds: what happened, in order."""
    events = []

    def start(family, size, checkpoint, batch_sizes, folder, built=True, nice=None):
        events.append(f"start {family}-{size}" + ("" if built else " (waits for its checkpoint)"))
        niceness.update({(family, size, part): n for part, n in (nice or {}).items()})
        return {part: folder / f"unsloth-{family}-{size}-{part}" for part in unsloth_backend.PARTS}

    @contextmanager
    def reading(case, cache_dir, device="cpu", urgent=False):
        if case.size in events_failing:
            raise OSError("No space left on device")
        events.append(f"build {case.family.name}-{case.size}" + (" (urgent)" if urgent else ""))
        yield tmp_path

    niceness = {}
    monkeypatch.setattr(unsloth_runs.priority, "lower", lambda *a, **k: events.append("this process yields"))

    events_failing = set()
    monkeypatch.setattr(unsloth_backend, "unavailable", lambda: None)
    monkeypatch.setattr(unsloth_backend, "start", start)
    monkeypatch.setattr(unsloth_runs.pipeline, "reading", reading)
    monkeypatch.setattr(unsloth_runs.disk, "hold", lambda folder: 0)
    monkeypatch.setattr(unsloth_runs, "_held", [])
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # one process, unless a test says otherwise
    return events, events_failing, niceness


def test_every_child_starts_before_any_checkpoint_is_built_the_biggest_case_first(backend, tmp_path):
    events, _, _ = backend
    cases = [("qwen2.5", "0.5b"), ("qwen2.5-vl", "7b"), ("qwen2.5", "0.5b")]  # as the tests ask: repeats included

    assert unsloth_runs.launch(cases, tmp_path / "cache", tmp_path / "run")

    assert events == ["start qwen2.5-vl-7b (waits for its checkpoint)", "start qwen2.5-0.5b (waits for its checkpoint)",
                      "build qwen2.5-vl-7b (urgent)", "build qwen2.5-0.5b"]


def test_in_a_parallel_run_the_biggest_steps_child_keeps_the_cpu_and_the_rest_yield(backend, tmp_path, monkeypatch):
    events, _, niceness = backend
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "6")
    run = tmp_path / "run"

    assert unsloth_runs.launch([("qwen2.5", "0.5b"), ("qwen2.5-vl", "7b")], tmp_path / "cache", run)
    assert not unsloth_runs.launch([("qwen2.5", "0.5b"), ("qwen2.5-vl", "7b")], tmp_path / "cache", run)  # worker 2

    assert niceness == {("qwen2.5-vl", "7b", "steps"): 0, ("qwen2.5-vl", "7b", "generation"): 5,
                        ("qwen2.5", "0.5b", "steps"): 5, ("qwen2.5", "0.5b", "generation"): 5}
    assert events == ["start qwen2.5-vl-7b (waits for its checkpoint)", "start qwen2.5-0.5b (waits for its checkpoint)",
                      "this process yields", "build qwen2.5-vl-7b (urgent)", "build qwen2.5-0.5b",
                      "this process yields"]


def test_one_process_alone_keeps_its_priority(backend, tmp_path):
    events, _, niceness = backend

    assert unsloth_runs.launch([("qwen2.5", "0.5b"), ("qwen2.5-vl", "7b")], tmp_path / "cache", tmp_path / "run")

    assert set(niceness.values()) == {0} and "this process yields" not in events


def test_one_process_of_a_run_starts_them_and_the_others_wait_for_its_records(backend, tmp_path, monkeypatch):
    events, _, _ = backend
    run = tmp_path / "run"
    assert unsloth_runs.launch([("qwen2.5", "0.5b")], tmp_path / "cache", run)
    assert not unsloth_runs.launch([("qwen2.5", "0.5b")], tmp_path / "cache", run)  # another worker's first test
    waited = []
    monkeypatch.setattr(unsloth_backend, "collect",
                        lambda family, size, stems: waited.append(sorted(stems)) or {"figures": {"child_wall_time_s": 9}})

    record, seconds = unsloth_runs.collect("qwen2.5", "0.5b", tmp_path / "cache", run)

    assert events.count("start qwen2.5-0.5b (waits for its checkpoint)") == 1
    assert waited == [sorted(unsloth_backend.PARTS)] and seconds == 9


def test_a_checkpoint_that_fails_to_build_tells_its_children_why(backend, tmp_path):
    _, failing, _ = backend
    failing.add("0.5b")

    unsloth_runs.launch([("qwen2.5", "0.5b")], tmp_path / "cache", tmp_path / "run")

    for part in unsloth_backend.PARTS:
        abort = unsloth_backend.abort_file(tmp_path / "run" / f"unsloth-qwen2.5-0.5b-{part}")
        assert abort.read_text() == "OSError: No space left on device"

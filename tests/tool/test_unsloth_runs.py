"""The GPU tier's Unsloth runs (harness.plugin.unsloth_runs), without a GPU: the children of every case start before
any checkpoint is built, the biggest case first; a checkpoint that fails to build tells its children why; one
process of a run starts them, and any other waits for what it started."""
from contextlib import contextmanager

import pytest

from harness.measure import unsloth_backend
from harness.plugin import unsloth_runs


@pytest.fixture
def backend(monkeypatch, tmp_path):
    """A stand-in for the children and the builds: what happened, in order."""
    events = []

    def start(family, size, checkpoint, batch_sizes, folder, built=True):
        events.append(f"start {family}-{size}" + ("" if built else " (waits for its checkpoint)"))
        return {part: folder / f"unsloth-{family}-{size}-{part}" for part in unsloth_backend.PARTS}

    @contextmanager
    def reading(case, cache_dir, device="cpu"):
        if case.size in events_failing:
            raise OSError("No space left on device")
        events.append(f"build {case.family.name}-{case.size}")
        yield tmp_path

    events_failing = set()
    monkeypatch.setattr(unsloth_backend, "unavailable", lambda: None)
    monkeypatch.setattr(unsloth_backend, "start", start)
    monkeypatch.setattr(unsloth_runs.pipeline, "reading", reading)
    monkeypatch.setattr(unsloth_runs.disk, "hold", lambda folder: 0)
    monkeypatch.setattr(unsloth_runs, "_held", [])
    return events, events_failing


def test_every_child_starts_before_any_checkpoint_is_built_the_biggest_case_first(backend, tmp_path):
    events, _ = backend
    cases = [("qwen2.5", "0.5b"), ("qwen2.5-vl", "7b"), ("qwen2.5", "0.5b")]  # as the tests ask: repeats included

    assert unsloth_runs.launch(cases, tmp_path / "cache", tmp_path / "run")

    assert events == ["start qwen2.5-vl-7b (waits for its checkpoint)", "start qwen2.5-0.5b (waits for its checkpoint)",
                      "build qwen2.5-vl-7b", "build qwen2.5-0.5b"]


def test_one_process_of_a_run_starts_them_and_the_others_wait_for_its_records(backend, tmp_path, monkeypatch):
    events, _ = backend
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
    _, failing = backend
    failing.add("0.5b")

    unsloth_runs.launch([("qwen2.5", "0.5b")], tmp_path / "cache", tmp_path / "run")

    for part in unsloth_backend.PARTS:
        abort = unsloth_backend.abort_file(tmp_path / "run" / f"unsloth-qwen2.5-0.5b-{part}")
        assert abort.read_text() == "OSError: No space left on device"

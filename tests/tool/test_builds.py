"""Checkpoint builds side by side: up to $QLORA_HARNESS_BUILDS of one cache at once (the GPU tier's workers each
build what their cases need), and a build log that says where each build's time went."""
from __future__ import annotations

import multiprocessing
import time

import pytest

from harness.families import get_family
from harness.model import synth
from harness.util.errors import HarnessError

BUILD_S = 2.0  # how long the stand-in build takes: well beyond the two processes' skew after the barrier


def _slow_build(family, size, out, seed, device):
    import torch
    from safetensors.torch import save_file

    time.sleep(BUILD_S)
    save_file({"x": torch.zeros(1)}, str(out / "model.safetensors"))
    (out / synth.MARKER).write_text("{}")


def _build_after(barrier, cache, seed, urgent, delay_s):
    family = get_family("qwen2.5")
    synth.weight_bytes(family, "tiny")  # transformers imported before the race starts, not during it
    synth._build = _slow_build
    barrier.wait(120)
    time.sleep(delay_s)
    synth.synthetic_checkpoint(family, "tiny", cache, seed=seed, urgent=urgent)


def _two_builds(cache, urgent=(False, False), delay_s=(0.0, 0.0)):
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as pytest-xdist workers are
    barrier = spawn.Barrier(2)
    workers = [spawn.Process(target=_build_after, args=(barrier, cache, seed, urgent[seed], delay_s[seed]))
               for seed in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert [w.exitcode for w in workers] == [0, 0]
    first, second = sorted(synth.builds(cache), key=lambda b: b["started"])
    return first, second


def test_two_builds_in_two_processes_run_at_the_same_time(tmp_path, monkeypatch):
    monkeypatch.delenv(synth.BUILDS_ENV, raising=False)  # the default: 2

    first, second = _two_builds(tmp_path)

    assert second["started"] < first["at"]
    assert first["waited_s"] < BUILD_S and second["waited_s"] < BUILD_S


def test_with_one_build_at_a_time_the_second_waits_for_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv(synth.BUILDS_ENV, "1")

    first, second = _two_builds(tmp_path)

    assert second["started"] >= first["at"]
    assert second["waited_s"] > BUILD_S / 2


@pytest.mark.parametrize("arrives_first", ["ordinary", "urgent"])
def test_an_urgent_build_and_an_ordinary_one_do_not_wait_for_each_other(tmp_path, monkeypatch, arrives_first):
    # the build the run's longest process waits for (harness.plugin.unsloth_runs): beside the others, not after them,
    # and not in their slot either (arriving first, it would make the ordinary build queue behind it); the test
    # above is the same two builds without it
    monkeypatch.setenv(synth.BUILDS_ENV, "1")
    late = BUILD_S / 4

    first, second = _two_builds(tmp_path, urgent=(False, True),
                                delay_s=(late, 0.0) if arrives_first == "urgent" else (0.0, late))

    assert second["started"] < first["at"]
    assert sorted(b["urgent"] for b in (first, second)) == [False, True]
    assert first["waited_s"] < BUILD_S and second["waited_s"] < BUILD_S


def test_the_build_log_says_where_the_time_went(tmp_path):
    folder = synth.synthetic_checkpoint(get_family("qwen2.5"), "tiny", tmp_path)

    (built,) = synth.builds(tmp_path)

    assert built["bytes"] == sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    parts = built["construct_s"] + built["save_s"] + built["processor_s"]
    assert 0 < parts <= built["seconds"] <= built["at"] - built["started"] + 0.01
    assert built["construct_s"] > 0 and built["save_s"] > 0 and built["waited_s"] >= 0


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "²"])
def test_a_bad_number_of_builds_at_once_is_a_clear_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv(synth.BUILDS_ENV, value)

    with pytest.raises(HarnessError, match=rf"{synth.BUILDS_ENV}=.*expected a whole number .* 1 or more"):
        synth.synthetic_checkpoint(get_family("qwen2.5"), "tiny", tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # nothing begun


@pytest.mark.parametrize("value, slots", [(None, 2), ("", 2), ("1", 1), (" 3 ", 3)])
def test_the_number_of_builds_at_once_comes_from_the_environment(value, slots):
    assert synth.build_slots({} if value is None else {synth.BUILDS_ENV: value}) == slots

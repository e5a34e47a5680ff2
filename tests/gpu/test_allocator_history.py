"""A case's memory figures do not depend on what ran before it in its process (harness.measure.probe.plug_holes): a
worker that profiles a dozen cases reads each one as a process that profiled only that one, so a serial run and a
parallel one read the same figures.

The stand-in for a case is a model's load: tensors of the sizes a 4-bit checkpoint holds, allocated in order. The
stand-in for the cases before it: tensors of random sizes, most of them freed again, the rest left alive (what a
model, its optimizer and the caches of the libraries leave in a long-lived process)."""
import multiprocessing
import random

import pytest

from harness.measure import probe

KiB, MiB = 2**10, 2**20
# packed 4-bit weights and their absmax of a few layers (1.1 and 4.5 MiB: large-pool blocks split off 20 MiB
# segments), small norms and biases, an embedding
LOAD = [9 * MiB // 8, 9 * MiB // 2, 288 * KiB, 3 * KiB] * 12 + [72 * MiB + 512]
HISTORIES = range(8)


def allocated_by_a_load() -> int:
    """Return the allocated bytes LOAD adds, its tensors freed again."""
    import torch

    before = torch.cuda.memory_allocated()
    tensors = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in LOAD]
    added = torch.cuda.memory_allocated() - before
    del tensors
    return added


def earlier_cases(seed: int) -> list:
    """Allocate 60 tensors of random sizes (64 KiB to 40 MiB), free four in five; return the ones left alive."""
    import torch

    rng = random.Random(seed)
    made = [torch.empty(rng.randrange(64 * KiB, 40 * MiB, 512), dtype=torch.uint8, device="cuda") for _ in range(60)]
    return [t for t in made if rng.random() < 0.2]


def read_in_a_fresh_process() -> int:
    """In a process of its own (multiprocessing's spawn): the load's allocated bytes, plugged as a first case is."""
    import torch

    torch.empty(1, device="cuda")
    plugs = probe.plug_holes()
    added = allocated_by_a_load()
    plugs.clear()
    return added


@pytest.fixture(scope="module")
def in_a_fresh_process(cuda) -> int:
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh interpreter, as tests/tool/test_builds.py
        return pool.apply(read_in_a_fresh_process)


@pytest.fixture(scope="module")
def after_earlier_cases(cuda) -> list[tuple[int, int]]:
    """For each history: (the load's allocated bytes straight after it, the same with its holes plugged)."""
    readings = []
    for seed in HISTORIES:
        left = earlier_cases(seed)
        straight = allocated_by_a_load()
        plugs = probe.plug_holes()
        readings.append((straight, allocated_by_a_load()))
        plugs.clear()
        del left
        probe.release()
    return readings


def test_after_earlier_cases_a_load_reads_as_in_a_fresh_process(after_earlier_cases, in_a_fresh_process):
    assert [plugged for _, plugged in after_earlier_cases] == [in_a_fresh_process] * len(HISTORIES), \
        f"fresh process {in_a_fresh_process}; (straight, plugged) after each history: {after_earlier_cases}"


def test_without_the_plugs_some_history_changes_the_reading(after_earlier_cases, in_a_fresh_process):
    # the broken case: the same loads measured straight after the histories
    assert any(straight != in_a_fresh_process for straight, _ in after_earlier_cases), \
        f"no history changed the reading ({in_a_fresh_process}): {after_earlier_cases}"

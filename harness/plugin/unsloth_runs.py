"""The Unsloth runs of a GPU test run: started in the background at the run's first test, waited for by whichever
worker's test needs a record.

Each case is two child processes at once (harness.measure.unsloth_backend.PARTS), started before the case's
checkpoint exists: they import Unsloth (about a minute beside the other workers starting) while the process that
started them builds the checkpoint, then wait for its folder and hold it while they read. The starting process
holds it too, from its build until it exits, so no other build evicts it in between (and the benchmarks, which
read the biggest case, find it). Jobs, heartbeats and records: harness.util.jobs, in the run's folder.

In a parallel run the biggest case's steps child is the run's longest process, and CPU-bound where the workers are
not (it imports Unsloth, then compiles a step per new shape): it keeps the CPU priority it was started with and its
checkpoint is built first, in a build slot of its own; the other children, and every worker from its first test on,
yield theirs (harness.util.priority).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from harness.families import get_family
from harness.measure import unsloth_backend
from harness.measure.matrix import UNSLOTH_CASES
from harness.model import disk, pipeline, synth
from harness.recipe import default_recipe
from harness.util import env, priority
from harness.util.atomic import write_json

from . import shared

LAUNCH = "unsloth-launch"  # claimed in the run folder by the process that starts the run's Unsloth children
LAUNCH_WAIT_S = 900  # how long a waiter gives the starting process to write a case's launch record
_held: list[int] = []  # checkpoint locks of the process that built them, kept until it exits


def launched_file(run_folder: Path, family: str, size: str) -> Path:
    """Return the file where the starting process records a case's children (or why they did not start)."""
    return Path(run_folder) / f"unsloth-{family}-{size}.launched.json"


def batch_sizes(family: str, size: str) -> tuple[int, ...]:
    return next(b for f, s, b in UNSLOTH_CASES if (f, s) == (family, size))


def launch(cases, cache_dir: Path, run_folder: Path) -> bool:
    """Start the children of every (family, size) in cases unless a process of the run has: first all children,
    the biggest case first, then the checkpoints, built and held in that order. Return whether this call started
    them. A child whose checkpoint fails to build is told why (its abort file) and reports it. In a parallel run
    the calling worker yields CPU priority from here on, whoever started the children (the module's docstring)."""
    wanted = sorted(set(cases), key=lambda c: -get_family(c[0]).published_params[c[1]])
    if not wanted or unsloth_backend.unavailable():
        return False
    parallel = env.gpu_workers() > 1
    if not shared.claim(run_folder, LAUNCH)[0]:
        if parallel:
            priority.lower()
        return False
    started, longest = {}, (*wanted[0], "steps")  # the run's longest process keeps its priority
    for family, size in wanted:
        folder = synth.checkpoint_folder(get_family(family), size, cache_dir)
        nice = {part: priority.YIELD_NICE if parallel and (family, size, part) != longest else 0
                for part in unsloth_backend.PARTS}
        try:
            stems = unsloth_backend.start(family, size, folder, batch_sizes(family, size), run_folder, built=False,
                                          nice=nice)
        except Exception as e:  # noqa: BLE001 - the waiting tests report it
            write_json(launched_file(run_folder, family, size), {"error": f"{type(e).__name__}: {e}"})
            continue
        started[(family, size)] = stems
        write_json(launched_file(run_folder, family, size),
                   {"stems": {part: str(stem) for part, stem in stems.items()}, "nice": nice, "started": time.time()})
    if parallel:
        priority.lower()
    for (family, size), stems in started.items():
        try:
            case = pipeline.case(family, size, default_recipe(family))
            with pipeline.reading(case, cache_dir, device="cuda", urgent=(family, size) == wanted[0]) as folder:
                _held.append(disk.hold(folder))  # from its build until the children hold it themselves, and after
        except Exception as e:  # noqa: BLE001 - the children stop waiting and report it
            for stem in stems.values():
                unsloth_backend.abort_file(stem).write_text(f"{type(e).__name__}: {e}")
    return True


def collect(family: str, size: str, cache_dir: Path, run_folder: Path) -> tuple[dict, float]:
    """Return (the case's record, the seconds its children took): waited for when the run started them, else
    started and waited for here."""
    launched = launched_file(run_folder, family, size)
    start = time.perf_counter()
    if shared.claim(run_folder, LAUNCH, take=False)[1]:  # started, or being started, by a process of the run
        deadline = time.monotonic() + LAUNCH_WAIT_S
        while not launched.is_file() and time.monotonic() < deadline:
            time.sleep(1)
    if not launched.is_file():  # nothing started it: start it here
        case = pipeline.case(family, size, default_recipe(family))
        with pipeline.reading(case, cache_dir, device="cuda") as folder:
            stems = unsloth_backend.start(family, size, folder, batch_sizes(family, size), run_folder)
            return unsloth_backend.collect(family, size, stems), time.perf_counter() - start
    info = json.loads(launched.read_text())
    if "error" in info:
        return {"case": f"{family}-{size}--unsloth", "error": f"starting its children failed: {info['error']}"}, 0.0
    record = unsloth_backend.collect(family, size, {part: Path(stem) for part, stem in info["stems"].items()})
    walls = [v for k, v in record.get("figures", {}).items() if k.endswith("child_wall_time_s")]
    return record, max(walls, default=time.perf_counter() - start)

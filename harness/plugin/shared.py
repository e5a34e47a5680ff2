"""Work done once per test run and shared by the run's pytest-xdist workers: the first to ask computes it, the others
wait for it and read it (a JSON record in a folder of the run, under a file lock).

The GPU tier uses it for the Unsloth runs (the side-by-side comparison and the Unsloth tests ask for the same
record from different workers, and each costs minutes in child processes), for the comparison records the
side-by-side table reads, and to claim work once per run: the process that starts the Unsloth children, the
worker that profiles a case (a second claim means the run split a case's tests between workers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from harness.util.atomic import write_json


def run_folder(request, cache_dir: Path) -> Path | None:
    """Return the folder this run's workers share (cache_dir/runs/<test run uid>), or None without pytest-xdist."""
    if not request.config.pluginmanager.has_plugin("xdist"):
        return None
    return Path(cache_dir) / "runs" / str(request.getfixturevalue("testrun_uid"))  # xdist's fixture: one per run


def once(folder: Path | None, name: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """Return (the record called name, whether this process computed it): computed here unless another worker of
    the run has written it or is writing it (then wait for it)."""
    if folder is None:
        return compute(), True
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return json.loads(path.read_text()), False
        record = compute()
        write_json(path, record)
        return record, True


def claim(folder: Path, name: str, take: bool = True) -> tuple[bool, str | None]:
    """Claim `name` for this process, once per run (an exclusive create in the run's folder): return (whether this
    call claimed it, who holds it: 'gw1 (pid 123)', None when nobody does). take=False only asks who holds it."""
    path = Path(folder) / f"{name}.claim"
    me = f"{os.environ.get('PYTEST_XDIST_WORKER', 'the main process')} (pid {os.getpid()})"
    if take:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as f:
                f.write(me)
            return True, me
        except FileExistsError:
            pass
    try:
        return False, path.read_text() or "another process"
    except FileNotFoundError:
        return False, None


def once_per_run(folder: Path, what: str) -> None:
    """Fail the test unless this process is the run's first to compute `what` (a case's profile, say): a second
    means the run split the tests that share it between workers, and each computes it again."""
    import pytest

    first, by = claim(folder, what)
    if not first:
        pytest.fail(f"{what}: expected to be computed once per run, but {by} computed it already: the tests that "
                    "share it were split between workers; run with --dist loadgroup", pytrace=False)

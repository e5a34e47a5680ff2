"""Work done once per test run and shared by the run's pytest-xdist workers: the first to ask computes it, the others
wait for it and read it (a JSON record in a folder of the run, under a file lock).

The GPU tier uses it for the Unsloth runs: the side-by-side comparison and the Unsloth tests ask for the same
record from different workers, and each run costs minutes in a child process.
"""
from __future__ import annotations

import json
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

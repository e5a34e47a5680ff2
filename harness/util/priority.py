"""CPU priority in a parallel GPU run: the process on its critical path keeps it, the others yield theirs.

A parallel run's wall time is its longest process, and the longest is CPU-bound where the others are not (the
biggest Unsloth case's steps child imports Unsloth and compiles its steps while six workers mostly wait on the GPU
and the disk): the workers and the other children run at a lower priority (a higher nice value, YIELD_NICE more),
so the cores go to it first when they are short, and to the others otherwise. Priority is no part of any figure:
memory is counted per process whatever its share of the CPU, and the timing benchmarks run alone, later.

On Linux a nice value belongs to one thread (one task), and a thread inherits its creator's: lower() changes
every thread a process has now, and the threads it starts afterwards follow. Elsewhere it does nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

YIELD_NICE = 5


def nice_of(pid: int = 0) -> int:
    """Return the nice value of a process (0: this one); 0 where the system has none."""
    getpriority = getattr(os, "getpriority", None)
    return getpriority(os.PRIO_PROCESS, pid) if getpriority else 0


def lower(by: int = YIELD_NICE, pid: int | None = None) -> int:
    """Raise the nice value of every thread of a process (None: this one) by `by`, up to 19; return how many
    threads changed (0 where the system cannot say, or the process is gone)."""
    pid = os.getpid() if pid is None else pid
    tasks = Path(f"/proc/{pid}/task")
    try:
        tids = [int(t) for t in os.listdir(tasks)]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return 0
    changed = 0
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
            changed += 1
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue
    return changed

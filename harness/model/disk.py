"""Disk room for synthetic checkpoints: before a build, the least recently used ones that nobody is reading go.

A full-size GPU session needs more checkpoints than a GPU host's disk holds (a 7B one is 16 GB, the host has
64 GB), and with several pytest-xdist workers no single process knows when another is done with one. So a
process that reads a checkpoint holds a shared lock on a file inside it (`hold`, `release`); the builder, before it
writes a new one, evicts complete checkpoints whose lock it can take exclusively, oldest use first, until the
disk has room (`make_room`). An evicted folder is renamed away first, so a reader that comes late finds it
incomplete and has it rebuilt rather than loading half a folder.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

IN_USE = ".in-use"  # inside a checkpoint folder: readers hold a shared flock on it
MARGIN_BYTES = 4 * 2**30  # left free beyond the new checkpoint: logs, results, the page of a half-written shard


def hold(folder: Path) -> int | None:
    """Take a shared lock on a checkpoint folder for reading and mark it as just used; return the lock's handle,
    or None when the folder is gone (evicted between lookup and lock)."""
    folder = Path(folder)
    try:
        fd = os.open(folder / IN_USE, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(fd)  # through the handle: the folder may have been renamed away meanwhile
    return fd


def release(fd: int) -> None:
    """Give back a lock taken by hold."""
    os.close(fd)  # closing releases the flock


def try_evict(folder: Path) -> bool:
    """Delete a checkpoint folder unless a process is reading it; return whether it went."""
    folder = Path(folder)
    lock = folder / IN_USE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return False  # already gone
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        doomed = folder.with_name(f".{folder.name}.evicting-{os.getpid()}")  # swept like a partial build
        os.rename(folder, doomed)  # atomic: from here on the folder is not complete for anyone
    finally:
        os.close(fd)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def last_used(folder: Path) -> float:
    """Return when a checkpoint was last read (or built), as a timestamp."""
    for path in (folder / IN_USE, folder):
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def make_room(checkpoints: list[Path], where: Path, needed_bytes: int, margin_bytes: int = MARGIN_BYTES,
              wait_s: float = 300, poll_s: float = 2) -> list[Path]:
    """Evict checkpoints, least recently used first, until `where` has needed_bytes + margin free; return those evicted.

    Only checkpoints no process is reading go. While readers hold what would have to go, wait for them (up to
    wait_s); after that the build goes ahead and the disk decides.
    """
    evicted, deadline = [], time.monotonic() + wait_s
    while True:
        for folder in sorted((c for c in checkpoints if c.exists()), key=last_used):
            if shutil.disk_usage(where).free >= needed_bytes + margin_bytes:
                return evicted
            if try_evict(folder):
                evicted.append(folder)
        if shutil.disk_usage(where).free >= needed_bytes + margin_bytes or time.monotonic() > deadline:
            return evicted
        time.sleep(poll_s)

"""Disk room for synthetic checkpoints: before a build, the least recently used ones that nobody is reading go.

A full-size GPU session needs more checkpoints than a GPU host's disk holds (a 7B one is 16 GB, the host has
64 GB), and with several pytest-xdist workers no single process knows when another is done with one. So a
process that reads a checkpoint holds a shared lock on a file inside it (`hold`, `release`); the builder, before it
writes a new one, evicts complete checkpoints whose lock it can take exclusively, oldest use first, until the
disk has room (`make_room`). An evicted folder is renamed away first, so a reader that comes late finds it
incomplete and has it rebuilt rather than loading half a folder.

Builds run side by side (at most a few at once: `build_slot`), so the room a build makes counts what the others
will still write: each build in progress holds a reservation (`reserve`), its expected bytes and its staging
folder, under an exclusive flock for as long as it runs; free space is what the disk has free minus the bytes
still to come of every reservation whose flock is held (`bytes_to_come`). A reservation whose flock can be taken
belongs to a process that died: it is removed.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

IN_USE = ".in-use"  # inside a checkpoint folder: readers hold a shared flock on it
MARGIN_BYTES = 4 * 2**30  # left free beyond the new checkpoint: logs, results, the page of a half-written shard
RESERVED = ".reserved-"  # next to the checkpoints, .reserved-<folder name>: a build in progress (JSON)
SLOT = ".build-slot-{}.lock"  # next to the checkpoints: a build holds one of these while it runs


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
    """Evict checkpoints, least recently used first, until `where` has needed_bytes + margin free beyond what the
    builds in progress will still write (room_bytes); return those evicted.

    Only checkpoints no process is reading go. While readers hold what would have to go, wait for them (up to
    wait_s); after that the build goes ahead and the disk decides.
    """
    evicted, deadline = [], time.monotonic() + wait_s
    while True:
        for folder in sorted((c for c in checkpoints if c.exists()), key=last_used):
            if room_bytes(where) >= needed_bytes + margin_bytes:
                return evicted
            if try_evict(folder):
                evicted.append(folder)
        if room_bytes(where) >= needed_bytes + margin_bytes or time.monotonic() > deadline:
            return evicted
        time.sleep(poll_s)


def room_bytes(where: Path) -> int:
    """Return the bytes free at `where` once the builds in progress there have written what they still will."""
    return shutil.disk_usage(where).free - bytes_to_come(where)


def bytes_to_come(where: Path) -> int:
    """Return the bytes the builds in progress at `where` will still write: each live reservation's expected bytes
    minus what its staging folder holds (none once that folder is gone: the build finished or failed). Removes the
    reservations of processes that died. Call it holding the room lock, under which reservations are written."""
    total = 0
    for path in Path(where).glob(RESERVED + "*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # dropped by its build meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its builder holds it: a live build
                reservation = json.loads(os.read(fd, 1 << 16))
                total += max(0, reservation["bytes"] - folder_bytes(Path(reservation["stage"])))
                continue
            path.unlink(missing_ok=True)  # nobody holds it: its builder died
        finally:
            os.close(fd)
    return total


def reserve(where: Path, name: str, needed_bytes: int, stage: Path) -> int:
    """Write the reservation of a build of the checkpoint folder `name` staged in `stage`, locked for as long as the
    build runs; return its handle for unreserve. Write it holding the room lock."""
    path = Path(where) / f"{RESERVED}{name}"
    # Written through its own handle, not an atomic rename: the flock must be on the file readers open. Readers
    # hold the room lock too, so none sees it half-written.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the checkpoint's own lock keeps a second builder of `name` away: never waits
    os.write(fd, json.dumps({"bytes": needed_bytes, "pid": os.getpid(), "stage": str(stage)}).encode())
    return fd


def unreserve(where: Path, name: str, fd: int) -> None:
    """Drop a reservation taken by reserve (its build finished, or failed)."""
    (Path(where) / f"{RESERVED}{name}").unlink(missing_ok=True)  # before the flock goes: nobody counts it stale
    os.close(fd)


@contextmanager
def build_slot(where: Path, slots: int, poll_s: float = 0.2, extra: int = 0) -> Iterator[int]:
    """Hold one of `slots` build slots at `where` while the block runs, waiting for one to be free; yield its number.

    extra: slots past those this build may take too (a build the run's longest process waits for need not queue
    behind the others). It tries those first: taking a shared slot would make the next ordinary build queue behind it."""
    order = [*range(slots, slots + extra), *range(slots)]
    while True:
        for slot in order:
            fd = os.open(Path(where) / SLOT.format(slot), os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield slot
                return
            finally:
                os.close(fd)  # closing releases the flock
        time.sleep(poll_s)


def folder_bytes(folder: Path) -> int:
    """Return the bytes the files under folder hold (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(folder):  # nothing when the folder is gone
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def read_ahead(folder: Path) -> None:
    """Ask the kernel to read a checkpoint's weight files into the page cache, in the background (nothing waits)."""
    for path in Path(folder).glob("*.safetensors"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # evicted meanwhile
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

"""Writes that are all or nothing: a crash leaves the previous file or folder intact.

Every record and report the harness writes passes through here, so this is also where secrets are redacted.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import HarnessError
from .redact import scrub

PARTIAL = ".partial"  # suffix of a folder being filled


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write text, secrets redacted, to path through a temporary file and an atomic rename."""
    path, text = Path(path), scrub(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result is as readable as any file the user writes
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_folder(path: Path, what: str) -> Path:
    """Return path once it is a folder this process can write in, or one it can create; raise naming the problem.

    Called before the work that fills the folder, so that a wrong --out fails in a second, not after the run.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{what} {path} is a file, not a folder; give a folder (it is created if missing)")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise HarnessError(f"{what} {path}: {probe} is a file, so no folder can be made under it; give another folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".qlora-harness-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise HarnessError(f"{what} {path}: cannot write in {probe} ({e.strerror or e}); give a folder you can "
                           "write to") from None
    return path


def write_json(path: Path, data) -> None:
    """Write data as indented JSON to path atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces final by renames, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=PARTIAL))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield stage
        # Move the previous folder aside in one rename rather than deleting it in place: a crash halfway
        # through a delete would leave a folder that still looks finished but lacks some of its files.
        old = stage.with_suffix(".old") if final.exists() else None
        if old:
            os.replace(final, old)
        os.replace(stage, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def leftovers(folder: Path, name: str) -> list[Path]:
    """Return the temporary files and folders an interrupted write of folder/name left behind."""
    return sorted(Path(folder).glob(f".{glob.escape(name)}.*"))


def copy_redacted(stream, path: Path) -> None:
    """Copy a text stream (a child process's output) line by line into the log at path, secrets redacted as they pass:
    a log is a file the harness writes like any other, and a crash midway leaves no secret in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", errors="replace") as log:
        for line in stream:
            log.write(scrub(line))
            log.flush()

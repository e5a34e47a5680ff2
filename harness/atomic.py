"""Writes that are all or nothing: a crash leaves the previous file or folder intact."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_text(path: Path, text: str) -> None:
    """Write text to path through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    """Write data as indented JSON to path atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces final in one rename, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield stage
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)

"""Files the package ships (harness/data: recipes, trained tiny checkpoints), found through importlib.resources."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import HarnessError


def data_path(*parts: str) -> Path:
    """Return the folder or file harness/data/<parts> as a path on disk, wherever the package is installed."""
    found = resources.files("harness").joinpath("data", *parts)
    path = Path(str(found))
    if not path.exists():
        raise HarnessError(f"package data harness/data/{'/'.join(parts)} is missing from the installed harness at "
                           f"{Path(str(resources.files('harness')))}; reinstall qlora-harness (pip install --force-reinstall)")
    return path

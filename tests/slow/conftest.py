"""The slow tier's shared machinery: candidate environments that are broken on purpose."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.gate import envs


@pytest.fixture
def breaker_venv():
    """Return make(folder, module, source) -> the python of a broken candidate environment (see make_breaker_venv)."""
    return make_breaker_venv


def make_breaker_venv(folder: Path, module: str, source: str) -> Path:
    """Return the python of a venv layered over this interpreter whose startup (a .pth file) imports `module`,
    written from source: a candidate environment that does what a broken upgrade would."""
    python = envs.create_layered_venv(folder, sys.executable, with_pip=False)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, f"{module}.py").write_text(source)
    Path(site, f"{module}.pth").write_text(f"import {module}\n")
    return python

"""The software and hardware a run happens on: library versions and the GPU fingerprint."""
from __future__ import annotations

import importlib.metadata
import platform

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "unsloth")


def library_versions() -> dict[str, str | None]:
    """Return the installed version of each library the harness compares, None where missing."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def has_cuda() -> bool:
    """Return whether a CUDA GPU is usable."""
    import torch

    return torch.cuda.is_available()


def gpu_fingerprint() -> str | None:
    """Return a folder-safe name for the GPU model and memory, e.g. 'nvidia-h200-140gib-cuda13.0', or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    name = "-".join(props.name.lower().replace("nvidia", "nvidia ").split())
    gib = round(props.total_memory / 2**30)
    return f"{name}-{gib}gib-cuda{torch.version.cuda}"


def gpu_workers(environ=None) -> int:
    """Return how many test processes of this run share the GPU: the pytest-xdist worker count (xdist sets
    PYTEST_XDIST_WORKER_COUNT in each worker, and a child process inherits it), else 1."""
    import os

    environ = os.environ if environ is None else environ
    count = environ.get("PYTEST_XDIST_WORKER_COUNT")
    return int(count) if count else 1


def visible_gpus(environ=None, smi=None) -> list[str]:
    """Return the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them, without initialising CUDA
    (so a process can still be pinned to one of them afterwards). environ and smi (the output of `nvidia-smi -L`)
    default to this process's environment and to asking nvidia-smi."""
    import os
    import subprocess

    environ = os.environ if environ is None else environ
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    if smi is None:
        try:
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return []
    return [str(i) for i, line in enumerate(line for line in smi.splitlines() if line.startswith("GPU "))]

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

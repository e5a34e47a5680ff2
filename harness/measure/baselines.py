"""Stored baselines: JSON per case under baselines/<GPU fingerprint>/, written only from a real run.

A baseline gates only the GPU it was recorded on: compared with a run on another GPU it is refused, naming
both. A baseline from other library versions is compared all the same (finding what an upgrade changed is
the point), and each mismatch says which versions differ.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.util.atomic import write_json
from harness.util.errors import HarnessError

# A baseline is a record of one GPU, one set of library versions and the project's own recipes, so it lives in the
# user's project (baselines/ beside its pytest configuration), never in the installed package.
PROJECT_FOLDER = "baselines"
MEMORY_TOLERANCE = 0.03  # relative: allocator rounding and kernel workspaces move peaks by a percent or two
# absolute floor: the caching allocator reserves in 2 MiB and 20 MiB blocks, so a 32 MiB figure (CLIP ViT-B/16's
# reserved static) moved by one block is not a regression
MEMORY_FLOOR = 32 * 2**20
COMPARED = ("torch", "transformers", "peft", "bitsandbytes", "unsloth")  # the versions a mismatch names
# Figures that gate: allocated GPU memory and OOM status. Times, ratios, host memory and reserved memory are
# recorded for reports, not compared: they depend on what ran earlier in the process (the caching allocator
# reuses segments it already holds: CLIP ViT-B/16's static reserved read 0.03 GiB late in a session, 0.14 first).
GATED_PREFIXES = ("static_allocated", "peak_allocated", "status_")


def project_baselines(project_root: Path) -> Path:
    """Return the baselines folder of a project: baselines/ in its root (pytest's rootdir)."""
    return Path(project_root) / PROJECT_FOLDER


def baseline_path(root: Path, fingerprint: str, case_id: str) -> Path:
    """Return where a case's baseline lives for a GPU fingerprint."""
    return Path(root) / fingerprint / f"{case_id}.json"


def read_baseline(path: Path) -> dict | None:
    """Return a stored baseline, None if there is none; raise naming the file if it is corrupt."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HarnessError(f"baseline {path} is not valid JSON ({e}); recreate it with --update-baselines") from None
    if not isinstance(data, dict):
        raise HarnessError(f"baseline {path} holds a {type(data).__name__}, not a record; recreate it with --update-baselines")
    for key, kind in (("case", str), ("gpu", str), ("versions", dict), ("figures", dict)):
        if key not in data:
            raise HarnessError(f"baseline {path} lacks {key!r}; recreate it with --update-baselines")
        if not isinstance(data[key], kind):
            raise HarnessError(f"baseline {path}: {key!r} should be a {kind.__name__}, found {data[key]!r}; "
                               "recreate it with --update-baselines")
    return data


def write_baseline(path: Path, record: dict) -> None:
    """Write a baseline record atomically (a crash leaves the previous file intact)."""
    write_json(path, record)


def compare(measured: dict, baseline: dict, tolerance: float = MEMORY_TOLERANCE) -> list[str]:
    """Return one message per figure that differs from the baseline: bytes beyond tolerance, statuses that differ.

    Raise if the baseline was recorded on another GPU: its figures say nothing about this one.
    """
    if baseline.get("gpu") != measured.get("gpu"):
        raise HarnessError(
            f"{measured['case']}: the baseline was recorded on GPU {baseline.get('gpu')!r}, this run is on "
            f"{measured.get('gpu')!r}; baselines are kept per GPU: put it under baselines/{baseline.get('gpu')}/, "
            "or write this GPU's with pytest -m gpu --update-baselines")
    problems = []
    base_figures, versions = baseline["figures"], baseline.get("versions", {})
    changed = version_changes(versions, measured["versions"])
    for name, value in measured["figures"].items():
        if name not in base_figures or not name.startswith(GATED_PREFIXES):
            continue
        old = base_figures[name]
        if isinstance(value, str) or isinstance(old, str) or value is None or old is None:
            bad = value != old
        else:
            floor = MEMORY_FLOOR if name.endswith("_bytes") else 0
            bad = abs(value - old) > max(tolerance * abs(old), floor)
        if bad:
            problems.append(
                f"{measured['case']}: {name} measured {_fmt(value)} vs baseline {_fmt(old)}"
                + (f" (tolerance {tolerance:.0%}, at least {MEMORY_FLOOR // 2**20} MiB)" if name.endswith("_bytes") else "")
                + f"; baseline versions {_versions(versions)}, measured versions {_versions(measured['versions'])}"
                + (f" (versions differ: {changed})" if changed else " (same versions)"))
    return problems


def version_changes(baseline: dict, measured: dict) -> str:
    """Return the compared libraries whose versions differ, e.g. 'transformers 5.17.0 -> 5.23.0', or ''."""
    return ", ".join(f"{k} {baseline.get(k)} -> {measured.get(k)}" for k in COMPARED
                     if baseline.get(k) != measured.get(k) and (k in baseline or k in measured))


def _fmt(value) -> str:
    return f"{value / 2**30:.3f} GiB" if isinstance(value, int) and value > 2**20 else repr(value)


def _versions(v: dict) -> str:
    return ", ".join(f"{k} {v[k]}" for k in COMPARED if k in v)

"""`pytest -m <tier>` leaves the other tiers' folders uncollected (the root conftest's pytest_ignore_collect, which
took about 13 s off each xdist worker's start): it must select exactly what the full collection would."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def collected(expression: str) -> list[str]:
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-m", expression], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return sorted(line for line in run.stdout.splitlines() if "::" in line)


@pytest.mark.parametrize("tier", ["smoke", "gpu"])  # gpu: tests/gpu and tests/bench (gpu + benchmark)
def test_one_tiers_marker_selects_what_the_whole_collection_selects(tier):
    # "tier or tier" is not a bare tier name, so every folder is collected and pytest's own -m deselects
    assert collected(tier) == collected(f"{tier} or {tier}")

"""The package's imports point one way: down the stages of harness.LAYERS, with no cycle.

Read from the source (ast), imports inside functions included, so a lazy import cannot hide an upward edge.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import harness
from harness.util import layering

PACKAGE = Path(harness.__file__).resolve().parent


def test_every_module_of_the_package_has_a_layer():
    graph = layering.import_graph(PACKAGE)

    assert graph, "no module found under harness/"
    unplaced = [m for m in graph if m != "harness" and layering.layer_of(m, harness.LAYERS) is None]
    assert not unplaced, f"modules outside every layer of harness.LAYERS: {unplaced}; add their stage there"


def test_no_import_points_up_a_layer():
    problems = layering.upward_imports(layering.import_graph(PACKAGE), harness.LAYERS)

    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    cycle = layering.find_cycle(layering.import_graph(PACKAGE))

    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The rule seen failing: a copy of the package with one deliberate upward import, and one with a cycle.

def _copy_package(tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "harness"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_deliberate_upward_import_is_named_with_both_modules(tmp_path):
    copy = _copy_package(tmp_path)
    units = copy / "util" / "units.py"
    units.write_text(units.read_text() + "\n\ndef _late():\n    from harness.report.build import write_report\n")

    problems = layering.upward_imports(layering.import_graph(copy), harness.LAYERS)

    assert problems == ["harness.util.units (layer util) imports harness.report.build (layer report), "
                        "a layer above it: move the shared code down, or the importer up"]


def test_a_cycle_within_one_layer_is_found(tmp_path):
    copy = _copy_package(tmp_path)
    lora = copy / "model" / "lora.py"
    lora.write_text(lora.read_text() + "\n\ndef _late():\n    from harness.model import pipeline\n")

    cycle = layering.find_cycle(layering.import_graph(copy))

    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"harness.model.lora", "harness.model.pipeline"} <= set(cycle)


@pytest.mark.parametrize("module, expected", [("harness.model.load", "model"), ("harness.cli", "cli"),
                                              ("harness.families.clip", "families"), ("harness", None)])
def test_layer_of_reads_the_table(module, expected):
    assert layering.layer_of(module, harness.LAYERS) == expected

"""The cases of a test session: recipes turned into cases, each loaded once per process (and counted), and which
tests a case's fixtures reach. Shared by the pytest plugin, the repository's smoke tier and `qlora-harness check`."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from harness.families import DUAL_ENCODER, VLM
from harness.model import pipeline
from harness.recipe import load_recipe

# Fixture names a case can be parametrized under, and which cases each takes.
CASE_FIXTURES: dict[str, Callable[[pipeline.Case], bool]] = {
    "case": lambda c: True,
    "vlm_case": lambda c: c.family.kind == VLM,
    "generating_case": lambda c: c.family.generates,
    "dual_case": lambda c: c.family.kind == DUAL_ENCODER,
}

_loaded: dict[tuple, pipeline.Harnessed] = {}  # keyed by the whole recipe: never another recipe's model
_loads: Counter = Counter()


def recipe_cases(paths, size: str = "tiny", checkpoint: str | Path | None = None) -> list[pipeline.Case]:
    """Return one case per recipe file, on the given checkpoint folder (a synthetic one when None); raise
    HarnessError naming a bad file."""
    folder = Path(checkpoint).expanduser() if checkpoint else None
    out = []
    for path in paths:
        recipe = load_recipe(path)
        out.append(pipeline.case(recipe.family, size, recipe, checkpoint=folder))
    return out


def shared(c: pipeline.Case, cache_dir: Path) -> pipeline.Harnessed:
    """Return the case loaded for this process: loaded on first use, then the same object (read it, do not train it)."""
    if c.key not in _loaded:
        _loaded[c.key] = pipeline.harness(c, cache_dir)
        _loads[c.id] += 1
    return _loaded[c.key]


def load_counts() -> dict[str, int]:
    """Return how many times this process loaded each case through shared(): 1 each, when sharing works."""
    return dict(_loads)


def case_of(params: dict) -> pipeline.Case | None:
    """Return the case among a test's parameters, or None."""
    return next((v for v in params.values() if isinstance(v, pipeline.Case)), None)


def spread_problems(loads: list[tuple[str, str, int]]) -> list[str]:
    """Return what is wrong with (worker, case id, loads in that worker) records of a session: a case loaded more
    than once in a worker, or in more than one worker (its tests were not kept together)."""
    problems = []
    workers: dict[str, set[str]] = {}
    for worker, case_id, count in loads:
        workers.setdefault(case_id, set()).add(worker)
        if count != 1:
            problems.append(f"{case_id}: expected one load per worker, found {count} in {worker}")
    for case_id, names in sorted(workers.items()):
        if len(names) > 1:
            problems.append(f"{case_id}: expected its tests in one worker (one load), found loads in "
                            f"{len(names)} workers: {', '.join(sorted(names))}; run with --dist loadgroup")
    return sorted(set(problems))

"""Named causes: which library's change moves a failing or changed check.

When the two sides differ in more than one library, the gate re-runs the cases of the rows that did not pass on
the reference with one library at a time taken from the candidate (a venv layered over the gate's interpreter,
built from specs as envs.venv_for builds every side) and compares each of those with the reference. The library
whose change alone moves the check is named; when none alone does, the row says that it takes several together.
With one library different there is nothing to re-run: that library is the cause.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.util.errors import HarnessError

from .compare import CHANGED, FAIL, PASS, Row

IN_REFERENCE, IN_CANDIDATE = " in the reference", " in the candidate"  # how carried rows end (gate.artifacts)
TRACKED = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")  # besides the libraries the sides' specs name


def spec_names(specs) -> list[str]:
    """Return the canonical library names of requirement specs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return [canonicalize_name(Requirement(s).name) for s in specs]


def differing(ref: dict, cand: dict, names) -> list[str]:
    """Return the libraries (of names) whose versions differ between two described environments."""
    return [n for n in dict.fromkeys(names) if ref.get(n) != cand.get(n)]


def change(name: str, ref: dict, cand: dict) -> str:
    """Return how a library changed, e.g. 'transformers 4.57.1 → 5.24.0'."""
    return f"{name} {ref.get(name) or 'absent'} → {cand.get(name) or 'absent'}"


def hybrid_specs(library: str, ref: dict, cand: dict, base: dict, names) -> list[str]:
    """Return the specs of the reference with `library` taken from the candidate, as a venv over `base` needs them:
    every tracked library at the reference's version (the candidate's for `library`) where base has another."""
    specs = []
    for name in dict.fromkeys(names):
        want = cand.get(name) if name == library else ref.get(name)
        if want is None:
            if base.get(name) is not None:
                raise HarnessError(f"{name} is absent on one side and installed in the gate's interpreter: a layered "
                                   "venv cannot leave it out")
            continue
        if want != base.get(name):
            specs.append(f"{name}=={want}")
    return specs


@dataclass
class Attempt:
    """One re-run: the reference with one library from the candidate, and its rows against the reference."""

    library: str
    rows: dict[tuple[str, str], Row] | None = None
    error: str = ""


def attribute(rows: list[Row], attempts: list[Attempt], ref: dict, cand: dict) -> None:
    """Set each failing or changed row's cause from the re-runs: the library that alone moves it as the candidate
    does (same status against the reference), by elimination the one that could not be re-run, or several."""
    for row in rows:
        if row.status not in (FAIL, CHANGED) or row.case == "*" or row.cause:
            continue
        moved, unknown = [], []
        for a in attempts:
            if a.rows is None:
                unknown.append(a)
                continue
            again = a.rows.get((row.case, row.check))
            if again is None:
                unknown.append(Attempt(a.library, error=_missing(a, row)))
            elif (again.status == PASS) if row.check.endswith(IN_REFERENCE) else (
                    again.status == row.status and same_way(again.message, row.message)):
                # the reference failing to load the candidate's artifact: the library whose new release, alone,
                # lets it load is what the two differ in; every other row: the library that alone breaks it as well
                moved.append(a.library)
        if len(moved) == 1:
            row.cause = f"{change(moved[0], ref, cand)}: the reference with only this library from the candidate {_as(row)}"
        elif moved:
            row.cause = ("each of " + ", ".join(change(m, ref, cand) for m in moved) + f" alone {_as(row, 'moves it')}")
        elif len(unknown) == 1:
            others = [a.library for a in attempts if a.library != unknown[0].library and a.rows is not None]
            row.cause = (f"{change(unknown[0].library, ref, cand)}, by elimination: "
                         + (f"no one of {', '.join(change(o, ref, cand) for o in others)} alone moves it, and " if others else "")
                         + f"the reference cannot run with this library alone ({unknown[0].error})")
        elif unknown:
            row.cause = ("not found: could not re-run the reference with " +
                         "; ".join(f"{change(a.library, ref, cand)} ({a.error})" for a in unknown))
        else:
            row.cause = ("several libraries together: no one of " + ", ".join(change(a.library, ref, cand) for a in attempts)
                         + " alone moves it")


def _missing(a: Attempt, row: Row) -> str:
    """Return why a re-run has no row for a check: the case raised there (its error), or the check is not re-run."""
    ran = a.rows.get((row.case, "case runs"))
    if ran is not None and " raised " in ran.message:
        return "the case raised " + ran.message.split(" raised ", 1)[1].split(" (the reference raised too", 1)[0]
    if is_carried(row):
        return "a carried artifact's load, not re-run (gate --no-carry, or the load did not run)"
    return "the re-run has no such row"


def same_way(one: str, other: str) -> bool:
    """Return whether two rows' messages say the same failure: their first clause, numbers and quoted lists aside
    (a re-run that breaks a check differently, e.g. another load problem, does not reproduce the candidate's)."""
    import re

    def gist(text: str) -> str:
        first = text.split("; ")[0]
        return re.sub(r"\[[^\]]*\]|\([^)]*\)|[-+]?\d[\d.,e%+-]*", "#", first)

    return gist(one) == gist(other)


def is_carried(row: Row) -> bool:
    """Return whether a row is one of the carry step's (a side loading the other's artifacts)."""
    return row.check.endswith((IN_REFERENCE, IN_CANDIDATE))


def _as(row: Row, verb: str = "") -> str:
    if verb:
        return verb
    if row.check.endswith(IN_REFERENCE):
        return "loads the candidate's artifact"
    return "fails it the same way" if row.status == FAIL else "changes it too"


def single_cause(rows: list[Row], names: list[str], ref: dict, cand: dict) -> None:
    """Set the cause of every failing or changed row when at most one library differs."""
    for row in rows:
        if row.status in (FAIL, CHANGED) and row.case != "*" and not row.cause:
            row.cause = (f"{change(names[0], ref, cand)}, the only library that differs" if names else
                         "no library version differs: the environments differ otherwise (patched or shadowed files, "
                         "the interpreter, the machine)")


def name_causes(rows: list[Row], ref: dict, cand: dict, base: dict, names,
                rerun: Callable[[dict[str, list[str]]], dict[str, list[Row] | str]]) -> list[Attempt]:
    """Name the cause of each failing or changed row and return the re-runs made. ref, cand and base are the library
    versions of the reference, the candidate and the gate's interpreter; rerun({library: specs}) re-runs the
    reference with each library from the candidate and returns, per library, its rows against the reference or
    why it could not run."""
    libraries = differing(ref, cand, names)
    if not any(r.status in (FAIL, CHANGED) and r.case != "*" for r in rows):
        return []
    if len(libraries) <= 1:
        single_cause(rows, libraries, ref, cand)
        return []
    tracked = [n for n in dict.fromkeys(names) if ref.get(n) != base.get(n) or cand.get(n) != base.get(n)]
    attempts, wanted = {}, {}
    for library in libraries:
        attempts[library] = Attempt(library)
        try:
            wanted[library] = hybrid_specs(library, ref, cand, base, tracked)
        except HarnessError as e:
            attempts[library].error = str(e).splitlines()[0]
    for library, found in (rerun(wanted) if wanted else {}).items():
        if isinstance(found, str):
            attempts[library].error = found
        else:
            attempts[library].rows = {(r.case, r.check): r for r in found}
    attribute(rows, list(attempts.values()), ref, cand)
    return list(attempts.values())


def failing_sources(rows: list[Row], facts: dict) -> list[str]:
    """Return the recipe files of the cases that have a failing or changed row, in the facts' order."""
    keys = {r.case for r in rows if r.status in (FAIL, CHANGED)}
    return list(dict.fromkeys(str(Path(e["source"])) for k, e in facts["cases"].items() if k in keys and e.get("source")))

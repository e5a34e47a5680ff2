"""Collect the facts of recipes in this interpreter: `python -m harness.gate.collect --recipe R --out facts.json`.

The gate runs this module in the reference and in the candidate interpreter, with the same harness code on
PYTHONPATH, and compares the two JSON files. `--describe` writes only what the environment is (versions,
CUDA), which the gate needs before it decides who builds the synthetic checkpoints.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

FORMAT = 2  # bump when the facts layout changes; the gate refuses to compare files of different formats


def describe() -> dict:
    """Return what this environment is: interpreter, library versions, CUDA, and where the harness was imported from."""
    import importlib.metadata as md

    import harness
    from harness.model.synth import FORMAT_LIBRARIES
    from harness.util.env import gpu_fingerprint, has_cuda, library_versions

    versions = library_versions()
    for name in FORMAT_LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    # A +cpu build of torch has no CUDA: say so without importing torch (seconds, in every describe).
    torch_version = versions.get("torch") or ""
    cuda = bool(torch_version) and not torch_version.endswith("+cpu") and has_cuda()
    return {"format": FORMAT, "python": sys.executable, "versions": versions, "cuda": cuda,
            "gpu": gpu_fingerprint() if cuda else None, "harness": str(Path(harness.__file__).resolve().parent)}


def plan_cases(recipe_paths: list[str], size: str, checkpoints: dict[str, str]) -> dict:
    """Return {case key: Case} for the recipe files (every family's default when none), keyed by readable case ids."""
    from harness.families import FAMILIES
    from harness.model import pipeline
    from harness.recipe import default_recipe, load_recipe

    recipes = [load_recipe(p) for p in recipe_paths] or [default_recipe(name) for name in FAMILIES]
    cases = [pipeline.case(r.family, size, r, checkpoint=Path(checkpoints[r.family]) if r.family in checkpoints else None)
             for r in recipes]
    ids = [c.id for c in cases]
    keyed = {}
    for c in cases:
        key = c.id if ids.count(c.id) == 1 else f"{c.id} [{c.recipe.name}]"
        if key in keyed:
            from harness.util.errors import HarnessError

            raise HarnessError(f"recipe {c.recipe.source} is given twice (case {key}); give each recipe once")
        keyed[key] = c
    return keyed


def collect(recipe_paths: list[str], size: str, cache_dir: Path, checkpoints: dict[str, str], device: str,
            memory_skip: str | None, prepare: bool = False, artifacts: Path | None = None,
            load_artifacts: Path | None = None, saved_by: str = "other side", tolerance: float = 0.05) -> dict:
    """Return the facts of every case; a case that raises is recorded with its error, and the others still run.

    prepare=True only builds (or finds) each case's checkpoint and records its folder, for the other side to load.
    artifacts: save each case's adapter, merged and 4-bit checkpoints there (phase one of carrying them);
    load_artifacts: instead of the checks, load the artifacts the other side saved there (phase two).
    """
    import time

    from harness.model import pipeline

    from .facts import SKIPPED, case_facts, fact

    def facts_of(key, c):  # the harness's checks, then the training path and the artifacts (gate.trainpath, .artifacts)
        from . import artifacts as carry
        from . import trainpath

        if load_artifacts is not None:  # only generating families train and save artifacts
            return [] if not c.family.generates else carry.load_facts(c, carry.case_folder(load_artifacts, key), saved_by, cache_dir, device, tolerance)
        save = None if artifacts is None else (
            lambda h: carry.save(c, h, carry.case_folder(artifacts, key), cache_dir, device, result["versions"]))
        return (case_facts(c, cache_dir, device, memory_skip) + trainpath.case_facts(c, cache_dir, device, save)
                + carry.fixture_facts(c, cache_dir, device))

    result = {**describe(), "device": device, "size": size, "cases": {}}
    if memory_skip is None and not result["cuda"]:
        memory_skip = "no CUDA GPU"
    for key, c in plan_cases(recipe_paths, size, checkpoints).items():
        entry = {"family": c.family.name, "recipe": c.recipe.name, "source": c.recipe.source, "error": None}
        start = time.perf_counter()
        unavailable = c.family.unavailable()
        if unavailable:  # an architecture this transformers lacks: a fact about the environment, not an error
            entry["facts"] = [fact("architecture available", SKIPPED, None, f"skipped: {unavailable}")]
            entry["seconds"] = 0.0
            result["cases"][key] = entry
            continue
        try:
            entry["checkpoint"] = str(pipeline.checkpoint_of(c, cache_dir, device))
            entry["facts"] = [] if prepare else facts_of(key, c)
        except Exception as e:  # noqa: BLE001 - a broken case is a fact about this environment, not a crash
            entry["error"] = error_line(e)
            entry["facts"] = []
            traceback.print_exc()
        entry["seconds"] = round(time.perf_counter() - start, 2)
        result["cases"][key] = entry
    return result


ERROR_CHARS = 600  # of an exception's message kept in the facts: whole sentences, one line


def missing_library(e: BaseException) -> str | None:
    """Return the library an ImportError says is missing (ModuleNotFoundError's name, transformers' "requires the X
    library"), or None."""
    import re

    if isinstance(e, ModuleNotFoundError) and e.name:
        return e.name.split(".")[0]
    found = re.search(r"requires the (\S+) library", str(e))
    return found.group(1).lower() if found else None


def error_line(e: BaseException) -> str:
    """Return an exception as one line: its type, its whole message (lines joined, cut at a sentence), the library an
    import lacks, and where it was raised."""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    message = " ".join(str(e).split())
    if len(message) > ERROR_CHARS:
        cut = message[:ERROR_CHARS]
        message = (cut[: cut.rfind(". ") + 1] if ". " in cut else cut) + " [...]"
    library = missing_library(e) if isinstance(e, ImportError) else None
    needs = f"needs the {library} library, not installed in this environment: " if library else ""
    place = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {needs}{message}{place}"


def _checkpoint_arg(text: str) -> tuple[str, str]:
    family, sep, folder = text.partition("=")
    if not sep or not family or not folder:
        raise argparse.ArgumentTypeError(f"expected FAMILY=FOLDER, found {text!r}")
    return family, folder


def main(argv: list[str] | None = None) -> int:
    """Run the collector; return the exit status (2 for bad input)."""
    from harness.util.atomic import write_json
    from harness.util.errors import HarnessError

    p = argparse.ArgumentParser(prog="python -m harness.gate.collect", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--describe", action="store_true", help="write only what this environment is")
    p.add_argument("--recipe", action="append", default=[], help="a recipe file (repeatable; default: every family's)")
    p.add_argument("--size", default="tiny")
    p.add_argument("--cache-dir", default=None, help="synthetic checkpoint cache (default: $QLORA_HARNESS_CACHE or ~/.cache)")
    p.add_argument("--checkpoint", action="append", default=[], type=_checkpoint_arg,
                   help="FAMILY=FOLDER: use this checkpoint for the family instead of building one (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-memory", default=None, metavar="REASON", help="do not profile GPU memory, and say why")
    p.add_argument("--prepare", action="store_true", help="only build the checkpoints and record their folders")
    p.add_argument("--artifacts", default=None, metavar="DIR", help="save each case's adapter, merged and 4-bit "
                   "checkpoints under DIR for the other side to load")
    p.add_argument("--load-artifacts", default=None, metavar="DIR", help="load the artifacts the other side saved "
                   "under DIR instead of running the checks")
    p.add_argument("--saved-by", default="other side", help="who saved the artifacts loaded (for the messages)")
    p.add_argument("--tolerance", type=float, default=0.05, help="outputs of loaded artifacts: max |Δ| as a share of std")
    args = p.parse_args(argv)
    try:
        if args.describe:
            write_json(Path(args.out), describe())
            return 0
        from harness.model.synth import default_cache_dir

        cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
        facts = collect(args.recipe, args.size, cache_dir, dict(args.checkpoint), args.device, args.skip_memory,
                        args.prepare, Path(args.artifacts) if args.artifacts else None,
                        Path(args.load_artifacts) if args.load_artifacts else None, args.saved_by, args.tolerance)
        write_json(Path(args.out), facts)
    except HarnessError as e:
        print(f"harness.gate.collect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the gate stops its collectors on Ctrl-C: one line in the log, no traceback
        print("harness.gate.collect: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

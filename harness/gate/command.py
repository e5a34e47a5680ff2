"""`qlora-harness gate`: collect the facts in both environments, compare them, write the verdict, exit 1 on a regression."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from harness.util.errors import HarnessError

from . import artifacts, causes, compare, envs, verdict

DEFAULT_OUT = "gate-verdict"


def add_arguments(p) -> None:
    """Add the gate's options to an argparse parser."""
    side = ("a python executable or virtualenv folder, or requirement specs (e.g. transformers==4.57.1 peft==0.17.1) "
            "for a venv the gate builds over this interpreter and caches; default: this interpreter")
    p.add_argument("--reference", nargs="+", metavar="PYTHON|SPEC", help=f"the environment trusted now: {side}")
    p.add_argument("--candidate", nargs="+", metavar="PYTHON|SPEC", help=f"the environment to vet: {side}")
    p.add_argument("--recipe", action="extend", nargs="+", default=[], metavar="PATH",
                   help="recipe YAML files whose expectations are checked (several after one --recipe, as a shell glob "
                        "gives them, or --recipe repeated; default: every family's default recipe)")
    p.add_argument("--size", default="tiny", help="model size to build the synthetic checkpoints at (default: tiny, CPU)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"where verdict.md and verdict.json go (default: {DEFAULT_OUT})")
    p.add_argument("--tolerance", type=float, default=compare.DEFAULT_TOLERANCE,
                   help="logits: allowed max |Δ| as a share of the reference logits' standard deviation (default: 0.05)")
    p.add_argument("--no-carry", dest="carry", action="store_false",
                   help="do not save adapters and checkpoints for the other side to load (they take disk: a merged "
                        "7B checkpoint is 15 GiB per side at full size)")
    p.add_argument("--cache-dir", default=None, help="synthetic checkpoints and built venvs (default: $QLORA_HARNESS_CACHE "
                                                     "or ~/.cache/qlora-harness)")


class _CollectorFailed(Exception):
    def __init__(self, side: str, message: str, partial: dict[str, dict]):
        super().__init__(message)
        self.side, self.partial = side, partial  # what the other side wrote, for the verdict's versions


def _validate(args) -> list[str]:
    """Return the recipe files to gate, checked here so bad input stops before any environment is built."""
    from harness.families import FAMILIES, check_size, get_family
    from harness.model.preflight import load_checked
    from harness.recipe import RECIPES_DIR
    from harness.util import env
    from harness.util.atomic import check_folder

    if not 0 < args.tolerance < 1:
        raise HarnessError(f"--tolerance {args.tolerance}: expected a share of the logits' spread between 0 and 1, e.g. 0.05")
    if args.reference is None and args.candidate is None:
        raise HarnessError("the gate compares two environments: give --candidate (and --reference, which otherwise is "
                           "this interpreter), e.g. --reference transformers==4.57.1")
    paths = [str(Path(p).absolute()) for p in args.recipe] or [str(RECIPES_DIR / get_family(n).default_recipe) for n in FAMILIES]
    for path in paths:
        family = get_family(load_checked(path).family)
        check_size(family, args.size)
        if args.size != "tiny" and not env.has_cuda():
            raise HarnessError(f"--size {args.size} builds full-size {family.name} checkpoints and needs a CUDA GPU, "
                               "found none; run the gate at --size tiny on CPU")
    check_folder(Path(args.out), "--out")
    if args.cache_dir:
        check_folder(Path(args.cache_dir), "--cache-dir")
    return paths


def _environment(tokens, name: str, cache_dir: Path) -> envs.Environment:
    if tokens is None:
        return envs.Environment(Path(sys.executable))
    python, specs = envs.parse_side(tokens, name)
    return envs.Environment(python) if python else envs.venv_for(specs, cache_dir, say=_say)


def _say(message: str) -> None:
    print(f"qlora-harness gate: {message}", file=sys.stderr, flush=True)


def _collect(step: str, sides: dict[str, envs.Environment], args: list[str], out: Path, pythonpath: Path,
             parallel: bool = False, extra: dict[str, list[str]] | None = None,
             failed: dict[str, str] | None = None) -> dict[str, dict]:
    """Run one step of the collector (describe, prepare or collect) in the named sides; return each one's JSON.

    A side whose collector fails raises _CollectorFailed, or, with `failed` given, is recorded there (side: why)."""
    files = {name: out / "facts" / f"{name}-{step}.json" for name in sides}
    logs = {name: out / "logs" / f"{name}-{step}.log" for name in sides}
    for name, env in sides.items():
        _say(f"{step}: {name} ({env.label}), log {logs[name]}")
        files[name].unlink(missing_ok=True)
    jobs = [(env, ["--out", str(files[n]), *args, *(extra or {}).get(n, [])], logs[n]) for n, env in sides.items()]
    statuses = dict(zip(sides, envs.run_collectors(jobs, pythonpath, parallel)))
    ours = str((envs.harness_path(pythonpath) / "harness").resolve())
    results = {}
    for name in sorted(sides, key=lambda n: n != "reference"):  # a broken reference is reported first
        if statuses[name] != 0 or not files[name].is_file():
            why = (f"the {name} environment ({sides[name].label}) could not run the harness collector (exit status "
                   f"{statuses[name]}); {logs[name]} ends:\n{envs.log_tail(logs[name])}")
            if failed is not None:
                failed[name] = why
                continue
            raise _CollectorFailed(name, why, results)
        results[name] = json.loads(files[name].read_text())
        if results[name].get("harness") != ours:
            raise HarnessError(f"the {name} environment imported the harness from {results[name].get('harness')}, "
                               f"not {ours}; both sides must run this checkout's code")
    return results


def _artifact_folders(out: Path, sides) -> dict[str, Path]:
    """Return each side's artifacts folder under out, emptied: a manifest left from an earlier run must not load."""
    import shutil

    folders = {name: out / "artifacts" / name for name in sides}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    return folders


def checkpoint_builder(ref: dict, cand: dict) -> tuple[str, str]:
    """Return which side builds the shared checkpoints, and why: the older transformers (newer ones load its files)."""
    from packaging.version import Version

    old, new = ref["versions"].get("transformers"), cand["versions"].get("transformers")
    if old and new and Version(new) < Version(old):
        return "candidate", (f"synthetic checkpoints built once by the candidate (transformers {new}) and loaded by both: "
                             f"files saved by a newer transformers may not load in an older one")
    return "reference", (f"synthetic checkpoints built once by the reference (transformers {old}) and loaded by both"
                         + ("" if old == new else ": files saved by a newer transformers may not load in an older one"))


def device_for(ref: dict, cand: dict) -> tuple[str, str | None]:
    """Return the device the checks run on and, when GPU memory is not measured, why."""
    if ref["cuda"] and cand["cuda"]:
        return "cuda", None
    lacking = [n for n, d in (("reference", ref), ("candidate", cand)) if not d["cuda"]]
    return "cpu", "no CUDA GPU" if len(lacking) == 2 else f"no CUDA GPU in the {lacking[0]} environment"


def _name_causes(rows, sides, described, facts, common, args, cache_dir: Path, out: Path, pythonpath: Path,
                 parallel: bool, saves: dict[str, Path]) -> None:
    """Name the library behind each failing or changed row, re-running the reference with one library at a time
    from the candidate where more than one differs (harness.gate.causes). Rows of the carry step are re-run as
    loads too: each such reference loads what each side saved (saves), as that side's loader did."""
    if not any(r.status in (compare.FAIL, compare.CHANGED) and r.case != "*" and not r.cause for r in rows):
        return
    named = list(dict.fromkeys(n for env in sides.values() for n in causes.spec_names(env.specs)))
    names = list(causes.TRACKED) + named
    # A venv's python links to the interpreter it was made from: compare the paths as given, not resolved.
    here = [n for n, env in sides.items() if not env.specs and env.python.absolute() == Path(sys.executable).absolute()]
    base = described[here[0]]["versions"] if here else _collect(
        "describe", {"gate": envs.Environment(Path(sys.executable))}, ["--describe"], out, pythonpath)["gate"]["versions"]

    def with_named(versions: dict, python: Path) -> dict:  # the specs' libraries, which describe may not list
        found = envs.installed(python, named) if named else {}
        return {**versions, **{n: (found.get(n) or {}).get("version") for n in named}}

    ref = with_named(described["reference"]["versions"], sides["reference"].python)
    cand = with_named(described["candidate"]["versions"], sides["candidate"].python)
    base = with_named(base, Path(sys.executable))
    sources = causes.failing_sources(rows, facts["reference"])

    def rerun(wanted: dict[str, list[str]]) -> dict:
        found, hybrids = {}, {}
        for library, specs in wanted.items():
            try:
                hybrids[library] = envs.venv_for(specs, cache_dir, say=_say) if specs else envs.Environment(Path(sys.executable))
            except HarnessError as e:
                found[library] = f"cannot build it: {str(e).splitlines()[0]}"
        recipes = [a for r in sources for a in ("--recipe", r)]
        carried = [a for r in causes.failing_sources([r for r in rows if causes.is_carried(r)], facts["reference"])
                   for a in ("--recipe", r)]
        # On CPU the re-runs go at once, as the sides did; on a GPU one at a time: each holds the machine as a side did.
        failed: dict[str, str] = {}
        got = _collect("cause", {f"reference-with-{library}": env for library, env in hybrids.items()},
                       common + recipes, out, pythonpath, parallel=parallel, failed=failed)
        ran = {library: env for library, env in hybrids.items() if f"reference-with-{library}" not in failed}
        loads = {}  # {saver: {side: facts}}: each hybrid loading what a side saved, as the other side's loader did
        for saver in (n for n in saves if carried):
            tag = f"cause-carry-{saver}"
            loads[saver] = _collect(tag, {f"reference-with-{library}": env for library, env in ran.items()},
                                    common + carried + ["--tolerance", str(args.tolerance),
                                                        "--load-artifacts", str(saves[saver]), "--saved-by", saver],
                                    out, pythonpath, parallel=parallel, failed=failed)
        for library in hybrids:
            side = f"reference-with-{library}"
            if side in failed:
                last = [line for line in failed[side].splitlines() if line.strip()][-1]
                found[library] = f"it did not run, see {out / 'logs'} ({side}-cause*.log): {last.strip()}"
                continue
            kept = {k: v for k, v in facts["reference"]["cases"].items() if k in got[side]["cases"]}
            found[library] = compare.compare({**facts["reference"], "cases": kept}, got[side], args.tolerance)
            if loads:  # as carried_rows names them: "... in the reference" loaded the candidate's, and back
                found[library] += artifacts.carried_rows(loads["candidate"][side], loads["reference"][side])
        return found

    attempts = causes.name_causes(rows, ref, cand, base, names, rerun)
    for a in attempts:
        _say(f"named causes: reference + {causes.change(a.library, ref, cand)}: "
             + (a.error or f"{sum(r.status == compare.FAIL for r in a.rows.values())} fail, "
                           f"{sum(r.status == compare.CHANGED for r in a.rows.values())} changed"))


def run(args) -> int:
    """Run the gate; return 0 when the candidate keeps every check, 1 on a regression (HarnessError for bad input)."""
    from harness.model.synth import default_cache_dir

    recipes = _validate(args)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    from harness.util.atomic import check_folder

    check_folder(cache_dir, "cache folder (--cache-dir or $QLORA_HARNESS_CACHE)")
    sides = {"reference": _environment(args.reference, "reference", cache_dir),
             "candidate": _environment(args.candidate, "candidate", cache_dir)}
    out = Path(args.out)
    for name in verdict.FILES:  # a verdict left from an earlier run must not pass for this one's
        (out / name).unlink(missing_ok=True)
    described: dict[str, dict] = {}
    note = ""
    with tempfile.TemporaryDirectory(prefix="qlora-gate-path-") as tmp:
        pythonpath = envs.harness_path(Path(tmp))
        try:
            described = _collect("describe", sides, ["--describe"], out, pythonpath, parallel=True)
            builder, note = checkpoint_builder(described["reference"], described["candidate"])
            device, memory_skip = device_for(described["reference"], described["candidate"])
            common = ["--size", args.size, "--cache-dir", str(cache_dir), "--device", device,
                      *(["--skip-memory", memory_skip] if memory_skip else []), *[a for r in recipes for a in ("--recipe", r)]]
            prepared = _collect("prepare", {builder: sides[builder]}, common + ["--prepare"], out, pythonpath)[builder]
            shared = dict.fromkeys(f"{e['family']}={e['checkpoint']}" for e in prepared["cases"].values() if e.get("checkpoint"))
            # On CPU nothing is timed, so both sides run at once; GPU memory and times need the machine to themselves.
            common += [a for pair in shared for a in ("--checkpoint", pair)]
            carry = getattr(args, "carry", True)
            saves = _artifact_folders(out.absolute(), sides) if carry else {}
            facts = _collect("collect", sides, common, out, pythonpath, parallel=memory_skip is not None,
                             extra={n: ["--artifacts", str(f)] for n, f in saves.items()})
            rows = compare.compare(facts["reference"], facts["candidate"], args.tolerance)
            checks = common[:common.index("--recipe")] + [a for pair in shared for a in ("--checkpoint", pair)]
            same = compare.same_errors(facts["reference"], facts["candidate"])
            if same:  # not a regression: the input is wrong for both
                key, error = next(iter(same.items()))
                raise HarnessError(f"case {key} raises the same error in both environments, so it is the input, not "
                                   f"the candidate: {error}; fix the recipe or checkpoint (logs in {out / 'logs'})")
            if carry:  # phase two: each side loads what the other saved
                other = {"reference": "candidate", "candidate": "reference"}
                loads = _collect("carry", sides, common + ["--tolerance", str(args.tolerance)], out, pythonpath,
                                 parallel=memory_skip is not None,
                                 extra={n: ["--load-artifacts", str(saves[other[n]]), "--saved-by", other[n]] for n in sides})
                rows += artifacts.carried_rows(loads["reference"], loads["candidate"])
            _name_causes(rows, sides, described, facts, checks, args, cache_dir, out, pythonpath,
                         parallel=memory_skip is not None, saves=saves)
        except _CollectorFailed as e:
            if e.side == "reference":
                raise HarnessError(f"{e}\nfix the reference environment first: the gate has nothing to compare against") from None
            described = described or e.partial
            rows = [compare.Row("*", "environment runs the harness", compare.FAIL, "ran", "failed", str(e))]
    result = verdict.build(rows, *(verdict.side(sides[n].label, described.get(n, {})) for n in ("reference", "candidate")),
                           tolerance=args.tolerance, notes=[note] if note else [])
    md_path, _ = verdict.write(out, result)
    c = result["counts"]
    print(f"qlora-harness gate: {result['verdict'].upper()}: {c['fail']} fail, {c['changed']} changed, {c['pass']} pass, "
          f"{c['skipped']} skipped; verdict in {md_path} and verdict.json")
    for row in rows:
        if row.status == compare.FAIL:
            print(f"  FAIL {row.case}, {row.check}: {row.message}" + (f" — cause: {row.cause}" if row.cause else ""))
    return 1 if compare.regressed(rows) else 0

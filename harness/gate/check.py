"""`qlora-harness check RECIPE`: the harness's checks on recipes in this interpreter, without pytest.

The checks are the gate's (harness.gate.facts), judged in one environment: each check-kind fact passes when it found
no problem. A progress line per check goes to stderr as it is found, then a verdict table (or, with --json, the
report as JSON on stdout). Exit 0 when every check passes, 1 when one fails or a case cannot run, 2 on bad input.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from .facts import CHECK, SKIPPED

PASS, FAIL, RECORDED = "pass", "fail", "recorded"
STYLE = {PASS: "green", FAIL: "bold red", SKIPPED: "yellow", RECORDED: "dim"}


def add_arguments(p) -> None:
    p.add_argument("recipe", nargs="+", help="recipe YAML file(s), e.g. harness/data/recipes/qwen2.5-vl.yaml")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder to load instead of a synthetic model")
    p.add_argument("--size", default="tiny", help="size of the synthetic model (default: tiny, on CPU in seconds)")
    p.add_argument("--cache-dir", default=None, help="synthetic checkpoint cache (default: $QLORA_HARNESS_CACHE or ~/.cache)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of the table")


def result_of(f: dict) -> str:
    """Return pass, fail, skipped or recorded (a value kept for comparing environments, judged only by the gate)."""
    if f["kind"] == CHECK:
        return PASS if f["ok"] else FAIL
    return SKIPPED if f["kind"] == SKIPPED else RECORDED


def check_cases(cases: list, cache_dir: Path, device: str, on_fact=lambda case_id, f: None) -> dict:
    """Return the report of every case: its checks with their results, or the error that stopped it."""
    from . import collect
    from .facts import case_facts

    memory_skip = "qlora-harness check does not profile memory; the GPU tier and the gate do"
    report = {"environment": collect.describe(), "device": device, "cases": []}
    for c in cases:
        entry = {"case": c.id, "recipe": c.recipe.source, "checks": [], "error": None}
        start = time.perf_counter()
        try:
            for f in case_facts(c, cache_dir, device, memory_skip, on_fact=lambda f, c=c: on_fact(c.id, f)):
                entry["checks"].append({"check": f["check"], "result": result_of(f), "shown": f["shown"],
                                        "problems": f["problems"]})
        except Exception as e:  # noqa: BLE001 - a case that cannot run is a failed check, and the others still run
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
        entry["seconds"] = round(time.perf_counter() - start, 2)
        report["cases"].append(entry)
    failed = [e["case"] for e in report["cases"] if e["error"] or any(x["result"] == FAIL for x in e["checks"])]
    report["failed"] = failed
    return report


def _table(report: dict):
    from rich.table import Table

    table = Table(title="qlora-harness check", show_lines=False)
    for column in ("case", "check", "result", "found"):
        table.add_column(column, overflow="fold")
    for entry in report["cases"]:
        for i, x in enumerate(entry["checks"]):
            found = "; ".join(x["problems"]) or x["shown"]
            table.add_row(entry["case"] if i == 0 else "", x["check"], f"[{STYLE[x['result']]}]{x['result']}[/]", found)
        if entry["error"]:
            table.add_row(entry["case"], "(case)", f"[{STYLE[FAIL]}]{FAIL}[/]", entry["error"])
    return table


def run(args) -> int:
    """Run `qlora-harness check`; return the exit status."""
    import json

    from rich.console import Console

    from harness.families import FAMILIES
    from harness.model.load import resolve_checkpoint
    from harness.model.synth import default_cache_dir
    from harness.util import env

    from .collect import plan_cases

    err, out = Console(stderr=True, highlight=False, soft_wrap=True), Console(highlight=False)  # a progress line is one line
    folders = {}
    if args.checkpoint:
        folder = str(resolve_checkpoint(Path(args.checkpoint).expanduser()))  # HarnessError: bad input, exit 2
        folders = {name: folder for name in FAMILIES}
    found = list(plan_cases(args.recipe, args.size, folders).values())  # a bad recipe: HarnessError, exit 2
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(os.environ)
    device = "cuda" if env.has_cuda() else "cpu"

    def progress(case_id: str, f: dict) -> None:
        result = result_of(f)
        err.print(f"[{STYLE[result]}]{result:>8}[/]  {case_id}  {f['check']}: {'; '.join(f['problems']) or f['shown']}")

    report = check_cases(found, cache, device, progress)
    for entry in report["cases"]:
        if entry["error"]:
            err.print(f"[{STYLE[FAIL]}]    fail[/]  {entry['case']}: {entry['error']}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        out.print(_table(report))
        checks = [x for e in report["cases"] for x in e["checks"]]
        counts = {r: sum(x["result"] == r for x in checks) for r in (PASS, FAIL, SKIPPED, RECORDED)}
        out.print(", ".join(f"{n} {r}" for r, n in counts.items() if n) +
                  (f"; failed: {', '.join(report['failed'])}" if report["failed"] else ""))
    return 1 if report["failed"] else 0

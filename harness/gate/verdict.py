"""The gate's verdict: one JSON and one Markdown file, listing every check with both values and both versions."""
from __future__ import annotations

import datetime
from pathlib import Path

from harness.util.atomic import write_json, write_text

from .compare import CHANGED, FAIL, Row, counts, regressed

FILES = ("verdict.json", "verdict.md")
VERSION_ORDER = ("python", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "safetensors", "unsloth")


def side(label: str, description: dict) -> dict:
    """Return one side of a verdict: what the user asked for and what the environment turned out to be."""
    return {"label": label, "python": description.get("python"), "versions": description.get("versions", {}),
            "cuda": description.get("cuda"), "gpu": description.get("gpu")}


def build(rows: list[Row], reference: dict, candidate: dict, tolerance: float, notes: list[str] = ()) -> dict:
    """Return the verdict as plain data: overall pass/fail, counts by status, both sides, notes and every row."""
    return {"verdict": "fail" if regressed(rows) else "pass", "counts": counts(rows), "tolerance": tolerance,
            "reference": reference, "candidate": candidate, "notes": list(notes),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": [r.as_dict() for r in rows]}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(verdict: dict) -> str:
    """Return the verdict as Markdown: summary, versions side by side, failures and changes with causes, all checks."""
    c, ref, cand = verdict["counts"], verdict["reference"], verdict["candidate"]
    total = sum(c.values())
    lines = [f"# qlora-harness gate: {verdict['verdict'].upper()}", "",
             f"{total} checks: {c['pass']} pass, {c['changed']} changed, {c['fail']} fail, {c['skipped']} skipped "
             f"(logits tolerance {verdict['tolerance']:.1%} of the reference's standard deviation).", "",
             f"- reference: `{ref['label']}` ({ref['python']})", f"- candidate: `{cand['label']}` ({cand['python']})", ""]
    names = [n for n in VERSION_ORDER if n in ref["versions"] or n in cand["versions"]]
    names += sorted((set(ref["versions"]) | set(cand["versions"])) - set(names))
    lines += ["| library | reference | candidate |", "|---|---|---|"]
    for n in names:
        old, new = ref["versions"].get(n), cand["versions"].get(n)
        mark = "**" if old != new else ""
        lines.append(f"| {n} | {old or '-'} | {mark}{new or '-'}{mark} |")
    lines += ["", *[f"- {_cell(n)}" for n in verdict["notes"]], ""] if verdict["notes"] else [""]
    for status, title in ((FAIL, "Failures"), (CHANGED, "Changed")):
        chosen = [r for r in verdict["rows"] if r["status"] == status]
        if chosen:
            lines += [f"## {title}", ""] + [f"- **{r['case']}**, {r['check']}: {_cell(r['message'])}"
                                            + (f" — **cause**: {_cell(r['cause'])}" if r.get("cause") else "") for r in chosen] + [""]
    lines += ["## All checks", "", "| case | check | status | reference | candidate |", "|---|---|---|---|---|"]
    for r in verdict["rows"]:
        status = f"**{r['status']}**" if r["status"] == FAIL else r["status"]
        lines.append(f"| {_cell(r['case'])} | {_cell(r['check'])} | {status} | {_cell(r['reference'])} | {_cell(r['candidate'])} |")
    return "\n".join(lines) + "\n"


def write(out_dir: Path, verdict: dict) -> tuple[Path, Path]:
    """Write verdict.json and verdict.md into out_dir, each atomically; return their paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / FILES[0], out_dir / FILES[1]
    write_json(json_path, verdict)
    write_text(md_path, markdown(verdict))
    return md_path, json_path

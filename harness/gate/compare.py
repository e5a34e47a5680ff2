"""Two fact files in, verdict rows out: each check pass, changed, fail or skipped, with both values and the cause.

  fail     the candidate breaks a check, a value that must match differs, logits leave the tolerance, GPU memory
           leaves the baselines' tolerance, or a case that runs in the reference raises in the candidate
  changed  both keep the check but a value moved (a renamed parameter, greedy tokens that part at a near-tie, a
           slower step), or the reference raises where the candidate runs; the message says why it is not a failure
  pass     same value, or the same within tolerance
  skipped  not measured (GPU memory without CUDA)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from harness.util.errors import HarnessError

from . import trainpath
from .facts import ANSWERS, CHECK, FIGURE, LOGITS, MEMORY, SKIPPED, STATUS, TOKENS, decode

PASS, CHANGED, FAIL, SKIP = "pass", "changed", "fail", "skipped"
STATUSES = (FAIL, CHANGED, PASS, SKIP)
UNAVAILABLE = "architecture available"  # the one fact of a case whose family this transformers lacks (gate.collect)
DEFAULT_TOLERANCE = 0.05  # logits: max |Δ| as a share of the reference logits' standard deviation
FIGURE_TOLERANCE = 0.25  # recorded GPU figures (times, host memory) flagged as changed beyond this relative move
SHOW = 3  # names quoted from a list that differs


@dataclass
class Row:
    """One line of a verdict."""

    case: str
    check: str
    status: str
    reference: str
    candidate: str
    message: str = ""
    cause: str = ""  # the library whose change moves this check (harness.gate.causes), when it does not pass

    def as_dict(self) -> dict:
        return asdict(self)


def compare(reference: dict, candidate: dict, tolerance: float = DEFAULT_TOLERANCE) -> list[Row]:
    """Return the verdict rows of two fact files (reference first), case by case in the reference's order."""
    if reference.get("format") != candidate.get("format"):
        raise HarnessError(f"fact files of different formats ({reference.get('format')} vs {candidate.get('format')}): "
                           "both sides must run the same harness code")
    versions = (reference.get("versions", {}), candidate.get("versions", {}))
    rows = []
    ref_cases, cand_cases = reference["cases"], candidate["cases"]
    for key in list(ref_cases) + [k for k in cand_cases if k not in ref_cases]:
        rows += _case_rows(key, ref_cases.get(key), cand_cases.get(key), tolerance, versions)
    return rows


def _case_rows(key: str, ref: dict | None, cand: dict | None, tolerance: float, versions) -> list[Row]:
    if ref is None or cand is None:
        side = "reference" if ref is None else "candidate"
        return [Row(key, "case runs", FAIL, "absent" if ref is None else "ran", "absent" if cand is None else "ran",
                    f"{key}: the {side} collected no facts for this case")]
    if ref.get("error") or cand.get("error"):
        if not cand.get("error"):
            # Fixed in the candidate: nothing to compare with, but the candidate's own checks are still judged.
            rows = [Row(key, "case runs", CHANGED, "raised", "ran",
                        f"{key}: the reference raised {ref['error']}; the candidate runs it (its checks are judged "
                        "on their own below)")]
            for f in cand["facts"]:
                if f["kind"] == CHECK and not f["ok"]:
                    rows.append(Row(key, f["check"], FAIL, "raised", f["shown"], "; ".join(f["problems"])))
            return rows
        also = f" (the reference raised too: {ref['error']})" if ref.get("error") else ""
        return [Row(key, "case runs", FAIL, "raised" if ref.get("error") else "ran", "raised",
                    f"{key}: the candidate raised {cand['error']}{also}")]
    ref_facts = {f["check"]: f for f in ref["facts"]}
    cand_facts = {f["check"]: f for f in cand["facts"]}
    if UNAVAILABLE in cand_facts:  # the candidate's transformers lacks an architecture: the user's model cannot run
        why = cand_facts[UNAVAILABLE]["shown"].removeprefix("skipped: ")
        status = SKIP if UNAVAILABLE in ref_facts else FAIL
        return [Row(key, UNAVAILABLE, status, "lacks it" if status == SKIP else "has it", "lacks it",
                    f"{key}: the candidate cannot build it ({why})")]
    if UNAVAILABLE in ref_facts:  # nothing to compare with: the candidate's own checks are judged alone
        why = ref_facts[UNAVAILABLE]["shown"].removeprefix("skipped: ")
        return [Row(key, UNAVAILABLE, SKIP, "lacks it", "has it",
                    f"{key}: skipped, the reference cannot build it ({why}); the candidate's checks are judged on their own")] + [
            Row(key, f["check"], FAIL, "lacks it", f["shown"], "; ".join(f["problems"]),
                f"not an upgrade difference that a re-run can single out: the reference cannot build this family "
                f"({why}), so this is the candidate's own check, failed there") for f in cand["facts"]
            if f["kind"] == CHECK and not f["ok"]]
    rows = []
    for check in list(ref_facts) + [c for c in cand_facts if c not in ref_facts]:
        r, c = ref_facts.get(check), cand_facts.get(check)
        if r is None or c is None:
            rows.append(Row(key, check, CHANGED, r["shown"] if r else "absent", c["shown"] if c else "absent",
                            f"{check} of {key}: only the {'candidate' if r is None else 'reference'} reports it"))
        else:
            rows.append(compare_fact(key, r, c, tolerance, versions, logits_moved(ref_facts, cand_facts)))
    return rows


def logits_moved(ref_facts: dict, cand_facts: dict) -> float | None:
    """Return the max |Δ| between the two sides' logits facts of a case, None when either lacks them or shapes differ."""
    r, c = ref_facts.get("logits"), cand_facts.get("logits")
    if not r or not c or r["kind"] != LOGITS or r["value"]["shape"] != c["value"]["shape"]:
        return None
    ref = decode(r["value"]["float32_base64"], r["value"]["shape"])
    cand = decode(c["value"]["float32_base64"], c["value"]["shape"])
    return float(abs(cand.astype("f8") - ref.astype("f8")).max()) if ref.size else 0.0


def compare_fact(key: str, ref: dict, cand: dict, tolerance: float = DEFAULT_TOLERANCE, versions=({}, {}),
                 moved: float | None = None) -> Row:
    """Return the row of one check: the two facts judged by their kind."""
    check = ref["check"]
    row = Row(key, check, PASS, ref["shown"], cand["shown"])
    if SKIPPED in (ref["kind"], cand["kind"]):
        row.status, row.message = SKIP, "; ".join(dict.fromkeys(f["shown"] for f in (ref, cand) if f["kind"] == SKIPPED))
    elif ref["kind"] in trainpath.KINDS:  # the training path's sequences, loss series and tensors
        kept, row.reference, row.candidate, row.message = trainpath.judge(check, key, ref, cand, tolerance)
        row.status = PASS if kept else FAIL
    elif ref["kind"] == CHECK:
        _judge_check(row, ref, cand)
    elif ref["kind"] == LOGITS:
        _judge_logits(row, ref["value"], cand["value"], tolerance)
    elif ref["kind"] == TOKENS:
        _judge_tokens(row, ref["value"], cand["value"], moved)
    elif ref["kind"] == ANSWERS:
        _judge_answers(row, ref["value"], cand["value"])
    elif ref["kind"] in (MEMORY, STATUS):
        _judge_memory(row, ref, cand, versions)
    elif ref["kind"] == FIGURE:
        old, new = ref["value"], cand["value"]
        if isinstance(old, (int, float)) and isinstance(new, (int, float)) and old:
            if abs(new / old - 1) > FIGURE_TOLERANCE:
                row.status, row.message = CHANGED, f"{check} of {key}: {ref['shown']} → {cand['shown']} ({new / old - 1:+.0%})"
        elif old != new:
            row.status, row.message = CHANGED, f"{check} of {key}: {ref['shown']} → {cand['shown']}"
    return row


def _judge_check(row: Row, ref: dict, cand: dict) -> None:
    if not cand["ok"]:
        also = f"; the reference breaks it too: {ref['problems'][0]}" if not ref["ok"] else f" (reference: {ref['shown']})"
        row.status, row.message = FAIL, "; ".join(cand["problems"]) + also
        if not ref["ok"]:
            row.cause = "none between the sides: the reference breaks this check too (see the message)"
    elif not ref["ok"]:
        row.status, row.message = CHANGED, f"fixed in the candidate; the reference broke it: {'; '.join(ref['problems'])}"
    elif ref["value"] != cand["value"]:
        if cand.get("must_match"):
            row.status = FAIL
            row.message = f"{row.check} of {row.case}: reference {ref['shown']}, candidate {cand['shown']}"
        else:
            row.status, row.message = CHANGED, f"{row.check} of {row.case}: {_difference(ref, cand)}"


def _difference(ref: dict, cand: dict) -> str:
    old, new = ref["value"], cand["value"]
    if isinstance(old, list) and isinstance(new, list):
        gone, came = [x for x in old if x not in new], [x for x in new if x not in old]
        return (f"{len(gone)} only in the reference ({', '.join(map(str, gone[:SHOW]))}), "
                f"{len(came)} only in the candidate ({', '.join(map(str, came[:SHOW]))})")
    if isinstance(old, dict) and isinstance(new, dict):
        moved = [f"{k} {old.get(k)} → {new.get(k)}" for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
        return ", ".join(moved)
    return f"reference {ref['shown']}, candidate {cand['shown']}"


def _judge_logits(row: Row, old: dict, new: dict, tolerance: float) -> None:
    if old["shape"] != new["shape"]:
        row.status = FAIL
        row.message = f"logits of {row.case}: shape {tuple(old['shape'])} in the reference, {tuple(new['shape'])} in the candidate"
        return
    ref, cand = decode(old["float32_base64"], old["shape"]), decode(new["float32_base64"], new["shape"])
    spread = float(ref.std()) or 1.0
    diff = float(abs(cand.astype("f8") - ref.astype("f8")).max()) if ref.size else 0.0
    row.reference = f"shape {tuple(old['shape'])}, std {spread:.4g}"
    row.candidate = "identical" if diff == 0 else f"max |Δ| {diff:.4g} ({diff / spread:.2%} of std)"
    if diff > tolerance * spread:
        row.status = FAIL
        row.message = (f"logits of {row.case}: the candidate differs from the reference by max |Δ| {diff:.4g}, "
                       f"{diff / spread:.1%} of the reference logits' standard deviation {spread:.4g} "
                       f"(tolerance {tolerance:.1%}) on the same checkpoint and inputs")


def _tokens(value) -> list:
    return value["tokens"] if isinstance(value, dict) else value


def first_difference(ref: list, cand: list) -> tuple[int, int] | None:
    """Return (sample, new token) where two greedy outputs first part, or None if they agree."""
    for b, (r, c) in enumerate(zip(ref, cand)):
        for p, (x, y) in enumerate(zip(r, c)):
            if x != y:
                return b, p
        if len(r) != len(c):
            return b, min(len(r), len(c))
    return None if len(ref) == len(cand) else (min(len(ref), len(cand)), 0)


def _step_difference(ref: dict, cand: dict, b: int, p: int) -> float | None:
    """Return max |Δ| of the two sides' scores at one step over the tokens both recorded there, or None."""
    r = dict(zip(ref["top_ids"][b][p], ref["top_values"][b][p]))
    c = dict(zip(cand["top_ids"][b][p], cand["top_values"][b][p]))
    both = [t for t in r if t in c]
    return max(abs(r[t] - c[t]) for t in both) if both else None


def _judge_tokens(row: Row, ref, cand, moved: float | None) -> None:
    """Differing greedy tokens fail, unless the reference's top-2 margin where they first part is below what the
    prompt logits moved: then the two sides broke a near-tie differently (changed, and the message says so)."""
    at = first_difference(_tokens(ref), _tokens(cand))
    if at is None:
        return
    b, p = at
    where = f"sample {b}, new token {p}"
    margin = step = None
    if (isinstance(ref, dict) and isinstance(cand, dict) and b < len(ref["top_values"]) and b < len(cand["top_values"])
            and p < len(ref["top_values"][b]) and p < len(cand["top_values"][b])):
        values = ref["top_values"][b][p]
        margin = values[0] - values[1] if len(values) > 1 else None
        step = _step_difference(ref, cand, b, p)
    # The excuse is the prompt logits' difference only: a step's scores pass through the logits processors, which a
    # decoding change (temperature, top-k) rescales, so they would excuse the very change this row must catch.
    measured = (f"the logits moved by max |Δ| {moved:.4g}" if moved is not None else "the logits were not compared") + (
        f"; the scores at that step by {step:.4g}" if step is not None else "")
    if margin is not None and moved is not None and margin < moved:
        row.status = CHANGED
        row.message = (f"greedy tokens of {row.case} part at {where}: a near-tie, the reference's top-2 margin there "
                       f"{margin:.4g} is below the logits difference ({measured})")
        return
    row.status = FAIL
    why = (f"the reference's top-2 margin there is {margin:.4g}, not below the logits difference ({measured})"
           if margin is not None else "the reference recorded no scores to tell a near-tie")
    row.message = (f"greedy tokens of {row.case} differ from the reference's at {where}, and not at a near-tie: {why}; "
                   "decoding itself changed (sampling, a logits processor, other special tokens), not the numerics")


def _judge_answers(row: Row, ref: dict, cand: dict) -> None:
    differ = [(task, i, a, (cand.get(task) or [])[i] if i < len(cand.get(task) or []) else None)
              for task, answers in ref.items() for i, a in enumerate(answers)
              if i >= len(cand.get(task) or []) or cand[task][i] != a]
    if differ:
        task, i, old, new = differ[0]
        total = sum(len(a) for a in ref.values())
        row.status = FAIL
        row.message = (f"trained checkpoint answers of {row.case}: {len(differ)} of {total} differ from the reference's "
                       f"(first: {task} question {i}, reference {old!r}, candidate {new!r}); a trained checkpoint has no "
                       "near-ties, so the model or its decoding changed")


def _judge_memory(row: Row, ref: dict, cand: dict, versions) -> None:
    from harness.measure.baselines import compare as compare_baseline

    name = row.check.removeprefix("gpu ")
    problems = compare_baseline({"case": row.case, "versions": versions[1], "figures": {name: cand["value"]}},
                                {"figures": {name: ref["value"]}, "versions": versions[0]})
    if problems:
        row.status, row.message = FAIL, "; ".join(problems).replace("baseline", "reference").replace("measured", "candidate")


def _without_place(error: str) -> str:
    return error.rsplit(" (at ", 1)[0].strip()


def same_errors(reference: dict, candidate: dict) -> dict[str, str]:
    """Return {case: error} for the cases that raise the same error on both sides: bad input, not a regression."""
    ref, cand = reference.get("cases", {}), candidate.get("cases", {})
    return {key: _without_place(r["error"]) for key, r in ref.items()
            if r.get("error") and key in cand and cand[key].get("error")
            and _without_place(r["error"]) == _without_place(cand[key]["error"])}


def counts(rows: list[Row]) -> dict[str, int]:
    """Return how many rows have each status."""
    return {s: sum(1 for r in rows if r.status == s) for s in STATUSES}


def regressed(rows: list[Row]) -> bool:
    """Return whether any row fails."""
    return any(r.status == FAIL for r in rows)

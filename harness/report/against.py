"""One GPU run's gated memory figures beside the baselines', as a Markdown table: how each side was measured (how
many processes shared the GPU), every figure's difference, and whether it is within the 0.5% that a run on several
workers must keep to a serial run of the same cases (issue 20).

The run's side is what `pytest -m gpu --results-dir RESULTS` wrote: RESULTS/<gpu fingerprint>/<case>.json, the same
records the baselines hold (harness.measure.baselines). Written at the end of such a session
(harness.plugin.against_baselines) and by `qlora-harness against-baselines RESULTS`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.measure import baselines
from harness.util.atomic import write_text
from harness.util.errors import HarnessError
from harness.util.units import GiB, MiB

SAME_RUN_AGREEMENT = 0.005  # relative: a parallel run's memory figures against the same cases run serially
FILE = "against-baselines.md"  # written into RESULTS/<gpu>/
STATUS = "status_"


def gated(name: str) -> bool:
    """Return whether a figure is one the baselines gate and this table compares: allocated bytes, or a status."""
    return name.startswith(baselines.GATED_PREFIXES) and (name.endswith("_bytes") or name.startswith(STATUS))


@dataclass
class Row:
    """One gated figure of one case, as this run and the baseline measured it (None: the record lacks it)."""

    case: str
    figure: str
    run: int | str | None
    baseline: int | str | None

    @property
    def is_status(self) -> bool:
        return self.figure.startswith(STATUS)

    @property
    def difference_bytes(self) -> int | None:
        """Return run minus baseline in bytes, None for a status or a figure one side lacks."""
        if self.is_status or self.run is None or self.baseline is None:
            return None
        return self.run - self.baseline

    @property
    def relative(self) -> float | None:
        """Return the difference relative to the baseline, None where there is none to take."""
        diff = self.difference_bytes
        return None if diff is None or not self.baseline else diff / self.baseline

    @property
    def agrees(self) -> bool:
        """Return whether the run keeps to the baseline: a status the same, bytes within SAME_RUN_AGREEMENT."""
        if self.is_status or self.run is None or self.baseline is None:
            return self.run == self.baseline
        return abs(self.run - self.baseline) <= SAME_RUN_AGREEMENT * abs(self.baseline)


def rows(run: dict[str, dict], base: dict[str, dict]) -> list[Row]:
    """Return a row per gated figure of every case in both (by case id), figures either side has."""
    found = []
    for case in sorted(run.keys() & base.keys()):
        ours, theirs = run[case]["figures"], base[case]["figures"]
        for name in sorted(n for n in ours.keys() | theirs.keys() if gated(n)):
            found.append(Row(case, name, ours.get(name), theirs.get(name)))
    return found


def measured_as(records: list[dict]) -> str:
    """Return how a side's records were measured: 'serial', 'N workers sharing the GPU', or 'workers not recorded'
    (records written before they said; the older baselines)."""
    recorded = sorted({r["workers"] for r in records if r.get("workers") is not None})
    missing = sum(1 for r in records if r.get("workers") is None)
    if not recorded:
        return "workers not recorded"
    if recorded == [1]:
        text = "serial"
    else:
        text = f"{', '.join(map(str, recorded))} workers sharing the GPU"
    return text + (f" ({missing} of {len(records)} cases: workers not recorded)" if missing else "")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}%"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:+.1f}"


def _value(value) -> str:
    if value is None:
        return "missing"
    return value if isinstance(value, str) else f"{value / GiB:.3f}"


def _with_unit(value) -> str:
    return f"{_value(value)} GiB" if isinstance(value, int) else _value(value)


def _cases(names) -> str:
    names = sorted(names)
    return f"{len(names)} ({', '.join(names)})" if names else "none"


def summary(found: list[Row], run: dict[str, dict], base: dict[str, dict]) -> str:
    """Return the one-line summary: how many figures agree, the largest difference, cases on one side only."""
    both = len(run.keys() & base.keys())
    agree = sum(r.agrees for r in found)
    text = (f"{len(found)} gated figures of {both} cases: {agree} within {SAME_RUN_AGREEMENT:.1%} of the baselines "
            f"({measured_as(list(base.values()))})")
    sized = [r for r in found if r.relative is not None]
    if sized:
        top = max(sized, key=lambda r: abs(r.relative))
        text += (f", largest difference {_percent(top.relative)} ({top.case}, {top.figure}, "
                 f"{_mib(top.difference_bytes)} MiB)")
    else:
        text += ", largest difference: none measured on both sides"
    changed = [r for r in found if not r.agrees and r.relative is None]
    if changed:
        text += "; changed or missing: " + ", ".join(f"{r.case} {r.figure} {_with_unit(r.baseline)} -> "
                                                     f"{_with_unit(r.run)}" for r in changed)
    return (text + f"; cases only in the run: {_cases(run.keys() - base.keys())}; "
            f"only in the baselines: {_cases(base.keys() - run.keys())}")


def against(run: dict[str, dict], base: dict[str, dict], gpu: str, run_from: str = "",
            base_from: str = "") -> tuple[str, str]:
    """Return (Markdown, summary line) comparing a run's records with the baselines', both keyed by case id.

    run_from and base_from name where each side was read (shown in the header)."""
    found = rows(run, base)
    line = summary(found, run, base)
    head = ["case", "figure", "this run GiB", "baseline GiB", "difference MiB", "difference %",
            f"within {SAME_RUN_AGREEMENT:.1%}"]
    lines = [f"# This run against the baselines on {gpu}", "",
             f"- this run: {len(run)} cases, {measured_as(list(run.values()))}" + (f"; {run_from}" if run_from else ""),
             f"- baselines: {len(base)} cases, {measured_as(list(base.values()))}"
             + (f"; {base_from}" if base_from else ""),
             f"- compared: every gated figure (allocated bytes {', '.join(baselines.GATED_PREFIXES[:-1])}; "
             f"statuses equal or not) of the cases on both sides; the bar is {SAME_RUN_AGREEMENT:.1%}, what a "
             "parallel run must keep to a serial one (the gate's own tolerance is wider: "
             f"{baselines.MEMORY_TOLERANCE:.0%}, at least {baselines.MEMORY_FLOOR // MiB} MiB)",
             "", line, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in found:
        verdict = ("same" if r.agrees else "**different**") if r.is_status else ("yes" if r.agrees else "**no**")
        lines.append(f"| {r.case} | {r.figure} | {_value(r.run)} | {_value(r.baseline)} | "
                     f"{_mib(r.difference_bytes)} | {_percent(r.relative)} | {verdict} |")
    return "\n".join(lines) + "\n", line


def run_records(folder: Path) -> dict[str, dict]:
    """Return the case records in one GPU's folder of a results dir, by case id: the JSON files whose record names
    that folder's GPU (other JSON there, such as a seed experiment's, is not a case record)."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HarnessError(f"{path} is not valid JSON ({e}); rerun the GPU tier with --results-dir, or remove "
                               "the file") from None
        if (isinstance(data, dict) and data.get("gpu") == folder.name and isinstance(data.get("case"), str)
                and isinstance(data.get("figures"), dict)):
            found[data["case"]] = data
    return found


def baseline_records(folder: Path) -> dict[str, dict]:
    """Return the baselines of one GPU, by case id (a corrupt one raises, naming its file)."""
    return {record["case"]: record for path in sorted(Path(folder).glob("*.json"))
            if (record := baselines.read_baseline(path)) is not None}


def gpu_folders(results: Path) -> list[Path]:
    """Return the folders of a results dir that hold a GPU's case records (RESULTS/<gpu>/), or the folder itself
    when it is one."""
    results = Path(results)
    if run_records(results):
        return [results]
    return [d for d in sorted(results.iterdir()) if d.is_dir() and run_records(d)] if results.is_dir() else []


def write(results: Path, baselines_root: Path, out: Path | None = None) -> list[tuple[Path, str]]:
    """Write the table of every GPU a results dir has records of (RESULTS/<gpu>/against-baselines.md, or out);
    return (file, summary line) for each. [] when the folder holds no records. Raise, naming the folder and what
    to pass, when the baselines hold nothing for that GPU or out is given for several GPUs."""
    folders = gpu_folders(results)
    if out is not None and len(folders) > 1:
        raise HarnessError(f"{results} holds the records of {len(folders)} GPUs ({', '.join(f.name for f in folders)})"
                           f": give one GPU's folder, e.g. {folders[0]}, with --out")
    written = []
    for folder in folders:
        gpu = folder.name
        base_folder = Path(baselines_root) / gpu
        base = baseline_records(base_folder)
        if not base:
            raise HarnessError(f"no baselines for GPU {gpu} in {base_folder}: pass the baselines folder that holds "
                               "<gpu>/<case>.json (--baselines to the command, --baselines-dir to pytest; the "
                               "project's baselines/ by default), or write them with pytest -m gpu --update-baselines")
        text, line = against(run_records(folder), base, gpu, str(folder), str(base_folder))
        path = Path(out) if out is not None else folder / FILE
        write_text(path, text)
        written.append((path, line))
    return written

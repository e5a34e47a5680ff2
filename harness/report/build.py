"""`qlora-harness report`: saved results -> report.md with PNG plots, each plot drawn from the table printed above it.

Two kinds of input are read from the folders given: the results of `qlora-harness run` (one JSON per experiment,
its arms under "records") and GPU profile records (results/<gpu>/*.json, one case each), grouped by workload.
Every chart is one Chart: its table and its PNG are both rendered from chart.series, so they cannot disagree.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.util.atomic import check_folder, staged_folder, write_text
from harness.util.errors import HarnessError
from harness.util.units import GiB

from .table import batch_sizes, versions_line

COMPONENTS = ("weights", "adapters", "gradients + optimizer", "activations", "total (peak)")


@dataclass
class Chart:
    """A plot and its table: x values, and per series one y value per x (None: not measured, or OOM)."""

    name: str  # PNG file stem
    title: str
    x_label: str
    y_label: str
    kind: str  # "line", "bars" (grouped) or "stacked"
    x: list
    series: dict = field(default_factory=dict)
    marks: dict = field(default_factory=dict)  # (series, x) -> text shown instead of a value, e.g. OOM
    fmt: str = ".2f"

    def cell(self, label: str, i: int) -> str:
        value = self.series[label][i]
        return self.marks.get((label, self.x[i]), "—") if value is None else format(value, self.fmt)

    def table(self) -> str:
        head = [self.x_label] + [str(x) for x in self.x]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([label] + [self.cell(label, i) for i in range(len(self.x))]) + " |"
                  for label in self.series]
        return "\n".join(lines) + "\n"


# ---- reading results -------------------------------------------------------------------------------------------

def load_results(folders) -> tuple[list[dict], list[dict]]:
    """Return (experiment results, profile records) found in the folders' JSON files (subfolders included)."""
    experiments, profiles = [], []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise HarnessError(f"results folder {folder} does not exist; give folders that `qlora-harness run` or "
                               "`pytest -m gpu --results-dir` wrote")
        for path in sorted(folder.rglob("*.json")):
            if any(part.startswith(".") or part == "merged" for part in path.relative_to(folder).parts):
                continue
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise HarnessError(f"{path}: not a results JSON ({e}); remove it or fix it") from None
            if isinstance(data, dict) and "experiment" in data and "records" in data:
                _require(data, EXPERIMENT_FIELDS, path)
                for i, record in enumerate(data["records"]):
                    _require(record, RECORD_FIELDS, path, f"records[{i}].")
                experiments.append({**data, "source": str(path)})
            elif isinstance(data, dict) and "case" in data and "figures" in data and "error" not in data:
                _require(data, PROFILE_FIELDS, path)
                profiles.append({**data, "source": str(path)})
    return experiments, profiles


# What a results file must hold for its section to be drawn, and of what type.
EXPERIMENT_FIELDS = {"experiment": str, "title": str, "recipe": str, "size": str, "kind": str, "records": list}
RECORD_FIELDS = {"case": str, "variant": str, "label": str, "model_size": str, "status": str, "backend": str,
                 "figures": dict}
PROFILE_FIELDS = {"case": str, "figures": dict}


def _require(data, required: dict, path: Path, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: {prefix.rstrip('.') or 'the file'} is a {type(data).__name__}, not a record; "
                           "it is not a results file: remove it or fix it")
    for key, kind in required.items():
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise HarnessError(f"{path}: field {prefix}{key} should be a {kind.__name__}, found {found}; it is not a "
                               "results file `qlora-harness run` or `pytest -m gpu --results-dir` wrote: remove it or fix it")


def _section_of(sources, build, *args):
    """Return build(*args); a results file that holds the fields but not their contents is named, not a traceback."""
    try:
        return build(*args)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"field {e.args[0]!r} missing" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
        raise HarnessError(f"{', '.join(map(str, sources))}: cannot be reported ({what}); it is not a results file "
                           "this harness wrote: remove it or fix it") from None


def join_parts(results: list[dict]) -> list[dict]:
    """Return the experiment results with the parts of one run joined: a run split over sessions (`qlora-harness run
    --model-size`) is one result per experiment, size, GPU and library versions, its arms in the experiment's
    model-size order. An arm found in two parts keeps the later file's record."""
    from harness.tasks import experiments as seeds

    joined: dict[tuple, dict] = {}
    for result in results:
        key = (result["experiment"], result["size"], result.get("gpu"), json.dumps(result.get("versions"), sort_keys=True))
        whole = joined.setdefault(key, {**result, "records": [], "sources": [], "complete": True})
        arms = {(r["model_size"], r["variant"]): r for r in whole["records"]}
        arms.update({(r["model_size"], r["variant"]): r for r in result["records"]})
        whole["records"] = list(arms.values())
        whole["sources"].append(result["source"])
        whole["complete"] = whole["complete"] and result.get("complete", False)
    for whole in joined.values():
        exp = seeds.EXPERIMENTS.get(whole["experiment"])
        if exp is not None:
            order = list(exp.sizes.get(whole["size"], ())) + [v.name for v in exp.variants]
            whole["records"].sort(key=lambda r: (_index(order, r["model_size"]), _index(order, r["variant"])))
    return list(joined.values())


def _index(order: list, item) -> int:
    return order.index(item) if item in order else len(order)


def workload(record: dict) -> str:
    """Return the workload a profile record measured, e.g. 'qwen2.5-vl-7b' (family and size, no recipe)."""
    family = record.get("recipe", {}).get("family")
    if family:
        found = re.match(re.escape(family) + r"-(.+?)-(nf4|fp4|bf16)", record["case"])
        if found:
            return f"{family}-{found.group(1)}"
    return re.split(r"-(nf4|fp4|bf16)", record["case"])[0]


def label(record: dict) -> str:
    """Return a record's row label: its variant's label, or its case id."""
    if record.get("label"):
        return record["label"]
    from harness.measure.variants import VARIANTS

    name = record["case"].partition("--")[2]
    return VARIANTS[name].label if name in VARIANTS else (name or "recipe (GPU tier)")


def _gib(value):
    return None if value is None else value / GiB


def _in_readable_unit(chart: "Chart") -> "Chart":
    """Return the chart with its GiB values shown in MiB when all are below half a GiB (tiny models)."""
    values = [v for s in chart.series.values() for v in s if v is not None]
    if values and max(values) < 0.5:
        chart.series = {k: [None if v is None else v * 1024 for v in s] for k, s in chart.series.items()}
        chart.y_label = chart.y_label.replace("GiB", "MiB")
        chart.title = chart.title + " (MiB)"
    return chart


# ---- charts ----------------------------------------------------------------------------------------------------

def vram_by_batch(name: str, title: str, rows: list[tuple[str, dict]]) -> Chart | None:
    """Return peak VRAM (GiB) against batch size, a line per row; None when no row measured VRAM."""
    sizes = sorted({n for _, f in rows for n in batch_sizes(f)})
    chart = Chart(name, title, "batch size", "peak VRAM GiB", "line", sizes)
    for lab, f in rows:
        chart.series[lab] = [_gib(f.get(f"peak_allocated_bs{n}_bytes")) if f.get(f"status_bs{n}") == "ok" else None
                             for n in sizes]
        chart.marks.update({(lab, n): f[f"status_bs{n}"].upper() for n in sizes
                            if f.get(f"status_bs{n}") not in (None, "ok")})
    return _in_readable_unit(chart) if any(v is not None for s in chart.series.values() for v in s) else None


def static_dynamic(name: str, title: str, rows: list[tuple[str, dict]]) -> Chart | None:
    """Return stacked bars at the largest batch every row ran: static, adapters + gradients + optimizer, activations."""
    common = [n for n in sorted({n for _, f in rows for n in batch_sizes(f)})
              if all(f.get(f"status_bs{n}") == "ok" and f.get(f"activations_bs{n}_bytes") is not None for _, f in rows)]
    if not common or not rows:
        return None
    n = common[-1]
    chart = Chart(name, f"{title} (batch {n})", "variant", "GiB", "stacked", [lab for lab, _ in rows])
    chart.series["static"] = [_gib(f["static_allocated_bytes"]) for _, f in rows]
    chart.series["adapters + gradients + optimizer"] = [_gib(f[f"optimizer_and_adapters_bs{n}_bytes"]) for _, f in rows]
    chart.series["activations"] = [_gib(f[f"activations_bs{n}_bytes"]) for _, f in rows]
    return _in_readable_unit(chart)


def estimate_vs_measured(name: str, title: str, rows: list[tuple[str, dict, dict]]) -> Chart | None:
    """Return grouped bars of the estimated and the measured peak (GiB) per row; rows are (label, figures, estimates
    by batch size). Each row is compared at its largest batch with both figures."""
    x, est, meas = [], [], []
    for lab, f, estimates in rows:
        ok = [n for n in batch_sizes(f) if f.get(f"status_bs{n}") == "ok" and f.get(f"peak_allocated_bs{n}_bytes")
              and str(n) in estimates]
        if ok:
            n = ok[-1]
            x.append(f"{lab}, bs{n}")
            est.append(_gib(estimates[str(n)]["total_bytes"]))
            meas.append(_gib(f[f"peak_allocated_bs{n}_bytes"]))
    if not x:
        return None
    return _in_readable_unit(Chart(name, title, "arm", "peak GiB", "bars", x, {"estimate": est, "measured": meas}))


def budget(name: str, title: str, f: dict, estimates: dict) -> Chart | None:
    """Return the memory budget by part at the largest batch: the estimate beside the measured figure (GiB)."""
    ok = [n for n in batch_sizes(f) if str(n) in estimates]
    if not ok:
        return None
    n = ok[-1]
    e = estimates[str(n)]
    measured_opt = (None if f.get(f"optimizer_and_adapters_bs{n}_bytes") is None or f.get("adapter_bytes") is None
                    else f[f"optimizer_and_adapters_bs{n}_bytes"] - f["adapter_bytes"])
    measured = [f.get("static_allocated_bytes"), f.get("adapter_bytes"), measured_opt,
                f.get(f"activations_bs{n}_bytes"), f.get(f"peak_allocated_bs{n}_bytes")]
    estimated = [e["weights_bytes"], e["adapters_bytes"], e["gradients_bytes"] + e["optimizer_bytes"],
                 e["activations_bytes"] + e.get("logits_bytes", 0), e["total_bytes"]]
    chart = Chart(name, f"{title} (batch {n})", "part", "GiB", "bars", list(COMPONENTS),
                  {"estimate": [_gib(v) for v in estimated], "measured": [_gib(v) for v in measured]})
    chart.marks.update({("measured", c): "no GPU" for c, v in zip(COMPONENTS, measured) if v is None})
    return _in_readable_unit(chart)


def by_rank(name: str, title: str, records: list[dict], value, y_label: str, fmt: str = ".2f") -> Chart | None:
    """Return value(record) of the rank-ablation arms against the rank, a line per model size and optimizer."""
    ranks = sorted({r["recipe"]["lora"]["r"] for r in records})
    chart = Chart(name, title, "LoRA rank", y_label, "line", ranks, fmt=fmt)
    for r in records:
        key = f"{r['model_size']}, {r['recipe']['training']['optimizer']}"
        chart.series.setdefault(key, [None] * len(ranks))
        chart.series[key][ranks.index(r["recipe"]["lora"]["r"])] = value(r)
    if not any(v is not None for s in chart.series.values() for v in s):
        return None
    return _in_readable_unit(chart) if "GiB" in y_label else chart


def _at_largest_batch(figure: str, scale: float = 1.0):
    def value(r: dict):
        f = r.get("figures", {})
        sizes = batch_sizes(f)
        v = f.get(figure.format(n=sizes[-1])) if sizes else None
        return None if v is None else v / scale
    return value


def _estimated_peak(r: dict):
    estimates = record_estimates(r)
    return _gib(estimates[max(estimates, key=int)]["total_bytes"]) if estimates else None


# ---- sections --------------------------------------------------------------------------------------------------

_meta_cache: dict = {}


def profile_estimates(record: dict) -> dict:
    """Return the memory estimate of a GPU profile record by batch size, from its recipe and its family size's config
    (meta device); {} when the record lacks a full recipe (Unsloth's) or its step token counts, or when this
    transformers cannot build the family (SmolVLM's processor without torchvision under 4.57)."""
    from harness.families import get_family
    from harness.measure import estimate
    from harness.recipe import parse_recipe

    data = {k: v for k, v in record.get("recipe", {}).items() if k != "source"}
    if "quantization" not in data:
        return {}
    recipe = parse_recipe(data, source=record["case"])
    family = get_family(recipe.family)
    if family.unavailable():
        return {}
    size = workload(record)[len(family.name) + 1:]
    key = (family.name, size, json.dumps(data, sort_keys=True))
    if key not in _meta_cache:
        _meta_cache[key] = estimate.meta_counts(family, size, recipe)
    c = _meta_cache[key]
    version = record.get("versions", {}).get("transformers")  # the estimate follows the version that ran
    out = {}
    for step in record.get("steps", []):
        if step.get("status") == "ok" and step.get("tokens"):
            n = step["batch_size"]
            per_sample = step["tokens"] // n
            text = per_sample if family.kind == "dual-encoder" else None
            out[str(n)] = estimate.estimate(family, c["config"], recipe, c["weights_bytes"], c["trainable_params"],
                                            n, per_sample, text, transformers_version=version,
                                            checkpointable_roles=c["checkpointable_roles"]).as_dict()
    return out


def record_estimates(record: dict) -> dict:
    """Return a record's estimate by batch size from today's estimate code (its recipe on the meta device); the one
    stored in the record when its recipe cannot be re-read (Unsloth's arms) or its family cannot be built here."""
    if record.get("backend", record.get("recipe", {}).get("backend", "peft")) != "peft":
        return record.get("estimates", {})
    return profile_estimates(record) or record.get("estimates", {})


def _arm_summary(records: list[dict]) -> str:
    head = ["arm", "model", "status", "trainable params (%)", "audit", "loss first → last", "result",
            "step ms by batch", "tokens/s by batch", "host RSS GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        f = r.get("figures", {})
        sizes = batch_sizes(f)
        losses = r.get("losses") or []
        trainable = (f"{r['trainable_params']:,} ({r['trainable_percent']:.3f}%)" if "trainable_percent" in r
                     else (f"{r['trainable_params']:,}" if r.get("trainable_params") else "—"))
        audit = "—" if "violations" not in r else ("ok" if not r["violations"] else f"{len(r['violations'])} problems")
        rss = [f.get(f"host_rss_bs{n}_bytes") for n in sizes if f.get(f"host_rss_bs{n}_bytes")]
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or 'see JSON'}"
        cells = [r["label"], r["model_size"], status, trainable, audit,
                 f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else "—", _result(r),
                 " / ".join(f"{n}: {f[f'step_time_bs{n}_ms']:.0f}" for n in sizes if f.get(f"step_time_bs{n}_ms")) or "—",
                 " / ".join(f"{n}: {f[f'tokens_per_s_bs{n}']:,.0f}" for n in sizes if f.get(f"tokens_per_s_bs{n}"))
                 or "—", f"{max(rss) / GiB:.2f}" if rss else "—"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _result(r: dict) -> str:
    parts = []
    if "few_shot" in r:
        fs = r["few_shot"]
        parts.append(f"{fs['task']} accuracy {fs['zero_shot_accuracy']:.2f} → {fs['few_shot_accuracy']:.2f} "
                     f"({fs['shots_per_class']} shots/class)")
    box, point = r.get("grounding", {}).get("box"), r.get("grounding", {}).get("point")
    if box:
        parts.append(f"box IoU {box['mean_iou']:.2f}, parsed {box['parsed']:.0%}, IoU≥0.5 {box['iou_at_least_0.5']:.0%}, "
                     f"format round trip IoU ≥ {box['target_round_trip_min_iou']:.2f}")
    if point:
        parts.append(f"point in box {point['in_box']:.0%}, parsed {point['parsed']:.0%}, mean distance "
                     f"{point['mean_distance']:.2f} of the diagonal, format round trip ≤ "
                     f"{point['target_round_trip_max_distance']:.3f}")
    if "merge" in r:
        m = r["merge"]
        for dtype in ("bfloat16", "float32"):
            d = m.get(dtype, {})
            parts.append(f"merged {dtype}: " + (d["skipped"] if "skipped" in d else
                         f"max Δlogit {d['max_abs_logit_delta_over_std']:.3f} σ (mean {d['mean_abs_logit_delta_over_std']:.4f}), "
                         f"same greedy tokens {'yes' if d['same_greedy_tokens'] else 'no'}"))
        parts.append(f"the adapter moves logits up to {m['adapter_effect_over_std']:.2f} σ and weights up to "
                     f"{m['largest_delta_over_weight']:.2%} (bf16 resolution {m['bf16_resolution']:.2%})"
                     + (": under it, a bf16 merge rounds much of the adapter away; merge in float32 or serve the "
                        "adapter unmerged" if m["largest_delta_over_weight"] < m["bf16_resolution"] else ""))
    if "generation" in r:
        parts.append(f"generation on {r['generation'].get('image', 'an image')}: deterministic "
                     f"{'yes' if r['generation']['deterministic'] else 'no'}")
    return "; ".join(parts) or "—"


def experiment_section(result: dict, name: str | None = None) -> tuple[str, list[Chart]]:
    """Return the Markdown of one experiment's results and the charts it shows (their files named after name, by
    default the experiment's)."""
    name, records = name or result["experiment"], result["records"]
    where = f"GPU {result['gpu']}" if result.get("gpu") else "CPU (no VRAM figures: GPU only)"
    settings = ", ".join(f"{k} {v}" for k, v in result.get("settings", {}).items() if v not in ("", None))
    text = [f"## {result['title']}", "",
            f"`{result['recipe']}` at {result['size']} size on {where}; {versions_line(result)}; {settings}."
            + ("" if result.get("complete") else " **Incomplete: the run stopped before its last arm.**")
            + " Results: " + ", ".join(f"`{Path(s).name}`" for s in result.get("sources", [result.get("source", "")]))
            + ".", "",
            _arm_summary(records)]
    ok = [r for r in records if r["status"] == "ok"]
    charts = [vram_by_batch(f"{name}-vram", f"{name}: peak VRAM by batch size",
                            [(f"{r['label']} ({r['model_size']})", r["figures"]) for r in ok]),
              static_dynamic(f"{name}-static-dynamic", f"{name}: static vs dynamic VRAM",
                             [(f"{r['label']} ({r['model_size']})", r["figures"]) for r in ok if r["backend"] == "peft"]),
              estimate_vs_measured(f"{name}-estimate", f"{name}: estimated vs measured peak",
                                   [(f"{r['label']} ({r['model_size']})", r["figures"], record_estimates(r))
                                    for r in ok])]
    if result["kind"] == "ablation":
        charts += [by_rank(f"{name}-rank-vram", f"{name}: measured peak VRAM by rank", ok,
                           _at_largest_batch("peak_allocated_bs{n}_bytes", GiB), "peak VRAM GiB"),
                   by_rank(f"{name}-rank-estimate", f"{name}: estimated peak by rank", ok, _estimated_peak,
                           "estimated peak GiB"),
                   by_rank(f"{name}-rank-time", f"{name}: step time by rank", ok,
                           _at_largest_batch("step_time_bs{n}_ms"), "step time ms", ",.0f"),
                   by_rank(f"{name}-rank-throughput", f"{name}: tokens/s by rank", ok,
                           _at_largest_batch("tokens_per_s_bs{n}"), "tokens/s", ",.0f")]
    if result["kind"] == "grounding" and ok:
        charts.append(budget(f"{name}-budget", f"{name}: memory budget, estimate vs measured", ok[0]["figures"],
                             record_estimates(ok[0])))
    return "\n".join(text), [c for c in charts if c is not None]


def profile_section(name: str, records: list[dict]) -> tuple[str, list[Chart]]:
    """Return the Markdown of one workload's GPU profile records (variants side by side) and its charts."""
    rows = [(label(r), r["figures"]) for r in records]
    first = records[0]
    text = [f"## {name} (GPU profiles)", "",
            f"GPU {first.get('gpu')}; {versions_line(first)}; records: "
            + ", ".join(f"`{Path(r['source']).name}`" for r in records) + ".", ""]
    charts = [vram_by_batch(f"{name}-vram", f"{name}: peak VRAM by batch size", rows),
              static_dynamic(f"{name}-static-dynamic", f"{name}: static vs dynamic VRAM", rows),
              estimate_vs_measured(f"{name}-estimate", f"{name}: estimated vs measured peak",
                                   [(label(r), r["figures"], profile_estimates(r)) for r in records])]
    return "\n".join(text), [c for c in charts if c is not None]


@dataclass
class Report:
    """A written report: its Markdown file, its charts, and the values each PNG drew, by chart name."""

    path: Path
    charts: list[Chart]
    drawn: dict


def write_report(folders, out: Path) -> Report:
    """Write report.md and one PNG per chart into out; return the Report."""
    from .plots import draw

    experiments, profiles = load_results(folders)
    if not experiments and not profiles:
        raise HarnessError(f"no results found in {', '.join(str(f) for f in folders)}: expected the JSON files of "
                           "`qlora-harness run` or GPU profile records; run an experiment first")
    sections, seen = [], {}
    for e in join_parts(experiments):  # the same experiment twice (another GPU or versions): its charts numbered
        seen[e["experiment"]] = seen.get(e["experiment"], 0) + 1
        n = seen[e["experiment"]]
        sections.append(_section_of(e["sources"], experiment_section, e,
                                    e["experiment"] if n == 1 else f"{e['experiment']}-{n}"))
    groups: dict[str, list[dict]] = {}
    for r in profiles:
        if "held_out" not in r:  # the held-out configurations have their own table in the estimate section
            groups.setdefault(workload(r), []).append(r)
    sections += [_section_of([r["source"] for r in records], profile_section, name, records)
                 for name, records in sorted(groups.items())]
    from . import estimates

    sections.append(estimates.section(join_parts(experiments), profiles, record_estimates, label, workload, Chart))
    out = check_report_folder(Path(out))
    parts = ["# QLoRA seed experiments: report", "",
             "Written by `qlora-harness report` from: " + ", ".join(f"`{f}`" for f in folders) + ". Memory in GiB; "
             "each plot is drawn from the table above it. Estimates are arithmetic (harness/measure/estimate.py), "
             "measured figures come from the runs; — marks a figure not measured (VRAM needs a GPU). The estimate assumes "
             "a step in training mode: the eval-mode trap shows as the gap between the two.", ""]
    charts, drawn = [], {}
    with staged_folder(out) as stage:  # the folder as a whole: an interrupted report leaves the previous one
        for text, section_charts in sections:
            parts.append(text)
            for chart in section_charts:
                drawn[chart.name] = draw(chart, stage / f"{chart.name}.png")
                parts += [f"### {chart.title}", "", chart.table(), f"![{chart.title}]({chart.name}.png)", ""]
                charts.append(chart)
        write_text(stage / "report.md", "\n".join(parts) + "\n")
    return Report(out / "report.md", charts, drawn)


REPORT_FILES = ("report.md", "*.png")


def check_report_folder(out: Path) -> Path:
    """Return out once it can take a report: missing, empty, or a report folder (report.md and PNGs only), which the
    new report replaces as a whole; raise if it holds other files, which replacing it would delete."""
    check_folder(out, "--out")
    if out.is_dir():
        own = {p for pattern in REPORT_FILES for p in out.glob(pattern)}
        other = sorted(p.name for p in out.iterdir() if p not in own)
        if other:
            raise HarnessError(f"--out {out} holds files a report does not write ({', '.join(other[:3])}"
                               f"{', ...' if len(other) > 3 else ''}); the report replaces its folder as a whole: "
                               "give an empty folder or an earlier report's")
    return out

"""The report's estimate section: every training-mode step of the records against harness.measure.estimate, its
error distribution, the held-out configurations against their committed estimates, and published estimates beside
ours for the same models.

Published estimates computed offline, for the same models:
  accelerate estimate-memory   `accelerate estimate-memory` on the meta model (accelerate.utils.calculate_maximum_sizes
                               of the float32 model): its int4 "Total Size" (loading only) and its float16 "Training
                               using Adam" (a full fine-tune: no LoRA, no activations)
  Transformer Math 101         EleutherAI's rule (Anthony et al., 2023): 4-bit weights at 0.5 bytes a parameter, LoRA's
                               trainable parameters at 16 bytes (fp32 weights, gradients and Adam's two moments),
                               activations of Korthikanti et al. (2022): s*b*h*(34 + 5*a*s/h) bytes a layer, or 2*s*b*h
                               with full recomputation (checkpointing)

The report's own helpers (Chart, a record's label and workload) come in as arguments: this module is imported by
harness.report.build and must not import it back.
"""
from __future__ import annotations

from pathlib import Path

from harness.util.units import GiB

BINS = (-0.10, -0.05, -0.02, 0.0, 0.02, 0.05, 0.10)


def _training_steps(record: dict):
    for step in record.get("steps", []):
        if step.get("status") == "ok" and step.get("training_mode", True):
            yield step["batch_size"]


def rows(experiments: list[dict], profiles: list[dict], estimates_of, label) -> list[dict]:
    """Return one row per training-mode step of a peft record: source, arm, batch size, measured and estimated peak.

    estimates_of(record) returns the record's estimate by batch size, label(record) its arm's name (the report's)."""
    out = []

    def add(source: str, arm: str, record: dict) -> None:
        f, ests = record.get("figures", {}), estimates_of(record)
        for n in _training_steps(record):
            measured = f.get(f"peak_allocated_bs{n}_bytes")
            if measured and str(n) in ests:
                est = ests[str(n)]["total_bytes"]
                out.append({"source": source, "arm": arm, "batch_size": n, "measured_bytes": measured,
                            "estimated_bytes": est, "error": est / measured - 1})

    for r in profiles:
        if r.get("backend", r.get("recipe", {}).get("backend", "peft")) == "peft" and "held_out" not in r:
            add(Path(r["source"]).name, label(r), r)
    for e in experiments:
        for r in e["records"]:
            if r["status"] == "ok" and r.get("backend") == "peft":
                add(e["experiment"], f"{r['label']} ({r['model_size']})", r)
    return out


def held_out_rows(profiles: list[dict]) -> list[dict]:
    """Return one row per measured held-out record: its committed estimate (never recomputed) against its peak."""
    out = []
    for r in profiles:
        if "held_out" not in r or "committed_estimate" not in r:
            continue
        c = r["committed_estimate"]
        n = c["batch_size"]
        measured = r["figures"].get(f"peak_allocated_bs{n}_bytes")
        status = r["figures"].get(f"status_bs{n}")
        out.append({"source": Path(r["source"]).name, "arm": r["held_out"], "batch_size": n,
                    "measured_bytes": measured if status == "ok" else None,
                    "estimated_bytes": c["estimate"]["total_bytes"],
                    "error": None if status != "ok" or not measured else c["estimate"]["total_bytes"] / measured - 1,
                    "status": status})
    return out


def _bin_labels() -> list[str]:
    edges = [f"{100 * b:+.0f}%" for b in BINS]
    return [f"< {edges[0]}"] + [f"{a} … {b}" for a, b in zip(edges, edges[1:])] + [f"> {edges[-1]}"]


def _counts(errors: list[float]) -> list[float]:
    counts = [0.0] * (len(BINS) + 1)
    for e in errors:
        counts[sum(e >= b for b in BINS)] += 1
    return counts


def distribution(records: list[dict], held: list[dict], Chart):
    """Return the Chart of the error distribution: rows per error bin, the records' and the held-out ones."""
    chart = Chart("estimate-error", "estimate − measured peak, relative: rows per bin", "error", "rows", "bars",
                  _bin_labels(), fmt=".0f")
    chart.series["records (training mode)"] = _counts([r["error"] for r in records])
    if held:
        chart.series["held out (estimated first)"] = _counts([r["error"] for r in held if r["error"] is not None])
    return chart


def _table(rows_: list[dict]) -> str:
    lines = ["| source | arm | batch | measured GiB | estimated GiB | error |", "|---|---|---|---|---|---|"]
    for r in rows_:
        measured = "—" if r["measured_bytes"] is None else f"{r['measured_bytes'] / GiB:.2f}"
        error = (r.get("status") or "—").upper() if r["error"] is None else f"{100 * r['error']:+.1f}%"
        lines.append(f"| {r['source']} | {r['arm']} | {r['batch_size']} | {measured} | "
                     f"{r['estimated_bytes'] / GiB:.2f} | {error} |")
    return "\n".join(lines) + "\n"


def _summary(rows_: list[dict]) -> str:
    errors = [abs(r["error"]) for r in rows_ if r["error"] is not None]
    if not errors:
        return "no measured rows yet"
    return (f"{len(errors)} rows: mean |error| {100 * sum(errors) / len(errors):.1f}%, largest "
            f"{100 * max(errors):.1f}%, {sum(e <= 0.10 for e in errors)} within 10%")


def published(profiles: list[dict], estimates_of, workload) -> str:
    """Return a Markdown table: for each model's first GPU-tier record, measured, ours and the published estimates."""
    seen, lines = set(), ["| model | step | measured GiB | ours GiB | accelerate int4 load GiB | accelerate fp16 "
                          "full fine-tune (Adam) GiB | Transformer Math 101 GiB |", "|---|---|---|---|---|---|---|"]
    for r in profiles:
        name = workload(r)
        if name in seen or "held_out" in r or "--" in r["case"]:  # a held-out recipe is judged by its own table
            continue
        ests = estimates_of(r)
        ok = [n for n in _training_steps(r) if str(n) in ests and r["figures"].get(f"peak_allocated_bs{n}_bytes")]
        if not ok:
            continue
        seen.add(name)
        n = ok[-1]
        acc_load, acc_train, math = offline_estimates(r, n, name)
        lines.append(f"| {name} | batch {n}, {r['figures'].get('checkpointing_layers') and 'GC' or 'no GC'} | "
                     f"{r['figures'][f'peak_allocated_bs{n}_bytes'] / GiB:.2f} | {ests[str(n)]['total_bytes'] / GiB:.2f}"
                     f" | {acc_load / GiB:.2f} | {acc_train / GiB:.2f} | "
                     + ("—" if math is None else f"{math / GiB:.2f}") + " |")
    return "\n".join(lines) + "\n"


def offline_estimates(record: dict, n: int, workload: str) -> tuple[int, int, int | None]:
    """Return (accelerate int4 load, accelerate fp16 training with Adam, Transformer Math 101) bytes for a record's
    model at batch n; Transformer Math is None for CLIP (no language-model rule)."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    from harness.families import DUAL_ENCODER, get_family
    from harness.measure import estimate
    from harness.model.load import meta_model
    from harness.recipe import parse_recipe

    data = {k: v for k, v in record["recipe"].items() if k != "source"}
    recipe = parse_recipe(data, source=record["case"])
    family = get_family(recipe.family)
    size = workload[len(family.name) + 1:]
    counts = estimate.meta_counts(family, size, recipe)
    total_fp32, _ = calculate_maximum_sizes(meta_model(family, counts["config"]))
    acc_load = total_fp32 / 8
    acc_train = max(estimate_training_usage(total_fp32, "float16").values())
    if family.kind == DUAL_ENCODER:
        return int(acc_load), int(acc_train), None
    t = counts["config"].get_text_config()
    step = next(s for s in record["steps"] if s["batch_size"] == n)
    s, b, h, a, layers = step["tokens"] // n, n, t.hidden_size, t.num_attention_heads, t.num_hidden_layers
    per_layer = 2 * s * b * h if recipe.training.gradient_checkpointing else s * b * h * (34 + 5 * a * s / h)
    math = counts["total_params"] * 0.5 + counts["trainable_params"] * 16 + layers * per_layer
    return int(acc_load), int(acc_train), int(math)


def section(experiments: list[dict], profiles: list[dict], estimates_of, label, workload, Chart) -> tuple[str, list]:
    """Return the Markdown of the estimate section and its chart (the report's helpers passed in)."""
    recs, held = rows(experiments, profiles, estimates_of, label), held_out_rows(profiles)
    from harness.measure.held_out import read_estimates

    committed = read_estimates()
    text = ["## The memory estimate against every measured training step", "",
            "harness/measure/estimate.py, term by term (its docstring says what each is), from the config and the "
            "recipe; the measured peak is the step's peak allocated bytes above the process's baseline. Error = "
            "estimate / measured − 1. " + _summary(recs) + ".", "", _table(recs),
            "### Held-out configurations (estimated and committed before they were measured)", "",
            f"{len(committed)} configurations in results/held-out/estimates.json; measured by "
            "`pytest -m gpu tests/gpu/test_held_out.py`. " + _summary(held) + ".", "",
            _table(held) if held else "", "### Published estimates beside ours", "",
            "accelerate's estimate-memory covers loading (int4) or a full fine-tune (fp16 with Adam); EleutherAI's "
            "Transformer Math 101 counts 4-bit weights, LoRA with Adam and Korthikanti's activations "
            "(harness/report/estimates.py says how each is computed).", "",
            published(profiles, estimates_of, workload)]
    return "\n".join(text), [distribution(recs, held, Chart)]


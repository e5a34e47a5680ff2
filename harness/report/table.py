"""Side-by-side Markdown tables of profiled variants: static and peak VRAM, host memory, time, throughput."""
from __future__ import annotations

import re

from harness.util.units import GiB


def batch_sizes(figures: dict) -> list[int]:
    """Return the batch sizes a record has step figures for, in order."""
    return sorted(int(m.group(1)) for k in figures if (m := re.fullmatch(r"status_bs(\d+)", k)))


def _gib(value) -> str:
    return "-" if value is None else f"{value / GiB:.2f}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _at(figures: dict, name: str, n: int, show) -> str:
    status = figures.get(f"status_bs{n}")
    if status is None:
        return "-"
    return status.upper() if status != "ok" else show(figures.get(name.format(n=n)))


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """Return a Markdown table, one line per (label, record): the figures the comparison is about.

    Peak VRAM is per batch size (OOM where a step ran out of memory); dynamic is peak minus static at the
    largest batch; host RSS counts what a backend offloads to host memory.
    """
    sizes = sorted({n for _, rec in rows for n in batch_sizes(rec["figures"])})
    head = (["variant", "static GiB"] + [f"peak bs{n} GiB" for n in sizes] + [f"dynamic bs{sizes[-1]} GiB"]
            + [f"step bs{n} ms" for n in sizes] + [f"tokens/s bs{n}" for n in sizes]
            + ["first step s", "host RSS GiB", "checkpointed calls"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rec in rows:
        f = rec["figures"]
        last = sizes[-1]
        peak_last = f.get(f"peak_allocated_bs{last}_bytes")
        dynamic = None if peak_last is None else peak_last - f["static_allocated_bytes"]
        warmups = [f.get(f"warmup_step_time_bs{n}_ms") for n in sizes if f.get(f"warmup_step_time_bs{n}_ms")]
        rss = [f.get(f"host_rss_bs{n}_bytes") for n in sizes if f.get(f"host_rss_bs{n}_bytes")]
        calls = [f.get(f"checkpointed_calls_bs{n}") for n in sizes if f.get(f"checkpointed_calls_bs{n}") is not None]
        cells = ([label, _gib(f["static_allocated_bytes"])]
                 + [_at(f, "peak_allocated_bs{n}_bytes", n, _gib) for n in sizes] + [_gib(dynamic)]
                 + [_at(f, "step_time_bs{n}_ms", n, lambda v: _num(v, ".0f")) for n in sizes]
                 + [_at(f, "tokens_per_s_bs{n}", n, lambda v: _num(v, ",.0f")) for n in sizes]
                 + [_num(max(warmups) / 1000 if warmups else None, ".1f"), _gib(max(rss) if rss else None),
                    _num(max(calls) if calls else None, "d")])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def versions_line(record: dict) -> str:
    """Return the library versions of a record as one Markdown line."""
    v = record.get("versions", {})
    return ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "peft", "bitsandbytes", "unsloth") if v.get(k))

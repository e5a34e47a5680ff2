"""The report of the committed H200 records: every plot shows the numbers of the table above it, the tables hold
the records' own figures, and the memory estimate lands near what the GPU measured."""
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.measure import estimate
from harness.report import build as report
from harness.report import estimates
from harness.util.errors import HarnessError

H200 = Path(__file__).resolve().parents[2] / "results" / "nvidia-h200-140gib-cuda13.0"
GiB = 2**30


@pytest.fixture(scope="module")
def h200_report(tmp_path_factory):
    return report.write_report([H200], tmp_path_factory.mktemp("report"))


def _table(text: str, title: str) -> dict[str, list[str]]:
    """Return the rows (label -> cells) of the table under a '### title' heading of a report."""
    block = text.split(f"### {title}\n", 1)[1].split("![", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
    return {row[0]: row[1:] for row in rows[2:]}


def test_every_plot_draws_the_numbers_of_its_table(h200_report):
    text = h200_report.path.read_text()
    assert h200_report.charts
    for chart in h200_report.charts:
        assert (h200_report.path.parent / f"{chart.name}.png").stat().st_size > 0
        rows = _table(text, chart.title)
        drawn = h200_report.drawn[chart.name]
        assert set(rows) == set(drawn) == set(chart.series), chart.name
        for label, values in drawn.items():
            for cell, value in zip(rows[label], values):
                if value is None:
                    assert not re.fullmatch(r"[-\d.,]+", cell), (chart.name, label, cell)
                else:
                    assert cell == format(value, chart.fmt), (chart.name, label)


def test_the_report_shows_each_kind_of_plot_for_the_qwen2_5_vl_comparison(h200_report):
    names = {c.name for c in h200_report.charts}
    assert {"qwen2.5-vl-7b-vram", "qwen2.5-vl-7b-static-dynamic", "qwen2.5-vl-7b-estimate"} <= names


def test_tables_hold_the_records_figures(h200_report):
    import json

    record = json.loads((H200 / "qwen2.5-vl-7b-nf4-dq-r64--qlora.json").read_text())["figures"]
    rows = _table(h200_report.path.read_text(), "qwen2.5-vl-7b: peak VRAM by batch size")
    assert rows["QLoRA"] == [f"{record[f'peak_allocated_bs{n}_bytes'] / GiB:.2f}" for n in (1, 2, 4)]


def test_static_and_dynamic_parts_add_up_to_the_measured_peak(h200_report):
    chart = next(c for c in h200_report.charts if c.name == "qwen2.5-vl-7b-static-dynamic")
    peaks = next(c for c in h200_report.charts if c.name == "qwen2.5-vl-7b-vram")
    for i, label in enumerate(chart.x):
        stacked = sum(chart.series[part][i] for part in chart.series)
        assert stacked == pytest.approx(peaks.series[label][-1], abs=0.01), label


def test_the_estimate_is_within_10_percent_of_every_measured_training_step(h200_report):
    experiments, profiles = report.load_results([H200])
    rows = estimates.rows(report.join_parts(experiments), profiles, report.record_estimates, report.label)

    assert len(rows) >= 80  # every training-mode step of every peft record: matrix, comparisons, seed runs
    assert any("DoRA" in r["arm"] for r in rows)  # modelled, held to the same bound
    misses = [(r["source"], r["arm"], r["batch_size"], f"{r['error']:+.1%}") for r in rows
              if not estimate.agrees(r["measured_bytes"], r["estimated_bytes"])]
    assert not misses, misses


def test_the_eval_mode_trap_stands_out_from_the_training_mode_estimate(h200_report):
    # the estimate assumes training mode: a step in eval mode silently keeps every activation
    arms = [(arm, est, measured) for c in h200_report.charts if set(c.series) == {"estimate", "measured"}
            for arm, est, measured in zip(c.x, c.series["estimate"], c.series["measured"]) if "eval mode" in arm]
    assert arms
    for arm, est, measured in arms:
        assert measured > 1.5 * est, arm


def test_the_estimate_without_its_float32_loss_terms_misses_the_records(monkeypatch):
    # the broken case: the loss's float32 log-softmax gradients left out (10 bytes a logit, not 12), as before
    monkeypatch.setattr(estimate, "LOGIT_BYTES", 10)
    report._meta_cache.clear()
    experiments, profiles = report.load_results([H200])
    rows = estimates.rows(report.join_parts(experiments), profiles, report.record_estimates, report.label)
    assert any(not estimate.agrees(r["measured_bytes"], r["estimated_bytes"]) for r in rows)


def test_the_report_shows_the_error_of_every_row_and_its_distribution(h200_report):
    text = h200_report.path.read_text()
    chart = next(c for c in h200_report.charts if c.name == "estimate-error")
    experiments, profiles = report.load_results([H200])
    rows = estimates.rows(report.join_parts(experiments), profiles, report.record_estimates, report.label)

    assert sum(chart.series["records (training mode)"]) == len(rows)
    assert "## The memory estimate against every measured training step" in text
    assert "| qwen2.5-0.5b-nf4-dq-r16.json | recipe (GPU tier) | 4 | 3.94 |" in text
    assert "accelerate int4 load" in text and "Transformer Math 101" in text


def test_an_empty_results_folder_is_refused_by_name(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no results found" in capsys.readouterr().err
    with pytest.raises(HarnessError, match="does not exist"):
        report.load_results([tmp_path / "missing"])


def test_a_run_split_over_sessions_reads_as_one_experiment(tmp_path):
    import json

    whole = json.loads(next((H200 / "seed").glob("seed-qwen2.5-rank-ablation--*.json")).read_text())
    sizes = list(dict.fromkeys(r["model_size"] for r in whole["records"]))
    assert len(sizes) > 1
    for size in reversed(sizes):  # written last first: the joined arms still follow the experiment's size order
        part = {**whole, "records": [r for r in whole["records"] if r["model_size"] == size]}
        (tmp_path / f"seed-qwen2.5-rank-ablation--{size}.json").write_text(json.dumps(part))
    experiments, _ = report.load_results([tmp_path])
    (joined,) = report.join_parts(experiments)
    assert [(r["model_size"], r["variant"]) for r in joined["records"]] == \
        [(r["model_size"], r["variant"]) for r in whole["records"]]
    assert joined["complete"] and len(joined["sources"]) == len(sizes)
    written = report.write_report([tmp_path], tmp_path / "out")
    rank_vram = next(c for c in written.charts if c.name == "seed-qwen2.5-rank-ablation-rank-vram")
    assert {label.split(",")[0] for label in rank_vram.series} == set(sizes)


def test_an_incomplete_part_marks_the_joined_run_incomplete(tmp_path):
    import json

    whole = json.loads((H200 / "seed" / "seed-clip-static-dynamic.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps({**whole, "records": whole["records"][:1]}))
    (tmp_path / "b.json").write_text(json.dumps({**whole, "records": whole["records"][1:], "complete": False}))
    (joined,) = report.join_parts(report.load_results([tmp_path])[0])
    assert not joined["complete"] and len(joined["records"]) == len(whole["records"])


def test_a_held_out_record_is_judged_against_its_committed_estimate_in_its_own_table(tmp_path):
    import json

    from harness.measure import held_out

    committed = held_out.read_estimates()
    case, entry = next(iter(committed.items()))
    record = json.loads((H200 / "qwen2.5-0.5b-nf4-dq-r16.json").read_text())  # stands in for a GPU run's record
    n = entry["batch_size"]
    record["figures"] = {f"status_bs{n}": "ok", f"peak_allocated_bs{n}_bytes": entry["estimate"]["total_bytes"] // 2}
    record.update(case=case, held_out=entry["name"], label=f"held out: {entry['name']}", committed_estimate=entry,
                  steps=[{"batch_size": n, "status": "ok", "training_mode": True, "tokens": n * 10}])
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / f"{case}.json").write_text(json.dumps(record))
    (tmp_path / "held" / "estimates.json").write_text(held_out.ESTIMATES_PATH.read_text())

    written = report.write_report([tmp_path / "held"], tmp_path / "out")
    text = written.path.read_text()
    held_table = text.split("### Held-out configurations", 1)[1].split("### Published", 1)[0]
    assert f"| {case}.json | {entry['name']} | {n} |" in held_table and "+100.0%" in held_table
    assert "1 rows: mean |error| 100.0%" in held_table  # a miss is shown, not hidden
    chart = next(c for c in written.charts if c.name == "estimate-error")
    assert sum(chart.series["held out (estimated first)"]) == 1 and sum(chart.series["records (training mode)"]) == 0

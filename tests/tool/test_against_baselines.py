"""One GPU run's memory figures beside the baselines' (harness.report.against): each gated figure's difference and
whether it keeps within 0.5%, how each side was measured, cases on one side only; the table a GPU session with
--results-dir writes at its end, and the command's bad input. Records are written into tmp folders as the GPU tier
writes them (harness.measure.baselines), no GPU needed."""
import pytest

from harness import cli
from harness.measure import baselines
from harness.report import against
from harness.util.env import gpu_workers

pytest_plugins = ["pytester"]

GPU = "nvidia-h200-140gib-cuda13.0"
MiB = 2**20


def record(case="qwen2.5-vl-7b-nf4-dq-r64", workers=None, **figures):
    base = {"static_allocated_bytes": 5000 * MiB, "peak_allocated_bs1_bytes": 7000 * MiB, "status_bs1": "ok",
            "static_reserved_bytes": 6000 * MiB, "step_time_bs1_ms": 800.0}
    rec = {"case": case, "gpu": GPU, "versions": {"torch": "2.11.0"}, "figures": {**base, **figures}}
    return rec if workers is None else {**rec, "workers": workers}


def by_case(*records):
    return {r["case"]: r for r in records}


def test_figures_within_and_beyond_half_a_percent():
    run = by_case(record(workers=6, static_allocated_bytes=5020 * MiB, peak_allocated_bs1_bytes=7070 * MiB))
    text, line = against.against(run, by_case(record(workers=1)), GPU)

    # 20 MiB of 5000 is 0.4%: within; 70 MiB of 7000 is 1%: beyond. Reserved bytes and times do not gate.
    assert "| qwen2.5-vl-7b-nf4-dq-r64 | static_allocated_bytes | 4.902 | 4.883 | +20.0 | +0.40% | yes |" in text
    assert "| qwen2.5-vl-7b-nf4-dq-r64 | peak_allocated_bs1_bytes | 6.904 | 6.836 | +70.0 | +1.00% | **no** |" in text
    assert "| qwen2.5-vl-7b-nf4-dq-r64 | status_bs1 | ok | ok | - | - | same |" in text
    assert "reserved" not in text.split("| case |")[1] and "step_time" not in text
    assert line == ("3 gated figures of 1 cases: 2 within 0.5% of the baselines (serial), largest difference +1.00% "
                    "(qwen2.5-vl-7b-nf4-dq-r64, peak_allocated_bs1_bytes, +70.0 MiB); cases only in the run: none; "
                    "only in the baselines: none")
    assert "- this run: 1 cases, 6 workers sharing the GPU" in text and "- baselines: 1 cases, serial" in text
    assert line in text


def test_a_status_that_changed_is_different_and_its_missing_peak_named():
    run = {"static_allocated_bytes": 5000 * MiB, "status_bs1": "oom"}
    text, line = against.against(by_case({**record(workers=2), "figures": run}), by_case(record(workers=1)), GPU)

    assert "| qwen2.5-vl-7b-nf4-dq-r64 | status_bs1 | oom | ok | - | - | **different** |" in text
    assert "| qwen2.5-vl-7b-nf4-dq-r64 | peak_allocated_bs1_bytes | missing | 6.836 | - | - | **no** |" in text
    assert line.startswith("3 gated figures of 1 cases: 1 within 0.5% of the baselines (serial)")
    assert ("changed or missing: qwen2.5-vl-7b-nf4-dq-r64 peak_allocated_bs1_bytes 6.836 GiB -> missing, "
            "qwen2.5-vl-7b-nf4-dq-r64 status_bs1 ok -> oom") in line


def test_cases_on_one_side_only_are_named_not_compared():
    run = by_case(record("a", workers=4), record("only-run", workers=4))
    base = by_case(record("a", workers=1), record("only-base-1", workers=1), record("only-base-2", workers=1))
    text, line = against.against(run, base, GPU)

    assert line.startswith("3 gated figures of 1 cases: 3 within 0.5% of the baselines (serial), largest difference "
                           "+0.00% (a, ")
    assert line.endswith("; cases only in the run: 1 (only-run); only in the baselines: 2 (only-base-1, only-base-2)")
    assert "| only-" not in text


def test_baselines_without_workers_say_workers_not_recorded():
    older = by_case(record("a"), record("b"))
    assert against.measured_as(list(older.values())) == "workers not recorded"
    assert against.measured_as([record("a", workers=1), record("b")]) == "serial (1 of 2 cases: workers not recorded)"

    text, line = against.against(by_case(record("a", workers=6), record("b", workers=6)), older, GPU)
    assert "of the baselines (workers not recorded)" in line
    assert "- baselines: 2 cases, workers not recorded" in text


def test_the_worker_count_is_what_xdist_sets():
    assert gpu_workers({"PYTEST_XDIST_WORKER_COUNT": "6", "PYTEST_XDIST_WORKER": "gw3"}) == 6
    assert gpu_workers({}) == 1


def write_records(root, *records):
    for r in records:
        baselines.write_baseline(baselines.baseline_path(root, r["gpu"], r["case"]), r)


def test_the_table_is_written_beside_the_records_from_the_folders(tmp_path):
    results, base = tmp_path / "results", tmp_path / "baselines"
    write_records(results, record("a", workers=6, peak_allocated_bs1_bytes=7100 * MiB))
    write_records(base, record("a", workers=1))
    (results / GPU / "comparison-a.md").write_text("not a record")
    (results / GPU / "seed.json").write_text('{"records": []}')  # JSON that is not a case record

    ((path, line),) = against.write(results, base)

    assert path == results / GPU / against.FILE
    assert path.read_text().startswith(f"# This run against the baselines on {GPU}")
    assert line.startswith("3 gated figures of 1 cases: 2 within 0.5% of the baselines (serial), largest difference "
                           "+1.43% (a, peak_allocated_bs1_bytes, +100.0 MiB)")
    assert against.write(tmp_path / "empty", base) == []  # no records: a CPU session


SESSION = """
import os

from harness.measure import baselines


def test_writes_a_record(pytestconfig):
    record = {"case": "a", "gpu": "%s", "workers": 1, "versions": {}, "figures": {
        "static_allocated_bytes": 1000 * 2**20, "peak_allocated_bs1_bytes": 2000 * 2**20, "status_bs1": "ok"}}
    results = pytestconfig.getoption("--results-dir")
    baselines.write_baseline(baselines.baseline_path(results, record["gpu"], "a"), record)
""" % GPU

PLUGINS = ("-p", "harness.plugin.options", "-p", "harness.plugin.against_baselines", "-p", "no:cacheprovider")


@pytest.fixture
def session(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_HARNESS_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "baselines"
    write_records(base, {**record("a", workers=1), "figures": {"static_allocated_bytes": 1002 * 2**20,
                                                               "peak_allocated_bs1_bytes": 2000 * 2**20,
                                                               "status_bs1": "ok"}})

    def run(test_file, *args):
        pytester.makepyfile(test_session=test_file)
        return pytester.runpytest_subprocess(*PLUGINS, "--baselines-dir", str(base), *args)

    return run


def test_a_gpu_session_with_results_ends_with_the_table_and_its_line(session, tmp_path):
    results = tmp_path / "results"

    result = session(SESSION, "--results-dir", str(results))

    result.assert_outcomes(passed=1)
    table = results / GPU / against.FILE
    result.stdout.fnmatch_lines([f"qlora-harness against baselines ({table}): 3 gated figures of 1 cases: 3 within "
                                 "0.5% of the baselines (serial), largest difference -0.20% (a, "
                                 "static_allocated_bytes, -2.0 MiB); cases only in the run: none; only in the "
                                 "baselines: none"])
    assert "| a | static_allocated_bytes | 0.977 | 0.979 | -2.0 | -0.20% | yes |" in table.read_text()


def test_update_mode_and_a_session_without_records_add_no_table(session, tmp_path):
    results = tmp_path / "results"

    updating = session(SESSION, "--results-dir", str(results), "--update-baselines")
    cpu = session("def test_nothing_measured():\n    pass\n", "--results-dir", str(tmp_path / "cpu"))

    updating.assert_outcomes(passed=1)
    cpu.assert_outcomes(passed=1)
    assert not (results / GPU / against.FILE).exists()
    assert "qlora-harness against baselines" not in updating.stdout.str() + cpu.stdout.str()


def test_the_command_writes_the_table_and_bad_input_names_the_folder(tmp_path, capsys):
    results, base = tmp_path / "results", tmp_path / "baselines"
    write_records(results, record("a", workers=6))
    write_records(base, record("a", workers=1))
    out = tmp_path / "table.md"

    assert cli.main(["against-baselines", str(results), "--baselines", str(base), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 3 gated figures of 1 cases: 3 within 0.5%")
    assert out.is_file()

    assert cli.main(["against-baselines", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"against-baselines {tmp_path / 'nowhere'}: does not exist; pass the folder that `pytest -m gpu " in err
    assert "--results-dir` was given" in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["against-baselines", str(tmp_path / "empty")]) == 2
    assert "holds no GPU case records" in capsys.readouterr().err
    assert cli.main(["against-baselines", str(results), "--baselines", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"no baselines for GPU {GPU} in {tmp_path / 'none' / GPU}: pass the baselines folder" in err

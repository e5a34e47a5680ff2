"""At the end of a GPU session run with --results-dir: this run's gated memory figures beside the baselines', in
RESULTS/<gpu>/against-baselines.md (harness.report.against), and its summary as one line of the terminal summary.

In the controller only (under pytest-xdist the workers' records are all on disk by then), and not in update mode
(there the baselines are this run). A session that wrote no records (a CPU session) adds nothing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.measure import baselines
from harness.report import against
from harness.util.errors import HarnessError

LINE = "qlora-harness against baselines"


@pytest.hookimpl(trylast=True)  # after the phases and timeline lines: the session's last word on its memory
def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "workerinput", None) is not None:
        return  # a worker: the controller writes it once
    results = config.getoption("--results-dir", None)
    if not results or config.getoption("--update-baselines", False):
        return
    root = config.getoption("--baselines-dir", None) or baselines.project_baselines(config.rootpath)
    try:
        written = against.write(Path(results), Path(root))
    except HarnessError as e:  # the tests have run and said what they found: say why there is no table, no traceback
        terminalreporter.write_line(f"{LINE}: not written: {e}")
        return
    for path, line in written:
        terminalreporter.write_line(f"{LINE} ({path}): {line}")

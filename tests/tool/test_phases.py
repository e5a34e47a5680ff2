"""The GPU session's last line says where the wall time went, summed over workers (harness.plugin.phases)."""
import pytest

from harness.plugin import phases

pytest_plugins = ["pytester"]

INNER = """
from harness.plugin import phases

def test_one_load():
    phases.add("loads", 2.0)
    phases.add("measured steps", 3.0)

def test_another_load():
    phases.add("loads", 1.5)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_phases_measured_in_workers_reach_the_last_line(pytester, workers, tmp_path, monkeypatch):
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("QLORA_HARNESS_CACHE", str(tmp_path))  # an empty cache: no builds in this session

    result = pytester.runpytest_subprocess("-p", "harness.plugin.phases", "-p", "no:cacheprovider", *workers)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["qlora-harness phases (*): checkpoint builds 0 s (0 built), loads 4 s, "
                                 "measured steps 3 s; wall *"])


def test_the_line_names_each_phase_and_the_builds():
    text = phases.line({"loads": 12.4, "unsloth": 100, "measured steps": 30},
                       [{"seconds": 20.0}, {"seconds": 25.5}], wall_s=272, workers=4)

    assert text == ("qlora-harness phases (summed over 4 workers): checkpoint builds 46 s (2 built), loads 12 s, "
                    "measured steps 30 s, unsloth 100 s; wall 4 min 32 s")

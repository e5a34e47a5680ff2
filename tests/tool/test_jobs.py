"""Background jobs of a test run (harness.util.jobs): the GPU tier's Unsloth children start at the run's first test
and are waited for by whichever worker needs their record; a dead job is told from a slow one by its heartbeat."""
import os
import subprocess
import sys
import time

import pytest

from harness.util import jobs
from harness.util.errors import HarnessError

CHILD = """
import json, os, sys, time
from harness.util import jobs
from harness.util.atomic import write_json
jobs.beat()
time.sleep(float(sys.argv[1]))
if sys.argv[2] == "record":
    write_json(sys.argv[3], {"value": 42})
else:
    print("stopping without a record", flush=True)
    os._exit(9)
"""


def _spawn(tmp_path, seconds, outcome, env=None):
    stem = tmp_path / "job"
    record = jobs.files(stem)[0]
    jobs.spawn([sys.executable, "-c", CHILD, str(seconds), outcome, str(record)], stem, env=env)
    return stem


def test_a_job_started_in_the_background_is_waited_for_by_its_record(tmp_path):
    stem = _spawn(tmp_path, 1.5, "record")

    assert not jobs.files(stem)[0].exists()  # still running: spawn did not wait
    assert jobs.wait(stem, "the test job", timeout_s=60, poll_s=0.1) == {"value": 42}


def test_a_job_that_dies_without_its_record_is_an_error_with_its_log(tmp_path):
    stem = _spawn(tmp_path, 0, "die")

    with pytest.raises(HarnessError, match=r"(?s)the test job: its process stopped without writing job.json.*"
                                           r"stopping without a record"):
        jobs.wait(stem, "the test job", timeout_s=60, poll_s=0.1, stale_s=3 * jobs.BEAT_S)


def test_a_slow_job_with_a_heartbeat_is_not_taken_for_dead(tmp_path):
    stem = _spawn(tmp_path, 4 * jobs.BEAT_S, "record")

    assert jobs.wait(stem, "the test job", timeout_s=60, poll_s=0.1, stale_s=2 * jobs.BEAT_S) == {"value": 42}


def test_a_job_stops_when_the_run_that_started_it_is_gone(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a finished process: the run's owner, gone
    stem = _spawn(tmp_path, 60, "record", env={**os.environ, jobs.WATCH_ENV: str(gone.pid)})

    started = time.monotonic()
    with pytest.raises(HarnessError, match="stopped without writing"):
        jobs.wait(stem, "the orphaned job", timeout_s=60, poll_s=0.2, stale_s=3 * jobs.BEAT_S)
    assert time.monotonic() - started < 30
    assert "this job stops" in jobs.tail(jobs.files(stem)[1])


def test_waiting_for_a_job_nobody_started_says_so(tmp_path):
    with pytest.raises(HarnessError, match="the missing job: no job was started at"):
        jobs.wait(tmp_path / "never", "the missing job", timeout_s=5)

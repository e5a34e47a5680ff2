"""CPU priority in a parallel GPU run (harness.util.priority): a process that yields lowers every thread it has, not
only the one that asks, and a background job can start at a lower priority than its parent."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.util import jobs, priority

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux (/proc/<pid>/task)")

# a process with a second thread started before anyone lowers its priority; it prints its pid once both run
THREADED = """
import os, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print(os.getpid(), flush=True)
time.sleep(60)
"""


def thread_nices(pid: int) -> list[int]:
    """Return the nice value of every thread of a process, read from /proc (field 19 of each task's stat)."""
    nices = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        nices.append(int(fields[16]))
    return sorted(nices)


@pytest.fixture
def threaded():
    process = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, text=True)
    pid = int(process.stdout.readline())
    yield pid
    process.kill()
    process.wait()


def test_yielding_lowers_every_thread_of_the_process(threaded):
    base = priority.nice_of(threaded)

    assert priority.lower(5, threaded) == 2

    assert thread_nices(threaded) == [min(19, base + 5)] * 2


def test_the_process_wide_call_alone_would_leave_a_thread_behind(threaded):
    # the broken case the module exists for: on Linux, setpriority(PRIO_PROCESS, pid) reaches one thread only
    base = priority.nice_of(threaded)

    os.setpriority(os.PRIO_PROCESS, threaded, min(19, base + 5))

    assert thread_nices(threaded) == sorted([base, min(19, base + 5)])


def test_a_job_can_start_at_a_lower_priority_than_its_parent(tmp_path):
    stem = tmp_path / "job"
    script = "import os, time; time.sleep(0.5); print(os.nice(0))"  # asked after the parent has lowered it

    process = jobs.spawn([sys.executable, "-c", script], stem, nice=5)
    process.wait(30)

    assert int(jobs.files(stem)[1].read_text().split()[-1]) == min(19, priority.nice_of() + 5)


def test_a_process_that_is_gone_changes_nothing():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    time.sleep(0.1)

    assert priority.lower(5, process.pid) == 0

"""Background jobs of a test run: a child process that writes one JSON record, started by one process of the run and
waited for by any of them (a pytest-xdist worker other than its parent included).

A job's files share one stem: `<stem>.json` (the record, written last and atomically), `<stem>.log` (its output)
and `<stem>.alive`, a heartbeat the child touches every few seconds. A waiter tells a slow job from a dead one by
the heartbeat, not by the child's PID, which only its parent can reap. The child also watches the process that
owns the run (the pytest controller) and exits when that is gone, so an interrupted run leaves no job on the GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.util import priority
from harness.util.errors import HarnessError

HEARTBEAT_ENV = "QLORA_HARNESS_JOB_HEARTBEAT"  # set for the child: the file it touches
WATCH_ENV = "QLORA_HARNESS_SESSION_PID"  # the process that owns the run; the child exits when it is gone
BEAT_S = 2.0
STALE_S = 120.0  # a heartbeat this old means the child is gone (a beat is due every BEAT_S)


def files(stem: Path) -> tuple[Path, Path, Path]:
    """Return (record, log, heartbeat) of a job."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".log"), stem.with_name(stem.name + ".alive")


def spawn(cmd: list[str], stem: Path, env: dict | None = None, nice: int = 0) -> subprocess.Popen:
    """Start cmd as the job `stem`, its output to the job's log; nice > 0 lowers its CPU priority by that much
    (harness.util.priority) as soon as it has started: every thread it has by then, and those started afterwards
    follow their creator's."""
    record, log, alive = files(stem)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    alive.touch()  # the first beat: the job exists from now on
    environ = {**(os.environ if env is None else env), HEARTBEAT_ENV: str(alive)}
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    if nice > 0:
        priority.lower(nice, process.pid)
    return process


def beat() -> None:
    """In a job's child: touch its heartbeat from a daemon thread, and exit if the run's owner is gone (no-op when
    not started by spawn)."""
    alive = os.environ.get(HEARTBEAT_ENV)
    if not alive:
        return
    owner = os.environ.get(WATCH_ENV)

    def loop() -> None:
        while True:
            Path(alive).touch()
            if owner and not _running(int(owner)):
                print(f"the run's process {owner} is gone: this job stops", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(BEAT_S)

    threading.Thread(target=loop, name="job-heartbeat", daemon=True).start()


def wait(stem: Path, what: str, timeout_s: float = 1800, poll_s: float = 1.0, stale_s: float = STALE_S) -> dict:
    """Return the record of job `stem`, waiting for it; raise naming `what` if the job died or ran past timeout_s."""
    record, log, alive = files(stem)
    deadline = time.monotonic() + timeout_s
    while True:
        if record.is_file():
            return json.loads(record.read_text())
        if not alive.exists():
            raise HarnessError(f"{what}: no job was started at {stem}")
        if time.time() - alive.stat().st_mtime > stale_s and not record.is_file():
            raise HarnessError(f"{what}: its process stopped without writing {record.name} (no heartbeat for "
                               f"{stale_s:.0f} s); its log ends:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: no record after {timeout_s:.0f} s; its log ends:\n{tail(log)}")
        time.sleep(poll_s)


def tail(log: Path, chars: int = 3000) -> str:
    """Return the end of a job's log ('' when there is none)."""
    try:
        return Path(log).read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""A daemon killed with ``kill -9`` before its journal forwarder wrote the lifecycle records of
finished attempts: the next start writes them, each once, from the state log."""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import sh
from tests.support.waiting import wait_until

pytestmark = pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-level", "info")

CALLS = 40


def forwarder(daemon: DaemonProcess) -> int:
    with daemon.client() as client:
        pid = client.status()["logging"]["forwarder_pid"]
    assert isinstance(pid, int) and psutil.Process(pid).ppid() == daemon.pid
    return pid


def lifecycle(log: str) -> list[str]:
    """The lifecycle records of job 1 in the daemon's stderr log (message and task id)."""
    found = []
    for line in log.splitlines():
        if "PROCPOOL_JOB_ID=1 " not in line or "MESSAGE_ID=" not in line or "procpoold.task: " not in line:
            continue
        message = line.split("procpoold.task: ", 1)[1].split(" [", 1)[0]
        task = re.search(r"PROCPOOL_TASK_ID=(\S+)", line)
        found.append(f"{task.group(1) if task else '?'} {message}")
    return found


def test_lifecycle_records_the_forwarder_had_not_written_are_written_after_a_crash(
        daemon: DaemonProcess) -> None:
    fwd = forwarder(daemon)
    os.kill(fwd, signal.SIGSTOP)  # it writes nothing from here on
    try:
        with daemon.client() as client:
            job = client.submit({"name": "replayed", "root": {"sequential": [
                {"concurrent": [{"name": f"c{i}", "call": "tests.support.pool_probes:noop"}
                                for i in range(CALLS)]},
                {"name": "bad", **sh("exit 3")},
                {"name": "after", **sh("true")},
            ]}})
            result = client.wait(job["id"], timeout=60)
        assert result["finished"] and result["status"]["job"]["state"] == "failed"
        assert lifecycle(daemon.log()) == []  # none written before the crash
    finally:
        daemon.crash()  # SIGKILL of the daemon and of everything it started (the forwarder too)
    daemon.restart()
    expected = sorted([f"1.{i} task \"c{i}\" attempt 1 starting" for i in range(CALLS)]
                      + [f"1.{i} task \"c{i}\" completed" for i in range(CALLS)]
                      + [f"1.{CALLS} task \"bad\" attempt 1 starting",
                         f"1.{CALLS} task \"bad\" failed after 1 attempt: command exited with status 3",
                         f"1.{CALLS + 1} task \"after\" skipped: upstream \"bad\" failed"])
    wait_until(lambda: len(lifecycle(daemon.log())) >= len(expected), what="the replayed records")
    written = lifecycle(daemon.log())
    assert sorted(written) == expected  # each once
    # in order: each task's start before its end
    for i in range(CALLS):
        assert written.index(f"1.{i} task \"c{i}\" attempt 1 starting") < written.index(
            f"1.{i} task \"c{i}\" completed")
    # the replayed records carry the worker's pid, and every field the live ones carry
    [start] = [line for line in daemon.log().splitlines() if 'task "c0" attempt 1 starting' in line]
    for field in ("PROCPOOL_JOB_NAME=replayed", "PROCPOOL_TASK_NAME=c0", "PROCPOOL_ATTEMPT=1",
                  "PROCPOOL_WORKER_PID=", "MESSAGE_ID="):
        assert field in start
    assert "written now" in daemon.log()
    # A clean stop and start: nothing is written again.
    daemon.stop()
    daemon.restart()
    with daemon.client() as client:
        client.status()
    assert sorted(lifecycle(daemon.log())) == expected

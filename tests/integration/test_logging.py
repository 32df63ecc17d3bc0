"""Task output through the daemon's root logger: capture from cmd tasks, ``procctl logs``, status."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job, sh
from tests.support.waiting import wait_until

pytestmark = pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr")


def logs_json(daemon: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    out = daemon.procctl("logs", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_cmd_output_is_captured_line_by_line_with_its_fields(daemon: DaemonProcess) -> None:
    script = ("echo first; echo oops >&2; printf 'a\\r\\nb\\n'; "
              "python3 -c \"import sys; sys.stdout.write('x' * 40000 + '\\n')\"; printf 'no newline'")
    status = run_job(daemon, {"name": "talk", **sh(script)}, name="talky")
    assert status["job"]["state"] == "completed"
    records = [r for r in logs_json(daemon, "1.0") if r["stream"] != "daemon"]
    lines = [(r["stream"], r["message"]) for r in records]
    assert lines[0] == ("stdout", "first")
    assert ("stderr", "oops") in lines
    assert [m for s, m in lines if s == "stdout"][1:3] == ["a", "b"]
    long_parts = [m for _, m in lines if m.startswith("x")]
    assert [len(p) for p in long_parts] == [16384, 16384, 40000 - 2 * 16384]
    assert lines[-1] == ("stdout", "no newline")
    assert {(r["task_id"], r["attempt"], r["job_id"]) for r in records} == {("1.0", 1, "1")}
    # The daemon's stderr lines carry the same fields.
    wait_until(lambda: "no newline" in daemon.log(), what="the last line in the daemon's log")
    [first] = [line for line in daemon.log().splitlines() if "procpoold.task: first" in line]
    for field in ("PROCPOOL_JOB_ID=1", "PROCPOOL_JOB_NAME=talky", "PROCPOOL_TASK_ID=1.0",
                  "PROCPOOL_TASK_NAME=talk",
                  "PROCPOOL_ATTEMPT=1", "PROCPOOL_STREAM=stdout", "PROCPOOL_WORKER_PID=",
                  f"PROCPOOL_USER={pwd.getpwuid(os.getuid()).pw_name}", f"PROCPOOL_UID={os.getuid()}"):
        assert field in first, first
    # The job's own records (submitted, finished) name its user too.
    job_lines = [line for line in daemon.log().splitlines() if "PROCPOOL_JOB_ID=1 " in line]
    assert job_lines and all(f"PROCPOOL_UID={os.getuid()}" in line for line in job_lines), job_lines
    assert "WARNING procpoold.task: oops [" in daemon.log()


def test_job_logs_merge_tasks_and_lifecycle_records(daemon: DaemonProcess) -> None:
    run_job(daemon, {"sequential": [{"name": "one", **sh("echo from-one")},
                                    {"name": "two", **sh("echo from-two")}]})
    text = daemon.procctl("logs", "1")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.index("submitted") < out.index("from-one") < out.index("from-two") < out.rindex("completed")
    assert " 1.0#1 stdout: from-one" in out and " 1.1#1 stdout: from-two" in out
    assert [r["message"] for r in logs_json(daemon, "1/two") if r["stream"] == "stdout"] == ["from-two"]


def test_attempt_and_lines_select_what_is_shown(daemon: DaemonProcess) -> None:
    status = run_job(daemon, sh('echo "try $PROCPOOL_ATTEMPT"; echo more; exit 3', retries=1, retry_delay=0))
    assert status["job"]["state"] == "failed"
    second = [r["message"] for r in logs_json(daemon, "1.0", "--attempt", "2") if r["stream"] == "stdout"]
    assert second == ["try 2", "more"]
    assert len(logs_json(daemon, "1.0", "-n", "1")) == 1
    # A failed task's last lines are in its status too.
    shown = daemon.procctl("status", "1")
    assert "more" in shown.stdout, shown.stdout


def test_follow_prints_until_the_task_has_ended(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "slow",
                             "root": sh("for i in 1 2 3 4 5; do echo tick $i; sleep 0.1; done")})
    started = time.monotonic()
    argv = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket), "logs", "-f", job["id"]]
    follower = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert follower.returncode == 0, follower.stderr
    assert [line.split(": ", 1)[1] for line in follower.stdout.splitlines() if "stdout:" in line] == [
        f"tick {i}" for i in range(1, 6)]
    assert "completed" in follower.stdout.splitlines()[-1]
    assert time.monotonic() - started < 15


def test_status_reports_the_log_counters(daemon: DaemonProcess) -> None:
    run_job(daemon, sh("echo hi"))
    with daemon.client() as client:
        # The forwarder process writes them a moment later: its acknowledgements carry the count.
        logging_ = wait_until(lambda: client.status()["logging"],
                              lambda s: s["written"] >= 3 and s["queued"] == 0, what="the written count")
    assert logging_["target"] == "stderr" and logging_["policy"] == "block"
    assert logging_["dropped"] == 0
    assert logging_["forwarder_pid"] > 0 and logging_["forwarder_restarts"] == 0


def test_unknown_ids_are_a_usage_error(daemon: DaemonProcess) -> None:
    out = daemon.procctl("logs", "99")
    assert out.returncode == 2 and "no job or task '99'" in out.stderr
    out = daemon.procctl("logs", "--source", "journal", "99")
    assert out.returncode == 2

"""Output capture from ``call`` tasks run by the worker pool: print, logging and C-level writes.

Each line must reach the daemon's log with the task's fields, like a command's output.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job
from tests.support.waiting import wait_until

pytestmark = pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr")

MODULE = textwrap.dedent('''
    import logging
    import os
    import sys

    def talk():
        print("printed line")
        print("partial", end="")
        print(" line")
        sys.stderr.write("to stderr\\n")
        logging.getLogger("mytask").warning("logged %s", "warning")
        os.write(1, b"raw write to fd 1\\n")
        os.write(2, b"raw write to fd 2\\n")
        print("y" * 40000)
        sys.stdout.write("unterminated")
        return 1
''')


@pytest.fixture
def call_job(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "talker.py").write_text(MODULE)
    return {"name": "talk", "call": "talker:talk", "python_path": [str(tmp_path)]}


def records(daemon: DaemonProcess, ref: str) -> list[dict[str, Any]]:
    out = daemon.procctl("logs", "--json", ref)
    assert out.returncode == 0, out.stderr
    return [r for r in map(json.loads, out.stdout.splitlines()) if r["stream"] != "daemon"]


def test_print_logging_and_fd_writes_of_a_call_task_are_captured(daemon: DaemonProcess,
                                                                 call_job: dict[str, Any]) -> None:
    python_path = call_job.pop("python_path")
    status = run_job(daemon, call_job, name="calls", python_path=python_path)
    assert status["job"]["state"] == "completed", status
    got = [(r["stream"], r["message"]) for r in records(daemon, "1.0")]
    assert ("stdout", "printed line") in got
    assert ("stdout", "partial line") in got
    assert ("stderr", "to stderr") in got
    assert ("log", "logged warning") in got
    assert [len(m) for s, m in got if m.startswith("y")] == [16384, 16384, 40000 - 2 * 16384]
    assert ("stdout", "unterminated") in got
    log = wait_until(daemon.log, lambda text: "logged warning" in text, what="the warning on stderr")
    [line] = [x for x in log.splitlines() if "logged warning" in x]
    assert line.startswith("WARNING") and "PROCPOOL_TASK_ID=1.0" in line and "PROCPOOL_WORKER_PID=" in line


def test_c_level_writes_to_fd_1_and_2_are_captured(daemon: DaemonProcess, call_job: dict[str, Any]) -> None:
    python_path = call_job.pop("python_path")
    run_job(daemon, call_job, python_path=python_path)
    got = [(r["stream"], r["message"]) for r in records(daemon, "1.0")]
    assert ("stdout", "raw write to fd 1") in got
    assert ("stderr", "raw write to fd 2") in got


def test_a_call_task_logging_record_keeps_its_code_location(daemon: DaemonProcess, call_job: dict[str, Any]
                                                            ) -> None:
    python_path = call_job.pop("python_path")
    run_job(daemon, call_job, python_path=python_path)
    with daemon.client() as client:
        reply = client.call("logs", {"id": "1.0", "source": "tail"})
    assert any(r["message"] == "logged warning" and r["stream"] == "log" for r in reply["records"])

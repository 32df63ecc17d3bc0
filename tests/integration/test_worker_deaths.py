"""A call task whose worker dies mid-task: retried while it has retries left, else failed, and the
error says how the worker died (``death_sentence`` in procpoold/pool/slot.py). A task running
beside it on another worker of the same job never notices.

The victim dies only once its bystander is inside its own function (a file says so), and both then
wait for a gate file that the test creates after it has looked at the status: no timing luck.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from procpool import task
from procpoold.oom import OomCounter
from tests.support.daemon import DaemonProcess
from tests.support.jobs import tasks_by_name
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr")]

ROOT = str(Path(__file__).resolve().parents[2])
HERE = "tests.integration.test_worker_deaths"
#: Only reached when something is broken: a task waiting for a file gives up after this.
GIVE_UP = 60.0

#: What a SIGKILL the pool did not send is said to be: not the OOM killer's when the cgroup's count
#: of OOM kills can be read (it did not go up), a question otherwise (see procpoold.oom).
KILL_HINT = " (not by the OOM killer)" if OomCounter().read() is not None else "; out of memory?"

#: How the victim dies, and the end of the sentence that must say so.
DEATHS = {
    "sigkill": f"was killed by SIGKILL while running task 'victim'{KILL_HINT}",
    "exit3": "exited with code 3 while running task 'victim'",
}


# -- task code (runs in the daemon's workers, imported through python_path) ------------------------


def _wait_for(path: str) -> None:
    end = time.monotonic() + GIVE_UP
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def victim(how: str, bystander_started: str, gate: str) -> dict[str, int]:
    """Attempt 1: kill its own worker (``how``) once the bystander runs. Later: wait for ``gate``."""
    attempt = task.context().attempt
    if attempt == 1:
        _wait_for(bystander_started)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(GIVE_UP)  # (the signal is on its way)
        os._exit(3)
    _wait_for(gate)
    return {"attempt": attempt, "pid": os.getpid()}


def bystander(started: str, gate: str) -> dict[str, int]:
    Path(started).write_text(str(os.getpid()))
    _wait_for(gate)
    return {"attempt": task.context().attempt, "pid": os.getpid()}


def call(fn: str, *args: Any) -> dict[str, Any]:
    return {"call": f"{HERE}:{fn}", "args": list(args)}


# -- tests -------------------------------------------------------------------------------------------


def submit(daemon: DaemonProcess, tmp: Path, how: str, retries: int) -> str:
    started, gate = tmp / "bystander-started", tmp / "gate"
    with daemon.client() as client:
        job_id: str = client.submit({
            "name": "deaths",
            "python_path": [ROOT],
            "on_failure": "continue",
            "root": {"concurrent": [
                {"name": "bystander", **call("bystander", str(started), str(gate))},
                {"name": "victim", **call("victim", how, str(started), str(gate)),
                 "retries": retries, "retry_delay": 0},
            ]},
        })["id"]
    return job_id


def expected_sentence(attempt: dict[str, Any], how: str) -> str:
    """``worker <slot> (pid <pid>) <how it died> while running task 'victim'...``"""
    slot = attempt["worker"].removeprefix("pool/")
    return f"worker {slot} (pid {attempt['pid']}) {DEATHS[how]}"


def check_bystander(status: dict[str, Any], state: str) -> dict[str, Any]:
    """The bystander ran once, on one worker, undisturbed."""
    b = tasks_by_name(status)["bystander"]
    assert (b["state"], b["attempts"], b["error"]) == (state, 1, None), b
    return b


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_a_task_whose_worker_dies_is_retried(daemon: DaemonProcess, tmp_path: Path, how: str) -> None:
    job_id = submit(daemon, tmp_path, how, retries=1)
    with daemon.client() as client:
        # Attempt 2 runs (and waits for the gate): attempt 1's error is the task's error meanwhile.
        status = wait_until(
            lambda: client.status(job_id),
            lambda s: len(tasks_by_name(s)["victim"]["attempt_history"]) == 2
            and tasks_by_name(s)["victim"]["state"] == "running",
            what="the victim's second attempt to run",
        )
        v = tasks_by_name(status)["victim"]
        first, second = v["attempt_history"]
        assert first["status"] == "failed" and first["pid"] and first["worker"].startswith("pool/")
        assert v["error"]["type"] == "WorkerDied", v["error"]
        assert v["error"]["message"] == expected_sentence(first, how)
        assert second["pid"] != first["pid"]
        by = check_bystander(status, "running")
        bystander_pid = by["attempt_history"][0]["pid"]
        assert bystander_pid not in (first["pid"], second["pid"])
        pool = client.pool()
        assert pool["info"]["deaths"] == 1
        assert first["pid"] not in {w["pid"] for w in pool["workers"]}  # replaced

        (tmp_path / "gate").touch()
        status = client.wait(job_id, timeout=30)["status"]
    assert status["job"]["state"] == "completed", status
    v = tasks_by_name(status)["victim"]
    assert (v["state"], v["attempts"], v["error"]) == ("completed", 2, None), v
    assert v["result"] == {"attempt": 2, "pid": v["attempt_history"][1]["pid"]}
    assert [a["status"] for a in v["attempt_history"]] == ["failed", "completed"]
    by = check_bystander(status, "completed")
    assert by["result"] == {"attempt": 1, "pid": bystander_pid}
    # The retry is recorded with the cause.
    retrying = 'task "victim" attempt 1 failed; retrying'
    wait_until(daemon.log, lambda log: retrying in log, what="the retry record")
    [record] = [line for line in daemon.log().splitlines() if retrying in line]
    assert expected_sentence(first, how) in record, record


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_a_task_whose_worker_dies_without_retries_fails(daemon: DaemonProcess, tmp_path: Path,
                                                       how: str) -> None:
    job_id = submit(daemon, tmp_path, how, retries=0)
    with daemon.client() as client:
        status = wait_until(lambda: client.status(job_id),
                            lambda s: tasks_by_name(s)["victim"]["state"] == "failed",
                            what="the victim to fail")
        check_bystander(status, "running")  # still waiting for the gate, on its own worker
        (tmp_path / "gate").touch()
        status = client.wait(job_id, timeout=30)["status"]
    assert status["job"]["state"] == "failed"
    v = tasks_by_name(status)["victim"]
    [first] = v["attempt_history"]
    assert (v["state"], v["attempts"], first["status"]) == ("failed", 1, "failed")
    assert v["error"]["type"] == "WorkerDied"
    assert v["error"]["message"] == expected_sentence(first, how)
    by = check_bystander(status, "completed")
    assert by["result"]["pid"] == by["attempt_history"][0]["pid"] != first["pid"]

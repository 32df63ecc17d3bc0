"""Control-plane regressions found in review: waits on every form of reference, and what a reader
who is neither the submitter nor an administrator may see."""

from __future__ import annotations

import time

from tests.support.daemon import DaemonProcess


def test_a_wait_on_a_task_by_name_is_answered_when_the_task_finishes(daemon: DaemonProcess) -> None:
    job = {"name": "named", "cwd": "/", "root": {"sequential": [
        {"name": "quick", "cmd": ["sleep", "0.3"]},
        {"name": "slow", "cmd": ["sleep", "600"]},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(job)["id"]
        started = time.monotonic()
        result = client.call("wait", {"id": f"{job_id}/quick", "timeout": 20.0}, timeout=30)
        took = time.monotonic() - started
        client.cancel(job_id)
    assert result["finished"] and result["state"] == "completed", result
    assert took < 10, f"the wait was answered by its timeout ({took:.1f} s), not by the task"

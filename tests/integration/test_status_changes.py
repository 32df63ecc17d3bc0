"""What changed since a cursor, through a real daemon: polls of a running job carry only the tasks
that changed, the client's copy ends equal to a fresh status, a cursor from before a restart gets
a full answer with a flag, and a bad cursor a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.states import COMPLETED, RUNNING
from procpool.contract.status import FORMAT_SUMMARY, JobStatus, follow, is_changes
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

ROOT = str(Path(__file__).resolve().parents[2])
N = 2_000  # N - 1 quick tasks, then one that reports progress and waits for a file


def gated_job(gate: Path) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [
        {"name": f"t{i}", "call": "tests.support.tasks:add", "args": [i, 1]} for i in range(N - 1)
    ]
    tasks.append({"name": "slow", "call": "tests.support.tasks:progress_then_wait", "args": [str(gate)]})
    return {"name": "gated", "python_path": [ROOT], "root": {"concurrent": tasks}}


def _waiting_on_the_gate(status: JobStatus) -> bool:
    return status.job["counts"] == {COMPLETED: N - 1, RUNNING: 1} and (
        (status.task(N - 1).progress or {}).get("fraction") == 0.5
    )


def test_polls_carry_what_changed_and_a_restart_resets(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    with DaemonProcess(workdir=workdir, extra_args=["--workers", "2"]) as d, d.client(timeout=60) as client:
        job_id = client.submit(gated_job(gate))["id"]
        held = follow(client.call, job_id)
        assert held.reset == "new" and held.total == N
        rows: list[int] = []

        def poll() -> JobStatus:
            wire = client.call("status", {"job": job_id, "view": "columns", "changes_since": held.cursor})
            if is_changes(wire):
                rows.append(wire["columns"]["count"])
                held.apply(wire)
                return held
            raise AssertionError(f"a full answer ({wire.get('reset')}) to a current cursor")

        wait_until(poll, _waiting_on_the_gate, timeout=120, what="the slow task at 50%")
        # a task is sent at most once per change a poll sees (ready, running, completed): never
        # every task at every poll
        assert sum(rows) <= 3 * N, rows
        # nothing changes while the slow task waits: an empty answer, the same cursor
        before = held.cursor
        quiet = client.call("status", {"job": job_id, "view": "columns", "changes_since": before})
        assert quiet["changes"] and quiet["columns"]["count"] == 0 and quiet["cursor"] == before
        assert quiet["job"]["counts"] == {COMPLETED: N - 1, RUNNING: 1}
        # the summary view: the head alone
        head = client.call("status", {"job": job_id, "view": "summary"})
        assert head == {"format": FORMAT_SUMMARY, "job": quiet["job"]}
        # a wait with a cursor returns what changed when the job finishes
        gate.touch()
        done = client.call(
            "wait", {"id": job_id, "timeout": 60.0, "view": "columns", "changes_since": before}, timeout=90
        )
        assert done["finished"] and done["state"] == COMPLETED
        assert is_changes(done["status"]) and done["status"]["columns"]["count"] == 1
        held.apply(done["status"])
        fresh = client.job_status(job_id)
        assert isinstance(fresh, JobStatus)
        assert bytes(held.states) == fresh.states and held.sparse["result"] == fresh.sparse["result"]
        assert held.job["counts"] == {COMPLETED: N} and held.task(N - 1).result == "done"
        # bad input: a clear error naming the argument
        for args, why in (
            ({"view": "columns", "changes_since": "yesterday"}, "must be the 'cursor' of an earlier reply"),
            ({"changes_since": held.cursor}, "needs view 'columns'"),
        ):
            with pytest.raises(ProcpoolError) as caught:
                client.call("status", {"job": job_id, **args})
            assert caught.value.code == ErrorCode.INVALID_ARGUMENT and why in caught.value.message
        cursor = held.cursor
    # a cursor from before a restart: the whole status, flagged, never an error or stale rows
    with DaemonProcess(workdir=workdir, extra_args=["--workers", "2"]) as d, d.client(timeout=60) as client:
        wire = client.call("status", {"job": job_id, "view": "columns", "changes_since": cursor})
        assert (wire["changes"], wire["reset"]) == (False, "unknown")
        again = JobStatus.decode(wire)
        assert again.states == fresh.states and again.counts() == {COMPLETED: N}
        assert follow(client.call, job_id, again) is again and again.reset is None

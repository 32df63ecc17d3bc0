"""A big job's status through a real daemon: the columnar view's size, and what procctl prints.

One job of 20,000 tasks, of which every 400th fails (50 failures), run once for the module.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.codec import pack
from procpool.contract.errors import ProcpoolError
from procpool.contract.states import COMPLETED, FAILED, RUNNING
from procpool.contract.status import DENSE_BYTES_PER_TASK, FORMAT_COLUMNS, FORMAT_FULL, JobStatus
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

ROOT = str(Path(__file__).resolve().parents[2])
N = 20_000
EVERY = 400  # task i fails when i % EVERY == 0
FAILURES = N // EVERY
N_SLOW = 149  # the index of the gated task in test_waiters_of_one_job_get_the_view_each_asked_for


def big_job(name: str = "big", n: int = N) -> dict[str, Any]:
    tasks = [
        {"name": f"t{i}", "call": "tests.support.tasks:boom", "args": [f"no {i}"]}
        if i % EVERY == 0
        else {"name": f"t{i}", "call": "tests.support.tasks:add", "args": [i, 0]}
        for i in range(n)
    ]
    root = {"name": "g", "concurrent": tasks}
    return {"name": name, "on_failure": "continue", "python_path": [ROOT], "root": root}


@pytest.fixture(scope="module")
def finished() -> Iterator[tuple[DaemonProcess, str]]:
    with DaemonProcess(extra_args=["--workers", "2"]) as d:
        with d.client(timeout=120) as client:
            reply = client.submit(big_job(), wait=240)
            assert reply["finished"] and reply["state"] == FAILED
        yield d, reply["id"]


def test_the_columnar_status_is_small_and_complete(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    with d.client(timeout=60) as client:
        wire = client.call("status", {"job": job_id, "view": "columns"})
        assert wire["format"] == FORMAT_COLUMNS and wire["columns"]["next"] is None
        # Every task in one reply: 21 bytes each plus the results (an int per completed task),
        # their indices and the failed tasks' names and errors; the full view takes ~330.
        size = len(pack(wire))
        results = len(pack(wire["sparse"]["result"]))
        assert size - results < N * DENSE_BYTES_PER_TASK + FAILURES * 300 + 4096, size
        assert size < N * 32, size
        status = JobStatus.decode(wire)
        assert status.counts() == {COMPLETED: N - FAILURES, FAILED: FAILURES} == status.job["counts"]
        assert list(status.indices(FAILED)) == list(range(0, N, EVERY))
        row = status.task(EVERY)
        assert (row.name, row.state, row.attempts) == (f"t{EVERY}", FAILED, 1)
        assert row.error is not None and row.error["message"] == f"no {EVERY}"
        assert row.started_at is not None and row.finished_at is not None
        assert row.finished_at >= row.started_at
        done = status.task(N - 1)
        assert (done.state, done.result, done.error) == (COMPLETED, N - 1, None)
        # the Python client's own call fetches and decodes the same
        again = client.job_status(job_id)
        assert isinstance(again, JobStatus) and again.states == status.states


def test_columnar_pages_join_up(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    with d.client(timeout=60) as client:
        page = client.job_status(job_id, tasks_from=N - 10)
        assert isinstance(page, JobStatus)
        assert (page.first, len(page.states), page.next, page.groups) == (N - 10, 10, None, [])
        whole = client.job_status(job_id)
        assert isinstance(whole, JobStatus)
        assert whole.states[-10:] == page.states and whole.total == N
        middle = client.job_status(job_id, tasks_from=EVERY - 2, tasks_limit=5)
        assert isinstance(middle, JobStatus)
        assert (middle.first, len(middle.states), middle.next) == (EVERY - 2, 5, EVERY + 3)
        assert list(middle.indices(FAILED)) == [EVERY] and middle.task(EVERY).name == f"t{EVERY}"
        assert middle.sparse["result"] == {i: i for i in (EVERY - 2, EVERY - 1, EVERY + 1, EVERY + 2)}


def test_procctl_status_of_a_big_job_is_bounded(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    out = d.procctl("status", job_id)
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f'job {job_id} "big"  failed')
    assert lines[1] == f"  {N} tasks: {N - FAILURES} completed, {FAILURES} failed"
    listed = [line for line in lines if line.startswith("  ✘ ")]
    assert [line.split()[1] for line in listed] == [f"t{i}" for i in range(0, 20 * EVERY, EVERY)]
    assert "ValueError: no 0" in listed[0]
    more = (f"  … and {FAILURES - 20} more failed or running tasks; procctl status {job_id} --state failed"
            " lists the failed ones")
    assert more in out.stdout
    assert len(lines) < 60, out.stdout
    every = d.procctl("status", job_id, "--tasks")
    assert every.returncode == 0 and every.stdout.count("\n") > N
    # only the failed tasks, picked by the daemon, each with its id
    failed = d.procctl("status", job_id, "--state", "failed")
    assert failed.returncode == 0, failed
    lines = failed.stdout.splitlines()
    assert lines[1] == f"  {N} tasks: {N - FAILURES} completed, {FAILURES} failed"
    rows = [line.split() for line in lines[2:] if "  ✘ " in line]
    assert [row[0] for row in rows] == [f"{job_id}.{i}" for i in range(0, FAILURES * EVERY, EVERY)]
    none = d.procctl("status", job_id, "--state", "running")
    assert none.stdout.splitlines()[2:] == ["  no task is running"]


def test_procctl_json_status_keeps_format_1(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    out = d.procctl("--json", "status", job_id)
    assert out.returncode == 0, out
    data = json.loads(out.stdout)
    assert data["format"] == FORMAT_FULL and len(data["tasks"]) == N
    assert data["tasks"][EVERY]["state"] == FAILED and data["tasks"][1]["result"] == 1


def test_procctl_submit_wait_prints_a_bounded_summary(tmp_path: Path) -> None:
    n = 2_000
    path = tmp_path / "job.json"
    path.write_text(json.dumps(big_job("waited", n)))
    with DaemonProcess(extra_args=["--workers", "2"]) as d:
        out = d.procctl("submit", str(path), "--wait", timeout=180)
    assert out.returncode == 1, out  # some tasks failed
    lines = out.stdout.splitlines()
    assert lines[1] == f"  {n} tasks: {n - n // EVERY} completed, {n // EVERY} failed", out.stdout
    assert len(lines) < 30 and "last lines of" not in lines[0]
    assert f"[{'#' * 30}] {n}/{n}" in out.stderr  # the live progress ended full


def test_a_task_reference_still_shows_the_task(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    out = d.procctl("status", f"{job_id}/t{EVERY}")
    assert out.returncode == 0, out
    assert out.stdout.startswith(f"✘ t{EVERY}  failed  1 attempt") and "ValueError: no 400" in out.stdout


def test_a_bad_view_is_refused(finished: tuple[DaemonProcess, str]) -> None:
    d, job_id = finished
    out = d.procctl("--json", "status", job_id)  # the daemon still serves after the refusal below
    with d.client() as client:
        with pytest.raises(ProcpoolError, match="'view' must be one of full, columns"):
            client.call("status", {"job": job_id, "view": "rows"})
        assert client.call("status", {"job": job_id, "tasks_limit": 1})["format"] == FORMAT_FULL
    assert out.returncode == 0


def test_waiters_of_one_job_get_the_view_each_asked_for(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    n = N_SLOW + 1  # more than procctl's tree size: procctl prints the summary
    tasks: list[dict[str, Any]] = [
        {"name": f"t{i}", "call": "tests.support.tasks:add", "args": [i, 1]} for i in range(n - 1)
    ]
    tasks.append({"name": "slow", "call": "tests.support.tasks:progress_then_wait", "args": [str(gate)]})
    job = {"name": "gated", "python_path": [ROOT], "root": {"concurrent": tasks}}
    results: dict[str, Any] = {}

    def wait(d: DaemonProcess, job_id: str, view: str) -> None:
        with d.client(timeout=60) as client:
            results[view] = client.wait(job_id, timeout=60, view=view)  # type: ignore[arg-type]

    with DaemonProcess(extra_args=["--workers", "2"]) as d, d.client(timeout=60) as client:
        job_id = client.submit(job)["id"]
        wait_until(lambda: client.job_status(job_id), _halfway, timeout=60, what="slow at 50%")
        out = d.procctl("status", job_id)
        assert out.returncode == 0, out
        assert f"  {n} tasks: 1 running, {n - 1} completed" in out.stdout
        assert "  ▶ slow  running  1 attempt" in out.stdout and "50% halfway" in out.stdout
        threads = [threading.Thread(target=wait, args=(d, job_id, view)) for view in ("full", "columns")]
        for t in threads:
            t.start()
        wait_until(lambda: client.status()["requests"]["pending_waits"] == 2, timeout=30, what="2 waits")
        gate.touch()
        for t in threads:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in threads)
    full, cols = results["full"], results["columns"]
    assert full["state"] == cols["state"] == COMPLETED
    assert full["status"]["format"] == FORMAT_FULL and len(full["status"]["tasks"]) == n
    assert full["status"]["tasks"][-1]["result"] == "done"
    assert isinstance(cols["status"], JobStatus) and cols["status"].counts() == {COMPLETED: n}
    assert cols["status"].sparse["result"][n - 1] == "done"


def _halfway(status: Any) -> bool:
    if not isinstance(status, JobStatus):
        return False
    running = list(status.indices(RUNNING))
    return running == [N_SLOW] and (status.task(N_SLOW).progress or {}).get("fraction") == 0.5


def test_procctl_submit_wait_follows_a_running_job_by_what_changed(tmp_path: Path) -> None:
    # Long enough for several progress polls (each after the first asks only for what changed
    # since the previous one); the summary printed at the end comes from the copy those changes
    # kept up to date, so it must agree with the job's real outcome.
    n, every = 300, 50
    tasks = [{"name": f"t{i}", "cmd": ["false"] if i % every == 0 else ["sleep", "0.005"]} for i in range(n)]
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "followed", "on_failure": "continue",
                                "root": {"concurrent": tasks}}))
    with DaemonProcess(extra_args=["--workers", "2"]) as d:
        out = d.procctl("submit", str(path), "--wait", timeout=180)
        job_id = out.stderr.split()[1]
        with d.client() as client:
            real = client.status(job_id)
    assert out.returncode == 1, out
    progress = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert len(progress) >= 3, out.stderr  # it was followed while it ran, not only at its end
    failed = sum(1 for t in real["tasks"] if t["state"] == FAILED)
    assert failed == n // every
    lines = out.stdout.splitlines()
    assert lines[1] == f"  {n} tasks: {n - failed} completed, {failed} failed", out.stdout

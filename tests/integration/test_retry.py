"""``procctl retry``: a finished job's tasks that did not complete run again as a new run of the
same job, through the real procctl against a real daemon (each engine), and across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job, tasks_by_name, wait_task_state
from tests.support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])

engine = each_engine()


def step(
    name: str, log: Path, needs: Path | None = None, gate: Path | None = None, **extra: Any
) -> dict[str, Any]:
    args = [str(log), name, str(needs or ""), str(gate or "")]
    return {"name": name, "call": "tests.support.tasks:record_run", "args": args, **extra}


def runs(log: Path) -> dict[str, int]:
    """How many times each task ran (a line per run in ``log``)."""
    counts: dict[str, int] = {}
    for name in log.read_text().split():
        counts[name] = counts.get(name, 0) + 1
    return counts


def procctl_json(daemon: DaemonProcess, *args: str) -> Any:
    out = daemon.procctl("--json", *args)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return json.loads(out.stdout)


def failed_job(daemon: DaemonProcess, tmp_path: Path, **extra: Any) -> tuple[str, Path, Path]:
    """A job whose step b fails until the file ``flag`` exists: a and side complete, c is
    skipped (after b in the sequence), d skipped (depends on c). Returns (id, log, flag)."""
    log, flag = tmp_path / "runs.log", tmp_path / "flag"
    status = run_job(
        daemon,
        {"concurrent": [
            {"sequential": [step("a", log), step("b", log, needs=flag), step("c", log)]},
            step("side", log),
            step("d", log, depends_on=["c"]),
        ]},
        python_path=[ROOT],
        namespace={"runs": 0},
        on_failure="continue",
        **extra,
    )
    states = {n: t["state"] for n, t in tasks_by_name(status).items()}
    assert states == {"a": "completed", "b": "failed", "c": "skipped", "side": "completed", "d": "skipped"}
    assert status["job"]["state"] == "failed"
    return status["job"]["id"], log, flag


def test_retry_runs_what_failed_and_keeps_what_completed(daemon: DaemonProcess, tmp_path: Path) -> None:
    job, log, flag = failed_job(daemon, tmp_path)
    flag.touch()
    out = daemon.procctl("retry", job, "--wait")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith(f"job {job} run 2: 3 tasks again (b, c, d), 2 completed tasks kept")
    assert runs(log) == {"a": 1, "b": 2, "c": 1, "side": 1, "d": 1}  # a and side did not run again
    record = f'job {job} "test" retried: run 2, 3 tasks again, 2 kept'
    wait_until(lambda: record in daemon.log(), what="the retry's record in the daemon's log")
    status = procctl_json(daemon, "status", job)
    t = tasks_by_name(status)
    assert status["job"]["state"] == "completed" and status["job"]["run"] == 2
    assert status["job"]["kept"] == 2 and status["job"]["namespace"] == {"runs": 6}  # it carried over
    assert [r["run"] for r in status["job"]["runs"]] == [1, 2]
    assert {n: x["result"] for n, x in t.items()} == {
        "a": "a@run1", "b": "b@run2", "c": "c@run2", "side": "side@run1", "d": "d@run2"}
    assert (t["a"]["kept_from"], t["b"]["kept_from"]) == (1, None)
    assert t["b"]["attempts"] == 1  # its attempts of run 1 are gone with run 1
    assert procctl_json(daemon, "result", f"{job}/a") == "a@run1"  # the kept result reads as before
    text = daemon.procctl("status", job, "--tasks").stdout
    assert "run 2 (retry)" in text and "kept: 2 completed tasks of earlier runs" in text
    assert "kept from run 1" in next(line for line in text.splitlines() if " a " in f"{line} ")
    explained = daemon.procctl("explain", f"{job}/a").stdout
    assert "kept from run 1 by procctl retry" in explained
    # a completed job has nothing to retry: said, exit 0, nothing changes
    out = daemon.procctl("retry", job)
    assert (out.returncode, out.stdout.strip()) == (0, f"job {job} completed: nothing to retry")
    assert procctl_json(daemon, "status", job)["job"]["run"] == 2


def test_task_narrows_the_retry(daemon: DaemonProcess, tmp_path: Path) -> None:
    log, flag = tmp_path / "runs.log", tmp_path / "flag"
    status = run_job(
        daemon,
        {"concurrent": [
            {"sequential": [step("a", log, needs=flag), step("a2", log)]},
            {"sequential": [step("b", log, needs=flag), step("b2", log)]},
        ]},
        python_path=[ROOT],
        on_failure="continue",
    )
    job = status["job"]["id"]
    flag.touch()
    out = daemon.procctl("retry", job, "--task", "a2")  # a2 waits on a, which failed, and is not named
    assert out.returncode == 1
    assert f'task {job}.1 "a2" waits on task {job}.0 "a", which failed and is not retried' in out.stderr
    assert "hint: add --task a" in out.stderr
    out = daemon.procctl("retry", job, "--task", "nosuch")
    assert out.returncode == 2 and "no task or group named" in out.stderr
    reply = procctl_json(daemon, "retry", job, "--task", "a")
    assert (reply["run"], reply["again"], reply["tasks"]) == (2, 2, ["a", "a2"])
    out = daemon.procctl("wait", job)
    assert out.returncode == 1  # b and b2 were not retried: the job still failed
    states = {n: t["state"] for n, t in tasks_by_name(procctl_json(daemon, "status", job)).items()}
    assert states == {"a": "completed", "a2": "completed", "b": "failed", "b2": "skipped"}
    assert runs(log) == {"a": 2, "a2": 1, "b": 1}
    reply = procctl_json(daemon, "retry", job, "--task", f"{job}.2")  # by id: b, and b2 after it
    assert (reply["run"], reply["again"], reply["kept"]) == (3, 2, 2)
    assert daemon.procctl("wait", job).returncode == 0
    assert runs(log) == {"a": 2, "a2": 1, "b": 2, "b2": 1}
    status = procctl_json(daemon, "status", job)
    assert {t["name"]: t["kept_from"] for t in status["tasks"]} == {"a": 2, "a2": 2, "b": None, "b2": None}


def test_a_running_or_repeating_job_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    log = tmp_path / "runs.log"
    with daemon.client() as client:
        job = client.submit({"name": "long", "python_path": [ROOT], "root": step("w", log, gate=gate)})["id"]
        wait_task_state(client, job, "w")
        out = daemon.procctl("retry", job)
        assert out.returncode == 1
        assert f"job {job} is running: retry is for finished jobs" in out.stderr
        assert f"procctl wait {job}" in out.stderr
        gate.touch()
        assert client.wait(job, timeout=60)["state"] == "completed"
    flag = tmp_path / "flag"
    status = run_job(daemon, step("r", log, needs=flag), python_path=[ROOT], repeat=2)
    out = daemon.procctl("retry", status["job"]["id"])
    assert out.returncode == 1 and "repeats (repeat: 2)" in out.stderr
    out = daemon.procctl("retry", "99999")
    assert out.returncode == 2 and "no job or task" in out.stderr


@pytest.mark.local_engine_only("a crash of the daemon mid-attempt, as test_faults does it")
def test_a_restart_in_the_middle_of_a_retried_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    log, flag, gate = tmp_path / "runs.log", tmp_path / "flag", tmp_path / "gate"
    status = run_job(
        daemon,
        {"sequential": [step("a", log), step("b", log, needs=flag, gate=gate), step("c", log)]},
        python_path=[ROOT],
    )
    job = status["job"]["id"]
    assert status["job"]["state"] == "failed"
    flag.touch()
    assert daemon.procctl("retry", job).returncode == 0
    with daemon.client() as client:
        wait_task_state(client, job, "b")
    daemon.crash()
    daemon.restart()
    with daemon.client() as client:
        status = client.status(job)
        assert status["job"]["run"] == 2 and status["job"]["kept"] == 1
        assert tasks_by_name(status)["a"]["kept_from"] == 1
        wait_task_state(client, job, "b")  # the interrupted attempt runs again
        gate.touch()
        assert client.wait(job, timeout=60)["state"] == "completed"
        status = client.status(job)
    assert runs(log) == {"a": 1, "b": 3, "c": 1}  # b: run 1 failed, run 2 interrupted, then done
    assert [t["result"] for t in status["tasks"]] == ["a@run1", "b@run2", "c@run2"]

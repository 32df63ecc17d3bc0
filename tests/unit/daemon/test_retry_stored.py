"""A retry through the scheduler with a real state store: the finished job is read back, runs
again as a new run, its store records carry that run, and a restart in its middle resumes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold.engines import Outcome
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_scheduler import RecordingExecutor
from tests.unit.daemon.test_store import run_scheduler

pytestmark = pytest.mark.unit

DOC = {"name": "j", "root": {"sequential": [
    {"name": "a", "cmd": ["true"]}, {"name": "b", "cmd": ["true"]}, {"name": "c", "cmd": ["true"]},
]}}


def end_running(
    loop: EventLoop, executor: RecordingExecutor, scheduler: Scheduler, fail: set[str]
) -> list[str]:
    """End every running attempt (failed for tasks named in ``fail``); the names ended."""
    ended = []
    for spec in list(executor.submitted):
        if spec.attempt_id in executor.running:
            executor.running.discard(spec.attempt_id)
            status = "failed" if spec.task_name in fail else "completed"
            scheduler.attempt_finished(Outcome(spec.attempt_id, status, result=f"{spec.task_name}!"))
            ended.append(spec.task_name)
    loop.run_once(0)
    return ended


def test_retry_reads_back_runs_again_and_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit(DOC, 1000)
    loop.run_once(0)
    assert end_running(loop, executor, scheduler, set()) == ["a"]
    assert end_running(loop, executor, scheduler, {"b"}) == ["b"]
    assert job.id not in scheduler.jobs and scheduler.finished[job.id].state == "failed"
    with pytest.raises(ProcpoolError) as info:
        scheduler.retry(job.id, ["a"])
    assert info.value.code == ErrorCode.CONFLICT and "completed" in str(info.value)
    reply = scheduler.retry(job.id)
    assert reply == {"id": job.id, "run": 2, "state": "running", "again": 2, "kept": 1, "tasks": ["b", "c"]}
    assert job.id in scheduler.jobs and job.id not in scheduler.finished
    loop.run_once(0)
    assert [s.attempt_id for s in executor.submitted][-1] == f"{job.id}.1@2#1"
    with pytest.raises(ProcpoolError) as info:
        scheduler.retry(job.id)
    assert info.value.code == ErrorCode.CONFLICT and "retry is for finished jobs" in str(info.value)
    loop.close()
    store.close()  # as after a crash: b's second run was running

    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    again = scheduler.jobs[job.id]
    assert again.run == 2 and again.kept == {0: 1}
    assert again.tasks[0].result == "a!" and again.tasks[1].state in ("ready", "running")
    loop.run_once(0)
    assert end_running(loop, executor, scheduler, set()) == ["b"]
    assert end_running(loop, executor, scheduler, set()) == ["c"]
    assert scheduler.finished[job.id].state == "completed"
    done, _ = scheduler.resolve(job.id)  # read back from the store
    assert [t.result for t in done.tasks] == ["a!", "b!", "c!"]
    assert done.kept == {0: 1} and [r["run"] for r in done.runs] == [1, 2]
    assert scheduler.retry(job.id)["again"] == 0  # completed: nothing to retry
    loop.close()
    store.close()

    store = StateStore(tmp_path / "state.db")  # the task log's rows were numbered on, not over
    loop, executor, scheduler = run_scheduler(store)
    done, _ = scheduler.resolve(job.id)
    assert [t.result for t in done.tasks] == ["a!", "b!", "c!"] and done.state == "completed"
    loop.close()
    store.close()


def test_a_repeating_job_and_a_task_ref_are_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({**DOC, "repeat": 2})
    loop.run_once(0)
    end_running(loop, executor, scheduler, {"a"})
    assert scheduler.finished[job.id].state == "failed"
    with pytest.raises(ProcpoolError, match="repeats"):
        scheduler.retry(job.id)
    with pytest.raises(ProcpoolError, match="retry takes a job") as info:
        scheduler.retry(f"{job.id}.0")
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ProcpoolError) as info:
        scheduler.retry("999")
    assert info.value.code == ErrorCode.NOT_FOUND
    loop.close()
    store.close()


def test_task_names_a_group_or_a_task_of_the_job(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    doc = {"name": "g", "on_failure": "continue", "root": {"concurrent": [
        {"name": "left", "sequential": [{"name": "a", "cmd": ["true"]}, {"name": "b", "cmd": ["true"]}]},
        {"name": "right", "sequential": [{"name": "c", "cmd": ["true"]}, {"name": "d", "cmd": ["true"]}]},
    ]}}
    job, _ = scheduler.submit(doc)
    other, _ = scheduler.submit(DOC)
    loop.run_once(0)
    end_running(loop, executor, scheduler, {"a", "c"})
    end_running(loop, executor, scheduler, {"a", "c"})
    assert scheduler.finished[job.id].state == "failed"
    with pytest.raises(ProcpoolError, match="no task or group named") as info:
        scheduler.retry(job.id, ["middle"])
    assert info.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(ProcpoolError, match=f"is not a task of job {job.id}"):
        scheduler.retry(job.id, [f"{other.id}.0"])
    reply = scheduler.retry(job.id, ["right"])  # a group: its tasks that did not complete
    assert (reply["again"], reply["tasks"]) == (2, ["c", "d"])
    loop.close()
    store.close()


def test_the_contract_checks_the_tasks_named() -> None:
    from procpool.contract.codec import RequestError
    from procpool.contract.ops import check_args

    check_args("retry", {"id": "1", "tasks": ["a", "1.2"]})
    for bad in ([], [""], [3], ["x" * 257], ["a"] * 1001):
        with pytest.raises(RequestError, match="'tasks'"):
            check_args("retry", {"id": "1", "tasks": bad})

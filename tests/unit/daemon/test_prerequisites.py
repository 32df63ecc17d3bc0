"""Jobs that wait for others (``after``): referenced by task name, cancelled while waiting,
and restored after their prerequisite is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold.engines import Outcome
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_scheduler import RecordingExecutor, make
from tests.unit.daemon.test_store import run_scheduler

pytestmark = pytest.mark.unit


def finish(loop: EventLoop, executor: RecordingExecutor, scheduler: Scheduler) -> None:
    for spec in list(executor.submitted):
        if spec.attempt_id in executor.running:
            executor.running.discard(spec.attempt_id)
            scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
    loop.run_once(0)


@pytest.mark.parametrize("ref", ["{a}/x", "{a}.00", "{a}/y"])
def test_a_job_after_a_task_named_or_spelled_otherwise_starts_when_it_completes(ref: str) -> None:
    loop, executor, scheduler = make(slots=1)
    tree = {"sequential": [{"name": "x", "cmd": ["true"]}, {"name": "y", "cmd": ["true"]}]}
    a, _ = scheduler.submit({"name": "a", "root": tree})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["true"]}}, after=[ref.format(a=a.id)])
    for _ in range(4):
        loop.run_once(0)
        finish(loop, executor, scheduler)
    assert a.state == "completed"
    assert b.state == "completed"


@pytest.mark.parametrize("tasks", [1, 3])
def test_cancelling_a_job_that_waits_for_its_prerequisites_cancels_it(tasks: int) -> None:
    loop, executor, scheduler = make(slots=0)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["true"]}})
    root = {"cmd": ["true"]} if tasks == 1 else {"sequential": [{"cmd": ["true"]}] * tasks}
    b, _ = scheduler.submit({"name": "b", "root": root}, after=[a.id])
    assert b.state == "pending"
    scheduler.cancel(b.id)
    assert b.state == "cancelled" and b.finished
    assert all(t.state in ("cancelled", "skipped") for t in b.tasks)
    assert scheduler.quota.queued == 1  # only a's task still counts
    executor.slots = 1
    loop.run_once(0)
    finish(loop, executor, scheduler)
    assert a.state == "completed"
    assert b.state == "cancelled"
    assert [s.job_id for s in executor.submitted] == [a.id]  # b never ran


def test_a_stored_job_whose_prerequisite_is_gone_fails_instead_of_stopping_the_start(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["true"]}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["true"]}}, after=[a.id])
    loop.run_once(0)
    loop.close()
    store.close()
    store = StateStore(tmp_path / "state.db")  # as if a were removed while b waited
    store.db.execute("DELETE FROM jobs WHERE id=?", (int(a.id),))
    loop, _executor, scheduler = run_scheduler(store)
    again = scheduler._job(b.id)
    assert again is not None and again.state == "failed"
    assert f'upstream "{a.id}"' in (again.reason or "")
    loop.close()
    store.close()


def test_a_task_of_a_job_that_waits_for_its_prerequisites_is_not_cancelled_only_to_run_later() -> None:
    loop, executor, scheduler = make(slots=1)
    a, _ = scheduler.submit({"name": "a", "root": {"cmd": ["true"]}})
    b, _ = scheduler.submit({"name": "b", "root": {"cmd": ["true"]}}, after=[a.id])
    with pytest.raises(ProcpoolError, match="waits for its prerequisites") as caught:
        scheduler.cancel(f"{b.id}.0")
    assert caught.value.code == ErrorCode.CONFLICT
    for _ in range(3):
        loop.run_once(0)
        finish(loop, executor, scheduler)
    assert b.state == "completed"

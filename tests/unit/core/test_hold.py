"""A job held after a restart (``on_interrupt: hold``) runs every task that was left to run once
it is resumed, also the ones the store recorded as ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from procpool.contract.tree import parse_job
from procpoold.core.jobs import FULL_ENTRY, START_ENTRY, Job
from procpoold.engines import Outcome
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_store import run_scheduler

pytestmark = pytest.mark.unit

TREE = {"concurrent": [{"cmd": ["true"]}, {"cmd": ["true"]}]}


def test_resume_makes_the_tasks_stored_as_ready_ready_again() -> None:
    job = Job("1", parse_job({"name": "h", "on_interrupt": "hold", "root": TREE}), {}, 0.0)
    data = {**job.dump(), "state": "running", "started_at": 0.0}
    job.load(data, [[START_ENTRY, 0, 1, "1.0@1#1", 1.0], [FULL_ENTRY, 1, {"state": "ready"}]])
    effects, interrupted = job.recover(2.0)
    assert job.state == "held" and len(interrupted) == 1 and effects.ready == []
    assert sorted(job.resume().ready) == [0, 1]


def test_a_held_repeat_job_finishes_once_resumed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    executor.slots = 1  # the second task of each run waits, ready, for the slot

    def finish_running() -> None:
        loop.run_once(0)
        for spec in list(executor.submitted):
            if spec.attempt_id in executor.running:
                executor.running.discard(spec.attempt_id)
                scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
        loop.run_once(0)

    job, _ = scheduler.submit({"name": "r", "repeat": 2, "on_interrupt": "hold", "root": TREE})
    while job.run < 2:
        finish_running()
    loop.run_once(0)
    assert [t.state for t in job.tasks] == ["running", "ready"]
    loop.close()
    store.close()  # a crash in run 2

    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    executor.slots = 1
    assert scheduler.jobs[job.id].state == "held"
    scheduler.resume(job.id)
    for _ in range(4):
        finish_running()
    assert scheduler.finished[job.id].state == "completed"
    loop.close()
    store.close()


SEQ = {"sequential": [{"cmd": ["true"]}, {"cmd": ["true"]}]}


def held_job(tmp_path: Path) -> str:
    """A job held after a restart, its store closed (as at the next stop)."""
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    job, _ = scheduler.submit({"name": "h", "on_interrupt": "hold", "root": SEQ})
    loop.run_once(0)
    loop.close()
    store.close()  # a crash mid-attempt
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    loop.run_once(0)
    assert scheduler.jobs[job.id].state == "held"
    loop.close()
    store.close()
    return job.id


def test_a_held_job_stays_held_across_another_restart_and_finishes_once_resumed(tmp_path: Path) -> None:
    job_id = held_job(tmp_path)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = run_scheduler(store)
    loop.run_once(0)
    assert scheduler.jobs[job_id].state == "held" and executor.submitted == []
    scheduler.resume(job_id)
    for _ in range(3):
        loop.run_once(0)
        for spec in list(executor.submitted):
            if spec.attempt_id in executor.running:
                executor.running.discard(spec.attempt_id)
                scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
        loop.run_once(0)
    assert scheduler.finished[job_id].state == "completed"
    loop.close()
    store.close()


def test_cancelling_a_held_job_finishes_it(tmp_path: Path) -> None:
    job_id = held_job(tmp_path)
    store = StateStore(tmp_path / "state.db")
    loop, _executor, scheduler = run_scheduler(store)
    scheduler.cancel(job_id)
    loop.run_once(0)
    assert scheduler.finished[job_id].state == "cancelled"
    assert scheduler.quota.queued == 0
    loop.close()
    store.close()

"""Nodes that cycle on their own clock, in the scheduler: the timer of a node's next cycle, its
time kept across a restart (re-armed, or started at once when due), ``stop`` of a job whose only
repetition is on nodes, and ``retry`` resuming a node in its cycle (a store and a clock of the
test's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ProcpoolError
from procpoold.core.cycles import CyclingJob
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_scheduler import RecordingExecutor
from tests.unit.daemon.test_schedules import T0, Clock, finish_running, restart, start

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def doc(**node: Any) -> dict[str, Any]:
    return {"name": "cycling", "root": {"concurrent": [
        {"name": "tick", "cmd": ["true"], **node},
        {"name": "slow", "cmd": ["sleep", "1"]},
    ]}}


def test_a_waiting_node_keeps_its_time_across_a_restart_and_starts_when_due(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit(doc(every=100, repeat=3))
    assert finish_running(loop, executor, scheduler, "tick") == 1
    assert isinstance(job, CyclingJob) and job.waits == {("task", 0): T0 + 100}
    assert (job.id, ("task", 0)) in scheduler._cycle_timers
    scheduler.flush()

    clock.now = T0 + 50  # before the time: the timer is armed again, nothing starts
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    again = scheduler.jobs[job.id]
    assert isinstance(again, CyclingJob) and again.waits == {("task", 0): T0 + 100}
    assert (job.id, ("task", 0)) in scheduler._cycle_timers
    loop.run_once(0)
    assert again.tasks[0].state == "completed" and again.cycle[("task", 0)] == 1
    scheduler.flush()

    clock.now = T0 + 500  # after it: the next cycle starts at once
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    again = scheduler.jobs[job.id]
    loop.run_once(0)
    assert isinstance(again, CyclingJob) and not again.waits and again.cycle[("task", 0)] == 2
    assert finish_running(loop, executor, scheduler, "tick") == 1
    assert again.waits == {("task", 0): T0 + 600}
    loop.close()
    store.close()


def test_stop_takes_a_job_that_repeats_only_a_node_and_ends_its_wait_at_once() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    job, _ = scheduler.submit(doc(every=100))
    finish_running(loop, executor, scheduler, "tick")
    reply = scheduler.stop(job.id)
    assert reply["cycles"] is True and job.stop_requested
    assert isinstance(job, CyclingJob) and not job.waits and not scheduler._cycle_timers
    assert "no node cycle after the current ones" in (job.reason or "")
    finish_running(loop, executor, scheduler, "slow")
    assert job.state == "completed"
    plain, _ = scheduler.submit({"root": {"cmd": ["sleep", "9"]}})
    with pytest.raises(ProcpoolError, match="does not repeat"):
        scheduler.stop(plain.id)
    loop.close()


def test_retry_resumes_a_node_in_the_cycle_where_it_failed(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit({"name": "r", "on_failure": "continue", "root": {"concurrent": [
        {"name": "tick", "cmd": ["true"], "repeat": 3}]}})
    assert finish_running(loop, executor, scheduler, "tick") == 1
    loop.run_once(0)  # cycle 2 starts
    finish_running(loop, executor, scheduler, "tick", "failed")
    assert job.state == "failed"
    scheduler.flush()  # (the finished job leaves memory: the retry reads it back)
    reply = scheduler.retry(job.id)
    again = scheduler.jobs[job.id]
    assert reply["again"] == 1 and isinstance(again, CyclingJob) and again.cycle[("task", 0)] == 2
    assert finish_running(loop, executor, scheduler, "tick") == 1
    loop.run_once(0)
    assert finish_running(loop, executor, scheduler, "tick") == 1  # cycle 3, the last
    assert again.state == "completed" and again.cycle[("task", 0)] == 3
    loop.close()
    store.close()


def test_a_job_run_stores_its_nodes_back_at_cycle_one(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit({"name": "runs", "repeat": 2,
                               "root": {"name": "tick", "cmd": ["true"], "repeat": 2}})
    assert finish_running(loop, executor, scheduler, "tick") == 1
    loop.run_once(0)  # its cycle 2
    assert finish_running(loop, executor, scheduler, "tick") == 1  # the end of run 1: run 2 starts
    loop.run_once(0)
    assert isinstance(job, CyclingJob) and job.run == 2 and job.cycle[("task", 0)] == 1
    scheduler.flush()
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    again = scheduler.jobs[job.id]
    assert isinstance(again, CyclingJob) and again.run == 2 and again.cycle[("task", 0)] == 1
    loop.close()
    store.close()


def test_each_cycle_gives_its_attempts_ids_of_their_own() -> None:
    """An engine may key its work by attempt id (Dask does: a second submit of a finished key was
    never run), so the ids name the cycles: a task in cycle 2 of an inner node in cycle 1 of an
    outer one is ``@1~1.2#1``; a task in no cycling node keeps the plain form."""
    loop = EventLoop()
    executor = RecordingExecutor(4)
    scheduler = Scheduler(loop, Engines([executor]))
    job, _ = scheduler.submit({"name": "nested", "root": {"concurrent": [
        {"name": "outer", "repeat": 2, "sequential": [
            {"name": "inner", "repeat": 2, "concurrent": [{"name": "tick", "cmd": ["true"]}]}]},
        {"name": "plain", "cmd": ["true"]},
    ]}})
    for _ in range(4):
        assert finish_running(loop, executor, scheduler, "tick") == 1
    ids = [s.attempt_id for s in executor.submitted]
    tick = [i for i in ids if i.startswith(f"{job.id}.0@")]
    assert tick == [f"{job.id}.0@1~{o}.{i}#1" for o in (1, 2) for i in (1, 2)]
    assert f"{job.id}.1@1#1" in ids and len(set(ids)) == len(ids)
    loop.close()


def test_a_status_names_at_most_the_first_thousand_cycling_nodes() -> None:
    from procpoold.core import status

    loop = EventLoop()
    scheduler = Scheduler(loop, Engines([RecordingExecutor(0)]))
    tasks = [{"name": f"t{i}", "cmd": ["true"], "repeat": 2} for i in range(1_200)]
    job, _ = scheduler.submit({"name": "many", "root": {"concurrent": tasks}})
    head = status.detail(job)
    assert len(head["cycles"]) == status.CYCLES_SHOWN and head["cycles_total"] == 1_200
    assert [c["name"] for c in head["cycles"][:3]] == ["t0", "t1", "t2"]
    loop.close()

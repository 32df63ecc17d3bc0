"""The scheduler with a recording executor (no processes): dispatch order and never-started attempts."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from procpoold.engines import (
    NOT_STARTED,
    AttemptSpec,
    ExecutorEvents,
    Outcome,
    StopReason,
    TaskError,
)
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from tests.support.stub_engine import StubEngine


class RecordingExecutor(StubEngine):
    """Accepts ``slots`` attempts and reports nothing by itself."""

    name = "recording"

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots
        self.submitted: list[AttemptSpec] = []

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None: ...

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def submit(self, spec: AttemptSpec) -> None:
        self.submitted.append(spec)
        self.running.add(spec.attempt_id)

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None: ...

    def shutdown(self, grace: float) -> None: ...


def make(slots: int = 1) -> tuple[EventLoop, RecordingExecutor, Scheduler]:
    loop = EventLoop()
    executor = RecordingExecutor(slots)
    return loop, executor, Scheduler(loop, Engines([executor]))


def test_priority_order_of_dispatch() -> None:
    loop, executor, scheduler = make(slots=0)
    for name, prio in (("low", "low"), ("crit", "critical"), ("norm", "normal")):
        scheduler.submit({"name": name, "root": {"cmd": ["true"], "priority": prio}})
    loop.run_once(0)
    executor.slots = 3
    scheduler.kick()
    loop.run_once(0)
    assert [s.job_name for s in executor.submitted] == ["crit", "norm", "low"]
    loop.close()


def test_an_attempt_stopped_before_it_started_does_not_count() -> None:
    loop, executor, scheduler = make(slots=1)
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["true"]}})
    loop.run_once(0)
    [spec] = executor.submitted
    assert job.tasks[0].state == "running" and len(job.tasks[0].attempts) == 1
    scheduler.stop_accepting()  # a graceful stop: the queued attempt comes back unstarted
    scheduler.attempt_finished(
        Outcome(spec.attempt_id, "interrupted", error=TaskError(NOT_STARTED, "stopped before it started"))
    )
    t = job.tasks[0]
    assert (t.state, t.attempts) == ("pending", [])
    # what a restart does with it: it runs again as the first attempt (recover rebuilds readiness)
    effects, interrupted = job.recover(now=1.0)
    assert effects.ready == [0] and interrupted == []
    loop.close()


def test_a_batch_of_outcomes_is_applied_in_order_and_one_failure_spares_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop, executor, scheduler = make(slots=4)
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": [{"call": "m:f"}] * 3 + [{"cmd": ["x"]}]}})
    loop.run_once(0)
    specs = executor.submitted
    assert len(specs) == 4
    real = job.complete

    def complete(index: int, *args: Any, **kwargs: Any) -> Any:
        if index == 1:
            raise RuntimeError("a bug while applying one outcome")
        return real(index, *args, **kwargs)

    monkeypatch.setattr(job, "complete", complete)
    scheduler.attempts_finished([
        Outcome(specs[0].attempt_id, "completed", result="a"),
        Outcome(specs[1].attempt_id, "completed", result="b"),
        Outcome(specs[2].attempt_id, "completed", result="c"),
        Outcome(specs[3].attempt_id, "failed", error=TaskError("E", "it failed")),
    ])
    states = [t.state for t in job.tasks]
    assert states == ["completed", "running", "completed", "failed"]
    assert [job.tasks[i].result for i in (0, 2)] == ["a", "c"]
    assert [a.status for a in (job.tasks[0].attempts[-1], job.tasks[2].attempts[-1])] == ["completed"] * 2
    assert specs[1].attempt_id not in scheduler.attempts  # its outcome was taken, and logged as lost
    loop.close()


def test_completions_of_two_jobs_in_one_batch_apply_in_order_and_unblock_the_next_stage() -> None:
    loop, executor, scheduler = make(slots=8)
    stages = {"sequential": [{"concurrent": [{"call": "m:f"}] * 2}, {"concurrent": [{"call": "m:g"}] * 2}]}
    a, _ = scheduler.submit({"name": "a", "root": stages})
    b, _ = scheduler.submit({"name": "b", "root": {"concurrent": [{"call": "m:f"}, {"cmd": ["x"]}]}})
    loop.run_once(0)
    by_id = {s.attempt_id: s for s in executor.submitted}
    first = [s for s in executor.submitted if s.job_id == a.id]
    other = [s for s in executor.submitted if s.job_id == b.id]
    assert len(first) == 2 and len(other) == 2
    finals: list[str] = []
    scheduler.listeners.append(finals.append)
    scheduler.attempts_finished([
        Outcome(first[0].attempt_id, "completed", result=1),
        Outcome(other[0].attempt_id, "completed", result=2),
        Outcome(first[1].attempt_id, "completed", result=3),
        Outcome(other[1].attempt_id, "failed", error=TaskError("E", "it failed")),
    ])
    assert [t.state for t in a.tasks] == ["completed", "completed", "ready", "ready"]
    assert [t.result for t in a.tasks[:2]] == [1, 3]
    assert [t.state for t in b.tasks] == ["completed", "failed"]
    # each task's final notice in the order of the outcomes, then the job's
    assert finals == [a.tasks[0].id, b.tasks[0].id, a.tasks[1].id, b.tasks[1].id, b.id]
    for spec in executor.submitted:
        executor.running.discard(spec.attempt_id)
    loop.run_once(0)  # the pump: the second stage, each of its tasks once
    second = [s for s in executor.submitted if s.attempt_id not in by_id]
    assert sorted(s.task_id for s in second) == [a.tasks[2].id, a.tasks[3].id]
    assert [t.state for t in a.tasks] == ["completed", "completed", "running", "running"]
    loop.close()


def test_an_attempt_moved_to_another_worker_before_it_started_is_one_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop, executor, scheduler = make(slots=1)
    job, _ = scheduler.submit({"name": "j", "root": {"call": "m:f"}})
    loop.run_once(0)
    [spec] = executor.submitted
    with caplog.at_level(logging.INFO, logger="procpoold.task"):
        scheduler.attempt_started(spec.attempt_id, 101, "w1")
        scheduler.attempt_started(spec.attempt_id, 102, "w2")  # the pool moved it, still queued
    starts = [r for r in caplog.records if r.getMessage().endswith("attempt 1 starting")]
    assert len(starts) == 1
    attempt = job.tasks[0].attempts[-1]
    assert (attempt.pid, attempt.worker) == (102, "w2")  # where it runs

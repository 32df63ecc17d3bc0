"""The scheduler with a recording executor (no processes): dispatch order and never-started attempts."""

from __future__ import annotations

from typing import Any

from procpoold.engines import NOT_STARTED, AttemptSpec, ExecutorEvents, Outcome, StopReason, TaskError
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler


class RecordingExecutor:
    """Accepts ``slots`` attempts and reports nothing by itself."""

    name = "recording"

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.submitted: list[AttemptSpec] = []
        self.running: set[str] = set()

    def prefork(self) -> None: ...

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None: ...

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def submit(self, spec: AttemptSpec) -> None:
        self.submitted.append(spec)
        self.running.add(spec.attempt_id)

    def stop_attempt(self, attempt_id: str, reason: StopReason) -> None: ...

    def shutdown(self, grace: float) -> None: ...

    def info(self) -> dict[str, Any]:
        return {}


def make(slots: int = 1) -> tuple[EventLoop, RecordingExecutor, Scheduler]:
    loop = EventLoop()
    executor = RecordingExecutor(slots)
    return loop, executor, Scheduler(loop, {"call": executor, "cmd": executor})


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

"""Pause and resume in the scheduler, with a recording executor (no processes)."""

from __future__ import annotations

import pytest

from procpool.contract.errors import ProcpoolError
from procpoold.engines import Outcome, StopReason
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = pytest.mark.unit

SEQ = {"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "b", "cmd": ["x"]}]}


class StoppingExecutor(RecordingExecutor):
    """Records what the scheduler asks it to stop."""

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self.stopped: list[tuple[str, StopReason]] = []

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        self.stopped.append((attempt_id, reason))


def make(slots: int = 2) -> tuple[EventLoop, StoppingExecutor, Scheduler]:
    loop = EventLoop()
    executor = StoppingExecutor(slots)
    return loop, executor, Scheduler(loop, Engines([executor]))


def finish(executor: StoppingExecutor, scheduler: Scheduler, attempt_id: str,
           status: str = "completed") -> None:
    executor.running.discard(attempt_id)
    scheduler.attempt_finished(Outcome(attempt_id, status))  # type: ignore[arg-type]


def test_a_paused_job_starts_nothing_new_until_resume() -> None:
    loop, executor, scheduler = make()
    job, _ = scheduler.submit({"name": "j", "root": SEQ})
    loop.run_once(0)
    [a] = executor.submitted
    assert scheduler.pause(job.id, 1000)["state"] == "paused"
    finish(executor, scheduler, a.attempt_id)
    loop.run_once(0)
    assert len(executor.submitted) == 1 and job.tasks[1].state == "ready"
    assert not any(scheduler.queues.values())  # in no ready queue: the pump never meets it
    assert scheduler.explain(job.id)["reason"] == "paused"
    assert scheduler.resume(job.id) == {"id": job.id, "state": "running", "released": "paused"}
    loop.run_once(0)
    assert [s.task_name for s in executor.submitted] == ["a", "b"]
    loop.close()


def test_pausing_a_job_takes_its_queued_tasks_out_of_the_queues() -> None:
    loop, executor, scheduler = make(slots=0)
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": [{"name": "a", "cmd": ["x"]},
                                                                     {"name": "b", "cmd": ["x"]}]}})
    scheduler.pause(job.id, None)
    executor.slots = 2
    scheduler.kick()
    loop.run_once(0)
    assert executor.submitted == [] and job.state == "paused"
    scheduler.resume(job.id)
    loop.run_once(0)
    assert sorted(s.task_name for s in executor.submitted) == ["a", "b"] and job.state == "running"
    loop.close()


def test_pause_stop_stops_the_running_attempt_and_runs_it_again_at_resume() -> None:
    loop, executor, scheduler = make()
    job, _ = scheduler.submit({"name": "j", "root": {"name": "a", "cmd": ["x"], "retries": 0}})
    loop.run_once(0)
    [a] = executor.submitted
    assert scheduler.pause(job.id, 1000, stop=True)["stopping"] == 1
    assert executor.stopped == [(a.attempt_id, "shutdown")]
    finish(executor, scheduler, a.attempt_id, "interrupted")
    loop.run_once(0)
    t = job.tasks[0]
    assert t.state == "ready" and len(executor.submitted) == 1 and t.failures == 0
    scheduler.resume(job.id)
    loop.run_once(0)
    assert len(executor.submitted) == 2 and executor.submitted[1].attempt == 2
    finish(executor, scheduler, executor.submitted[1].attempt_id)
    assert job.state == "completed"
    loop.close()


def test_a_paused_daemon_accepts_jobs_and_starts_nothing_until_resume_all() -> None:
    loop, executor, scheduler = make()
    record = scheduler.pause_all(0)
    assert record["by"] and record["stopping"] == 0 and scheduler.paused is not None
    job, _ = scheduler.submit({"name": "j", "root": {"name": "a", "cmd": ["x"]}})
    loop.run_once(0)
    assert executor.submitted == [] and job.state == "queued"
    explained = scheduler.explain(f"{job.id}.0")
    assert explained["reason"] == "paused" and explained["daemon_paused"] is True
    assert scheduler.resume_all() is True and scheduler.resume_all() is False
    loop.run_once(0)
    assert len(executor.submitted) == 1
    loop.close()


def test_what_cannot_be_paused_is_refused() -> None:
    loop, executor, scheduler = make()
    job, _ = scheduler.submit({"name": "j", "root": {"name": "a", "cmd": ["x"]}})
    with pytest.raises(ProcpoolError, match="is a task"):
        scheduler.pause(f"{job.id}.0", None)
    with pytest.raises(ProcpoolError, match="not held or paused"):
        scheduler.resume(job.id)
    loop.run_once(0)
    finish(executor, scheduler, executor.submitted[0].attempt_id)
    with pytest.raises(ProcpoolError, match="finished"):
        scheduler.pause(job.id, None)
    loop.close()


def test_pause_all_stop_runs_the_stopped_attempts_again_at_resume_all() -> None:
    loop, executor, scheduler = make()
    job, _ = scheduler.submit({"name": "j", "root": {"name": "a", "cmd": ["x"], "retries": 0}})
    loop.run_once(0)
    [a] = executor.submitted
    assert scheduler.pause_all(0, stop=True)["stopping"] == 1
    finish(executor, scheduler, a.attempt_id, "interrupted")
    loop.run_once(0)
    assert job.tasks[0].state == "ready" and len(executor.submitted) == 1 and job.state == "running"
    scheduler.resume_all()
    loop.run_once(0)
    t = job.tasks[0]  # (its second attempt runs: the first one counts as neither failed nor interrupted)
    assert len(executor.submitted) == 2 and [a.status for a in t.attempts] == ["paused", None]
    assert t.interruptions == 0 and t.failures == 1
    loop.close()


def test_a_paused_job_can_be_cancelled() -> None:
    loop, executor, scheduler = make()
    job, _ = scheduler.submit({"name": "j", "root": SEQ})
    loop.run_once(0)
    [a] = executor.submitted
    scheduler.pause(job.id, None)
    finish(executor, scheduler, a.attempt_id)
    scheduler.cancel(job.id)
    loop.run_once(0)
    assert job.state == "cancelled" and job.tasks[1].state == "cancelled" and len(executor.submitted) == 1
    loop.close()

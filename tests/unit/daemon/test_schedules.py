"""Jobs on a clock: "every" and a cron "schedule", their wait (scheduled), cancel and stop while
waiting, and the "missed" policy across a restart (a store and a clock of the test's own)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from procpool.contract.errors import ProcpoolError
from procpool.contract.schedule import next_interval, next_time
from procpool.contract.tree import TreeError, parse_job
from procpoold.core import status
from procpoold.engines import Outcome, OutcomeStatus
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

#: 2026-01-05 10:00:30 UTC, a Monday
T0 = datetime(2026, 1, 5, 10, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def start(clock: Clock, store: StateStore | None = None) -> tuple[EventLoop, RecordingExecutor, Scheduler]:
    loop = EventLoop()
    executor = RecordingExecutor(slots=100)
    scheduler = Scheduler(loop, Engines([executor]), clock=clock, store=store)
    if store is not None:
        scheduler.recover()
    return loop, executor, scheduler


def restart(
    clock: Clock, path: Path, loop: EventLoop, store: StateStore
) -> tuple[StateStore, EventLoop, RecordingExecutor, Scheduler]:
    """The daemon stops (its loop and store closed; flush first to keep what it holds) and starts
    again on the same state file."""
    loop.close()
    store.close()
    store = StateStore(path)
    return (store, *start(clock, store))


def finish_running(
    loop: EventLoop, executor: RecordingExecutor, scheduler: Scheduler, name: str | None = None,
    status: OutcomeStatus = "completed",
) -> int:
    """End the running attempts (of task ``name`` only, if given) with ``status``; how many."""
    loop.run_once(0)
    done = 0
    for spec in list(executor.submitted):
        if spec.attempt_id in executor.running and name in (None, spec.task_name):
            executor.running.discard(spec.attempt_id)
            result = spec.task_name if status == "completed" else None
            scheduler.attempt_finished(Outcome(spec.attempt_id, status, result=result))
            done += 1
    loop.run_once(0)
    return done


def tree(**fields: Any) -> dict[str, Any]:
    return {"name": "periodic", "root": {"cmd": ["true"]}, **fields}


# -- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "path", "words"), [
    ({"schedule": "61 * * * *"}, "schedule", "not a cron schedule"),
    ({"schedule": "* * *"}, "schedule", "five fields"),
    ({"schedule": 5}, "schedule", "cron expression"),
    ({"schedule": "0 0 30 2 *"}, "schedule", "not a cron schedule"),
    ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"schedule": "* * * * *", "timezone": "../../etc/passwd"}, "timezone", "unknown time zone"),
    ({"timezone": "UTC"}, "timezone", "has none"),
    ({"every": 5, "schedule": "* * * * *"}, "every", "not both"),
    ({"every": -1}, "every", "positive"),
    ({"every": 5, "missed": "later"}, "missed", "run_once"),
    ({"missed": "skip"}, "missed", '"every" or "schedule"'),
])
def test_bad_schedule_fields_name_their_path(fields: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(TreeError) as caught:
        parse_job(tree(**fields))
    assert caught.value.path == path and words in str(caught.value)


def test_a_job_on_a_clock_repeats_forever_unless_it_says_otherwise() -> None:
    assert parse_job(tree(every=5)).repeat is None
    assert parse_job(tree(schedule="@hourly", repeat=3)).repeat == 3
    assert parse_job(tree()).repeat == 1
    spec = parse_job(tree(schedule="0 9 * * MON-FRI", timezone="Europe/Paris", missed="skip"))
    assert (spec.schedule, spec.timezone, spec.missed) == ("0 9 * * MON-FRI", "Europe/Paris", "skip")


def test_cron_times_are_read_in_the_jobs_time_zone() -> None:
    # 09:00 in Paris on Monday 2026-01-05 is 08:00 UTC, already past at T0: Tuesday's
    assert next_time("0 9 * * MON-FRI", "Europe/Paris", T0) == datetime(
        2026, 1, 6, 8, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert next_time("*/15 * * * *", "UTC", T0) == T0 - 30 + 15 * 60


def test_an_interval_skips_to_the_next_slot_of_its_cadence_only_when_told() -> None:
    assert next_interval(10.0, 100.0, 105.0, "skip") == 110.0
    assert next_interval(10.0, 100.0, 135.0, "run_once") == 110.0
    assert next_interval(10.0, 100.0, 135.0, "skip") == 140.0


# -- the scheduler ---------------------------------------------------------------------------------


def test_every_waits_after_each_run_and_the_wait_is_a_timer() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    job, _ = scheduler.submit(tree(every=30, repeat=2))
    assert finish_running(loop, executor, scheduler) == 1  # the first run starts at once
    assert job.state == "scheduled" and job.run == 2 and job.next_run_at == T0 + 30
    assert job.id in scheduler._schedule_timers  # no polling: one timer per waiting job
    assert status.detail(job)["next_run_at"] == T0 + 30
    answer = scheduler.explain(job.id)
    assert answer["reason"] == "scheduled" and "every: 30 s" in answer["text"][1]
    assert scheduler.wake_due() == 0  # not yet
    assert finish_running(loop, executor, scheduler) == 0
    clock.now += 30
    assert scheduler.wake_due() == 1
    assert finish_running(loop, executor, scheduler) == 1
    assert job.state == "completed" and job.run == 2 and job.next_run_at is None
    assert scheduler._schedule_timers == {}
    loop.close()


def test_a_scheduled_job_waits_for_its_first_time_then_follows_its_schedule() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    job, _ = scheduler.submit(tree(schedule="*/5 * * * *", repeat=2))
    first = T0 - 30 + 5 * 60  # 10:05
    assert job.state == "scheduled" and job.run == 1 and job.next_run_at == first
    assert finish_running(loop, executor, scheduler) == 0
    clock.now = first + 1
    assert scheduler.wake_due() == 1
    clock.now = first + 400  # the run took 6 min 39 s: 10:10 passed during it
    assert finish_running(loop, executor, scheduler) == 1
    assert job.state == "scheduled" and job.next_run_at == first + 600  # 10:15: no overlap
    loop.close()


def test_cancel_and_stop_while_scheduled_end_the_job_without_a_run() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    never, _ = scheduler.submit(tree(schedule="@daily"))
    scheduler.cancel(never.id, by=None)
    assert never.state == "cancelled" and never.counts()["skipped"] == 1
    ran, _ = scheduler.submit(tree(every=60))
    finish_running(loop, executor, scheduler)
    assert ran.state == "scheduled" and ran.run == 2
    reply = scheduler.stop(ran.id, by=None)
    assert reply["state"] == "completed" and ran.run == 1 and "no run after run 1" in str(ran.reason)
    assert ran.tasks[0].result is not None  # the last run's results stay
    last, _ = scheduler.submit(tree(every=60, repeat=2))
    finish_running(loop, executor, scheduler)
    assert last.state == "scheduled" and last.run == 2  # waits for its last run: stop ends it now
    assert scheduler.stop(last.id, by=None)["state"] == "completed" and last.run == 1
    other, _ = scheduler.submit(tree(every=60))
    finish_running(loop, executor, scheduler)
    with pytest.raises(ProcpoolError, match="already completed"):  # (its last run's outcome)
        scheduler.cancel(f"{other.id}.0", by=None)
    scheduler.cancel(other.id, by=None)
    assert other.state == "cancelled" and other.run == 1
    assert scheduler._schedule_timers == {}
    clock.now += 10 * 86400
    assert scheduler.wake_due() == 0 and finish_running(loop, executor, scheduler) == 0
    loop.close()


@pytest.mark.parametrize(("missed", "runs_at_start"), [("run_once", 1), ("skip", 0)])
def test_runs_missed_while_the_daemon_was_down_follow_the_missed_policy(
    tmp_path: Path, missed: str, runs_at_start: int
) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit(tree(schedule="* * * * *", missed=missed))
    assert job.next_run_at == T0 + 30  # 10:01
    clock.now = T0 + 31
    scheduler.wake_due()
    finish_running(loop, executor, scheduler)
    assert job.state == "scheduled" and job.run == 2 and job.next_run_at == T0 + 90  # 10:02
    scheduler.flush()

    clock.now = T0 + 3600 + 10  # an hour later: 60 runs missed
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    again = scheduler.jobs[job.id]
    assert again.run == 2 and again.tasks[0].state == "completed"
    if missed == "skip":  # the next minute still to come
        assert again.state == "scheduled" and again.next_run_at == T0 + 3600 + 30
    assert scheduler.wake_due() == runs_at_start  # run_once: one run, whatever was missed
    assert finish_running(loop, executor, scheduler) == runs_at_start
    if missed == "run_once":
        assert again.run == 3 and again.next_run_at == T0 + 3600 + 30
    loop.close()
    store.close()


def test_an_every_job_after_a_restart_keeps_its_cadence_when_skipping(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit(tree(every=100, missed="skip"))
    finish_running(loop, executor, scheduler)
    assert job.next_run_at == T0 + 100
    scheduler.flush()
    clock.now = T0 + 250
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    assert scheduler.jobs[job.id].next_run_at == T0 + 300
    loop.close()
    store.close()


def test_a_restart_before_the_time_keeps_the_time_and_arms_its_timer(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit(tree(schedule="@hourly", timezone="Asia/Kolkata"))  # a half-hour zone
    assert job.next_run_at == T0 - 30 + 30 * 60  # 10:30 UTC is 16:00 in Kolkata
    scheduler.flush()
    clock.now = T0 + 60
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    again = scheduler.jobs[job.id]
    assert again.state == "scheduled" and again.next_run_at == T0 - 30 + 30 * 60
    assert job.id in scheduler._schedule_timers and scheduler.wake_due() == 0
    assert finish_running(loop, executor, scheduler) == 0
    loop.close()
    store.close()


@pytest.mark.parametrize("missed", ["run_once", "skip"])
def test_a_scheduled_job_paused_waits_for_no_time_and_its_resume_follows_the_missed_policy(
    tmp_path: Path, missed: str
) -> None:
    """Paused while it waits for its next run: the timer goes, the pause survives a restart, and
    at resume a time that passed meanwhile follows ``missed``."""
    clock = Clock(T0)
    store = StateStore(tmp_path / "state.db")
    loop, executor, scheduler = start(clock, store)
    job, _ = scheduler.submit(tree(every=100, missed=missed))
    finish_running(loop, executor, scheduler)
    assert job.state == "scheduled" and job.next_run_at == T0 + 100
    scheduler.pause(job.id, by=0)
    assert job.state == "paused" and job.paused is not None and job.paused["was"] == "scheduled"
    assert job.id not in scheduler._schedule_timers
    clock.now = T0 + 250
    assert scheduler.wake_due() == 0  # paused: no run starts, however due
    scheduler.flush()
    store, loop, executor, scheduler = restart(clock, tmp_path / "state.db", loop, store)
    job = scheduler.jobs[job.id]
    assert job.state == "paused" and job.next_run_at == T0 + 100
    assert scheduler.resume(job.id)["released"] == "paused"
    if missed == "run_once":  # (its timer, due at once, starts the run at the next loop iteration)
        loop.run_once(0)
        assert job.state in ("queued", "running") and job.run == 2
    else:
        assert job.state == "scheduled" and job.next_run_at == T0 + 300
        assert job.id in scheduler._schedule_timers
    loop.close()
    store.close()


def test_a_run_that_ends_while_its_job_is_paused_does_not_arm_the_next_one() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    job, _ = scheduler.submit(tree(every=100))
    loop.run_once(0)
    scheduler.pause(job.id, by=0)  # while its first run's task runs
    finish_running(loop, executor, scheduler)
    assert job.state == "paused" and job.next_run_at == T0 + 100
    assert job.paused is not None and job.paused["was"] == "scheduled"
    assert job.id not in scheduler._schedule_timers
    scheduler.resume(job.id)
    assert job.state == "scheduled" and job.id in scheduler._schedule_timers
    clock.now = T0 + 100
    assert scheduler.wake_due() == 1 and job.run == 2
    loop.close()


def test_cancel_and_stop_of_a_job_paused_while_scheduled_end_it_without_a_run() -> None:
    clock = Clock(T0)
    loop, executor, scheduler = start(clock)
    a, _ = scheduler.submit(tree(every=100))
    b, _ = scheduler.submit(tree(every=100))
    finish_running(loop, executor, scheduler)
    for job in (a, b):
        scheduler.pause(job.id, by=0)
    scheduler.cancel(a.id)
    scheduler.stop(b.id)
    assert (a.state, b.state) == ("cancelled", "completed")
    assert a.paused is None and a.next_run_at is None and a.run == 1 and b.run == 1
    assert len(executor.submitted) == 2  # the first run of each, nothing more
    loop.close()

"""``procctl pause``: a job's paused state, who paused it, and what resume gives back."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.states import ACTIVE_JOB_STATES, JOB_STATES
from procpool.contract.tree import parse_job
from procpoold.core.jobs import Job

pytestmark = pytest.mark.unit

SEQ = {"sequential": [{"name": "a", "cmd": ["x"]}, {"name": "b", "cmd": ["x"]}]}


def make(root: Any = SEQ, **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, now=0.0)


def test_paused_is_an_unfinished_job_state_of_its_own() -> None:
    assert "paused" in JOB_STATES and JOB_STATES[-1] == "paused"  # (appended: the order is kept)
    assert "paused" in ACTIVE_JOB_STATES and "held" in ACTIVE_JOB_STATES


def test_only_a_queued_or_running_job_can_be_paused() -> None:
    job = make()
    assert "pending" in (job.pause_refusal() or "")  # its run has not begun
    job.start_run(0.0)
    assert job.state == "queued" and job.pause_refusal() is None
    job.pause("alice (uid 1000)", 1000, 5.0)
    assert job.state == "paused" and "paused already" in (job.pause_refusal() or "")
    assert job.paused == {"by": "alice (uid 1000)", "uid": 1000, "at": 5.0, "stop": False, "was": "queued"}
    job.state = "held"
    assert "procctl resume 1" in (job.pause_refusal() or "")


def test_what_becomes_ready_while_paused_is_given_back_at_unpause() -> None:
    job = make()
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.pause("alice", 1000, 2.0)
    effects = job.complete(0, 3.0)
    assert effects.ready == [1] and job.state == "paused"  # (the scheduler queues none of it)
    effects = job.unpause()
    assert effects.ready == [1] and job.state == "running" and job.paused is None


def test_an_attempt_stopped_by_pause_uses_no_retry() -> None:
    job = make({"name": "a", "cmd": ["x"], "retries": 0})
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.pause("alice", 1000, 2.0, stop=True)
    t = job.tasks[0]
    t.attempts[-1].status = "interrupted"  # (as the scheduler sets it from the outcome)
    effects = job.stopped_by_pause(0, {"type": "Interrupted", "message": "stopped", "traceback": ""})
    assert effects.ready == [0] and t.state == "ready"
    assert t.failures == 0 and t.interruptions == 1


def test_a_paused_repeating_job_stays_paused_into_its_next_run() -> None:
    job = make({"name": "a", "cmd": ["x"]}, repeat=3)
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.pause("alice", 1000, 2.0)
    job.complete(0, 3.0)
    assert job.finish_run(4.0) is True
    job.start_run(5.0)
    assert job.state == "paused" and job.paused is not None


def test_the_pause_is_stored_with_the_job_and_comes_back_paused() -> None:
    job = make()
    assert "paused" not in job.dump()
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.pause("alice", 1000, 2.0)
    data = job.dump()
    again = make()
    again.load(data, [job.full_entry(i) for i in range(len(job.tasks))])
    assert again.state == "paused" and again.paused == job.paused
    # after the restart the running attempt was interrupted: it is ready, yet the job stays paused
    effects, interrupted = again.recover(10.0)
    assert len(interrupted) == 1 and again.state == "paused"
    assert effects.ready == [0] and again.tasks[0].state == "ready"
    assert again.unpause().ready == [0]


def test_a_paused_job_with_on_interrupt_hold_stays_paused_rather_than_held() -> None:
    job = make(on_interrupt="hold")
    job.start_run(0.0)
    job.mark_running(0, "a#1", 1.0)
    job.pause("alice", 1000, 2.0)
    again = make(on_interrupt="hold")
    again.load(job.dump(), [job.full_entry(i) for i in range(len(job.tasks))])
    again.recover(10.0)
    assert again.state == "paused"


def test_a_stored_paused_job_without_its_record_fails_the_restore() -> None:
    job = make()
    job.start_run(0.0)
    job.pause("alice", 1000, 2.0)
    data = job.dump()
    del data["paused"]
    with pytest.raises(ValueError, match="paused"):
        make().load(data, [])

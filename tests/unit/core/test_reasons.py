"""The reasons a job notes for its tasks as it decides (core.reasons), the ready queue's places,
and the scheduler's explain built on them (with a recording executor: no processes)."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.tree import parse_job
from procpoold.core import reasons as why
from procpoold.core.jobs import DONE_ENTRY, FULL_ENTRY, START_ENTRY, Job, replay_task_log
from procpoold.core.queue import ReadyQueue
from procpoold.engines import Health, Outcome, TaskError
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = pytest.mark.unit


def make_job(root: dict[str, Any], **extra: Any) -> Job:
    return Job("1", parse_job({"name": "j", "root": root, **extra}), {}, 0.0)


def code_of(job: Job, index: int) -> tuple[str, int]:
    code, arg = job.reasons.get(index, job.tasks[index].state) if job.reasons else (why.ORDINARY, 0)
    return why.NAMES[code], arg


def run_attempt(job: Job, index: int, now: float) -> None:
    job.mark_running(index, f"1.{index}@1#{len(job.tasks[index].attempts) + 1}", now)


SEQ = {"sequential": [{"name": "a", "cmd": ["true"]}, {"name": "b", "cmd": ["true"]},
                      {"name": "c", "cmd": ["true"]}]}


def test_the_ordinary_path_notes_nothing_and_makes_no_table() -> None:
    job = make_job(SEQ)
    job.start_run(0.0)
    for i in range(3):
        run_attempt(job, i, 1.0 + i)
        job.complete(i, 1.5 + i)
    assert job.state == "running" and all(t.state == "completed" for t in job.tasks)
    assert job.reasons is None  # no table: the common path costs nothing


def test_a_retry_is_noted_while_it_waits_and_when_it_is_due_then_goes_stale() -> None:
    job = make_job({"name": "a", "cmd": ["false"], "retries": 2})
    job.start_run(0.0)
    run_attempt(job, 0, 1.0)
    job.retry_later(0, 9.0)
    assert code_of(job, 0) == ("retry_wait", 1)
    assert job.retry_due(0)
    assert code_of(job, 0) == ("retry_due", 1)
    run_attempt(job, 0, 10.0)
    job.complete(0, 11.0)
    assert code_of(job, 0) == ("ordinary", 0)  # what was noted no longer explains "completed"
    assert "why" not in job.dump_task(0)


def test_a_failure_notes_the_upstream_task_of_what_it_skips_and_cancels() -> None:
    root = {"concurrent": [
        {"sequential": [{"name": "bad", "cmd": ["false"]}, {"name": "next", "cmd": ["true"]}]},
        {"name": "other", "cmd": ["true"], "depends_on": ["idle"]},
        {"name": "idle", "cmd": ["true"], "depends_on": ["next"]},
    ]}
    job = make_job(root)  # on_failure: stop
    job.start_run(0.0)
    bad, nxt, other, idle = (job.by_name[n] for n in ("bad", "next", "other", "idle"))
    run_attempt(job, bad, 1.0)
    job.end_unsuccessfully(bad, "failed", 2.0, {"type": "X", "message": "no"})
    assert job.tasks[nxt].state == "skipped" and code_of(job, nxt) == ("upstream", bad)
    assert job.tasks[idle].state == "skipped" and code_of(job, idle) == ("upstream", bad)
    assert job.tasks[other].state == "skipped" and code_of(job, other) == ("upstream", bad)

    job = make_job({"concurrent": [{"name": "bad", "cmd": ["false"]}, {"name": "x", "cmd": ["true"]}]})
    job.start_run(0.0)
    run_attempt(job, 0, 1.0)
    job.end_unsuccessfully(0, "failed", 2.0)
    assert job.tasks[1].state == "cancelled" and code_of(job, 1) == ("stopped", 0)


def test_a_cancel_is_noted_and_a_cancelled_waiting_job_too() -> None:
    job = make_job(SEQ, on_failure="continue")
    job.start_run(0.0)
    job.cancel(1.0, [2])
    assert code_of(job, 2) == ("cancelled", 0)
    waiting = make_job(SEQ)
    waiting.fail_before_start("cancelled by request", 1.0, why.CANCELLED)
    assert [code_of(waiting, i) for i in range(3)] == [("cancelled", 0)] * 3
    after = make_job(SEQ)
    after.fail_before_start('upstream "7" failed', 1.0)
    assert code_of(after, 0) == ("after_failed", 0)


def test_interruptions_are_noted_with_the_attempt() -> None:
    job = make_job({"name": "a", "cmd": ["true"]})
    job.start_run(0.0)
    run_attempt(job, 0, 1.0)
    job.interrupt(0, 2.0, {"type": "WorkerDied", "message": "lost"})
    assert (job.tasks[0].state, code_of(job, 0)) == ("ready", ("requeued", 1))

    held = make_job(SEQ, on_interrupt="hold")
    data = {**held.dump(), "state": "running", "started_at": 0.0}
    held.load(data, [[START_ENTRY, 0, 1, "1.0@1#1", 1.0]])
    held.recover(2.0)
    assert held.state == "held" and code_of(held, 0) == ("interrupted", 1)


def test_reasons_go_to_the_store_and_come_back() -> None:
    job = make_job(SEQ, on_failure="continue")
    job.start_run(0.0)
    run_attempt(job, 0, 1.0)
    job.end_unsuccessfully(0, "failed", 2.0, {"type": "X", "message": "no"})
    log = [job.full_entry(i) for i in range(3)]
    assert job.dump_task(1)["why"] == [why.UPSTREAM, 0]
    again = make_job(SEQ, on_failure="continue")
    again.load(job.dump(), log)
    assert [code_of(again, i) for i in (1, 2)] == [("upstream", 0), ("upstream", 0)]
    # a task that completed later drops what was noted before (the DONE entry)
    tasks = replay_task_log([[FULL_ENTRY, 0, {"state": "pending", "why": [why.RETRY_WAIT, 1]}],
                             [START_ENTRY, 0, 2, "1.0@1#2", 3.0],
                             [DONE_ENTRY, 0, 4.0, None, 0, None, None]])
    assert "why" not in tasks[0]


@pytest.mark.parametrize("bad", [[99, 0], ["x", 1], [1], "no", [1, 2**40]])
def test_a_malformed_stored_reason_is_ignored(bad: Any) -> None:
    job = make_job(SEQ)
    job.load({**job.dump(), "state": "running", "started_at": 0.0},
             [[FULL_ENTRY, 1, {"state": "pending", "why": bad}]])
    assert job.reasons is None


def test_the_ready_queue_says_where_an_item_stands() -> None:
    q: ReadyQueue[str] = ReadyQueue(aging=30.0)
    q.push_many(["n1", "n2"], "normal", 100.0)
    q.push("c1", "critical", 101.0)
    q.push("b1", "batch", 0.0)  # waited long enough to go before the normal ones (aging)
    q.push("l1", "low", 102.0)
    q.discard("n1")
    places = q.where({"n2", "l1", "gone"})
    assert set(places) == {"n2", "l1"}
    n2, l1 = places["n2"], places["l1"]
    assert (n2.position, n2.rank, n2.queued_at) == (2, 2, 100.0)
    assert n2.ahead == (1, 0, 0, 0, 1)  # c1, and b1 by aging
    assert (l1.position, l1.ahead) == (3, (1, 0, 1, 0, 1))
    assert [q.pop() for _ in range(4)] == ["c1", "b1", "n2", "l1"]  # the order where() walked


def make_scheduler(slots: int) -> tuple[EventLoop, RecordingExecutor, Scheduler]:
    loop = EventLoop()
    executor = RecordingExecutor(slots)
    return loop, executor, Scheduler(loop, Engines([executor]), clock=lambda: 1000.0)


def test_the_pump_notes_an_engine_without_a_free_slot_and_explain_says_so() -> None:
    loop, executor, scheduler = make_scheduler(slots=1)
    try:
        first, _ = scheduler.submit({"name": "first", "root": {"cmd": ["true"]}})
        loop.run_once(0)
        assert scheduler.stalls == {}
        low, _ = scheduler.submit({"name": "low", "root": {"cmd": ["true"], "priority": "low"}})
        scheduler.submit({"name": "high", "root": {"cmd": ["true"], "priority": "high"}})
        loop.run_once(0)
        assert scheduler.stalls == {"recording": 1000.0}
        answer = scheduler.explain(f"{low.id}.0")
        assert answer["reason"] == "no_free_slot"
        assert answer["queue"]["position"] == 2 and answer["queue"]["ahead"] == {"high": 1}
        assert answer["engine"]["full_since"] == 1000.0
        assert any("1 at a higher priority" in line for line in answer["text"])
        # the slot frees: the pump empties the queue, and the record goes
        [spec] = executor.submitted
        executor.running.discard(spec.attempt_id)
        scheduler.attempt_finished(Outcome(spec.attempt_id, "completed"))
        executor.slots = 3
        loop.run_once(0)
        assert scheduler.stalls == {}
        finished = scheduler.explain(f"{first.id}.0")
        assert finished["reason"] == "completed" and "attempt 1 completed" in "\n".join(finished["text"])
    finally:
        loop.close()


def test_explain_of_a_retry_and_of_a_job() -> None:
    loop, executor, scheduler = make_scheduler(slots=2)
    try:
        job, _ = scheduler.submit({"name": "r", "root": {"sequential": [
            {"name": "flaky", "cmd": ["false"], "retries": 1, "retry_delay": 50},
            {"name": "then", "cmd": ["true"]}]}})
        loop.run_once(0)
        [spec] = executor.submitted
        executor.running.discard(spec.attempt_id)
        scheduler.attempt_finished(Outcome(spec.attempt_id, "failed", error=TaskError("E", "bad luck")))
        answer = scheduler.explain(f"{job.id}/flaky")
        assert answer["reason"] == "retry_delay" and 40 <= answer["retry_in"] <= 60
        assert "attempt 1 failed (bad luck)" in answer["text"][0] and "retry 1 of 1" in answer["text"][0]
        then = scheduler.explain(f"{job.id}/then")
        assert then["reason"] == "dependency"
        flaky = {"kind": "task", "id": f"{job.id}.0", "name": "flaky", "state": "pending"}
        assert then["waiting_for"] == [flaky]
        whole = scheduler.explain(job.id)
        assert whole["unfinished"] == {"retry_delay": 1, "dependency": 1}
        assert [t["reason"] for t in whole["tasks"]] == ["retry_delay", "dependency"]
        scheduler.cancel(job.id)
    finally:
        loop.close()


class DownExecutor(RecordingExecutor):
    """An engine that cannot take attempts (as the Dask engine whose scheduler is out of reach)."""

    def free_slots(self) -> int:
        return 0

    def health(self) -> Health:
        return Health(up=False, reason="cannot reach the Dask scheduler at tcp://10.0.0.1:8786")


class FullPool(RecordingExecutor):
    """An engine with worker processes, every one busy."""

    def health(self) -> Health:
        return Health(busy=len(self.running), workers={"busy": self.slots})


def test_explain_says_an_engine_is_down_or_all_its_workers_busy() -> None:
    loop = EventLoop()
    try:
        scheduler = Scheduler(loop, Engines([DownExecutor(0)]))
        job, _ = scheduler.submit({"name": "j", "root": {"call": "m:f"}})
        loop.run_once(0)
        answer = scheduler.explain(f"{job.id}.0")
        assert answer["reason"] == "engine_down" and answer["engine"]["up"] is False
        assert 'engine "recording" is down (cannot reach the Dask scheduler' in answer["text"][-1]
    finally:
        loop.close()
    loop = EventLoop()
    try:
        scheduler = Scheduler(loop, Engines([FullPool(2)]))
        scheduler.submit({"name": "j", "root": {"concurrent": [{"call": "m:f"} for _ in range(3)]}})
        loop.run_once(0)
        answer = scheduler.explain("1.2")
        assert answer["reason"] == "no_free_slot"
        assert 'no free slot: engine "recording" has all 2 workers busy' in answer["text"][-1]
    finally:
        loop.close()

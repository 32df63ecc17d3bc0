"""What changed since a cursor (``changes_since``): the daemon's change log, the reply, the
client's JobStatus.apply and follow, and the argument's validation."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.contract.codec import RequestError
from procpool.contract.ops import check_args
from procpool.contract.states import CANCELLED, COMPLETED, FAILED, READY, RUNNING
from procpool.contract.status import (
    CURSOR_MAX_CHARS,
    JobStatus,
    follow,
    format_cursor,
    is_changes,
    parse_cursor,
)
from procpoold.core import changes, status
from procpoold.core.jobs import Job
from tests.unit.contract.test_status_columns import job_of, mixed, through_the_wire

pytestmark = pytest.mark.unit


def same(a: JobStatus, b: JobStatus) -> None:
    """Two statuses of every task hold the same tasks and head."""
    assert bytes(a.states) == bytes(b.states)
    assert (a.attempts, a.total, a.job) == (b.attempts, b.total, b.job)
    assert str(a.started_at) == str(b.started_at)  # (NaN != NaN)
    assert str(a.finished_at) == str(b.finished_at)
    assert {k: v for k, v in a.sparse.items() if v} == {k: v for k, v in b.sparse.items() if v}


def fresh(job: Job) -> JobStatus:
    return JobStatus.decode(through_the_wire(status.columns_page(job, 0)))


def poll(job: Job, held: JobStatus | None) -> JobStatus:
    """follow() against the job, through the real envelope."""

    def call(op: str, args: dict[str, Any]) -> Any:
        assert op == "status" and args["view"] == "columns"
        check_args(op, args)
        if "changes_since" in args:
            return through_the_wire(status.changes_page(job, args["changes_since"]))
        return through_the_wire(status.columns_page(job, args.get("tasks_from", 0)))

    return follow(call, job.id, held)


def test_changes_since_a_cursor_bring_the_client_up_to_date() -> None:
    job = job_of(12)
    job.start_run(1000.0)
    held = poll(job, None)
    assert held.reset == "new" and held.cursor is not None
    same(held, fresh(job))
    # a job with every state and every sparse value, then changed in several ways
    job = mixed()
    held = poll(job, None)
    job.mark_running(9, "c9", 1007.0)
    job.tasks[9].progress = {"fraction": 0.5}
    job.tasks[9].touched()
    job.complete(4, 1008.0, result="four")  # a running task with progress completes
    job.interrupt(7, 1009.0, {"type": "Lost", "message": "worker", "traceback": ""})
    cursor = held.cursor
    wire = through_the_wire(status.changes_page(job, cursor or ""))
    assert is_changes(wire) and wire["columns"]["count"] == 3
    held.apply(wire)
    same(held, fresh(job))
    assert held.task(4).state == COMPLETED and held.task(4).result == "four"
    assert held.task(9).progress == {"fraction": 0.5} and held.task(9).state == RUNNING
    assert held.task(7).state == READY and held.task(7).error is not None


def test_a_new_run_changes_every_task() -> None:
    job = job_of(5)
    job.start_run(1000.0)
    for i in range(6):
        job.mark_running(i, f"a{i}", 1001.0)
        job.complete(i, 1002.0, result=i)
    held = poll(job, None)
    assert job.finish_run(1003.0) is False
    job.spec.repeat = 2  # type: ignore[misc]
    job.run = 1
    job.start_run(1004.0)
    again = poll(job, held)
    assert again is held and held.reset is None
    same(held, fresh(job))
    assert held.sparse.get("result", {}) == {}


def test_a_cursor_the_log_cannot_answer_gets_a_full_answer_with_a_flag() -> None:
    job = job_of(3)
    job.start_run(1000.0)
    cursor = status.changes_page(job, "")["cursor"]
    # the daemon restarted (or the finished job was read back again): another log
    again = job_of(3)
    again.start_run(1000.0)
    reply = status.changes_page(again, cursor)
    assert (reply["changes"], reply["reset"], reply["columns"]["count"]) == (False, "unknown", 4)
    epoch, seq = parse_cursor(cursor) or (0, 0)
    ahead = status.changes_page(job, format_cursor(epoch, seq + 1))  # never handed out by this log
    assert ahead["reset"] == "unknown"
    # too old: the log dropped its older half
    log = changes.track(job)
    for _ in range(log.cap + 1):
        log.note(0)
    assert log.base > 0
    old = status.changes_page(job, cursor)
    assert (old["changes"], old["reset"]) == (False, "old")
    assert status.changes_page(job, old["cursor"])["changes"] is True
    # more tasks changed than a page holds: the (paged) full status
    many = status.changes_page(job_of(3), "")
    big = job_of(3)
    big.start_run(1000.0)
    start = status.changes_page(big, "")["cursor"]
    big.cancel(1001.0)
    assert status.changes_page(big, start, limit=2)["reset"] == "many"
    assert many["reset"] == "new"


def test_the_change_log_is_bounded() -> None:
    job = job_of(10)
    log = changes.track(job)
    assert changes.track(job) is log and all(t.changes is log for t in job.tasks)
    for i in range(10 * log.cap):
        log.note(i % 11)
    assert len(log.entries) <= log.cap and log.seq == 10 * log.cap
    assert log.since(log.seq - 3) == [(10 * log.cap - k) % 11 for k in (3, 2, 1)]


def test_a_delta_cut_short_by_its_size_is_finished_by_the_next_poll() -> None:
    job = job_of(40)
    job.start_run(1000.0)
    held = poll(job, None)
    for i in range(40):
        job.mark_running(i, f"a{i}", 1001.0)
        job.complete(i, 1002.0, result="x" * 1000)
    wire = through_the_wire(status.changes_page(job, held.cursor or "", max_bytes=10_000))
    assert wire["more"] and 0 < wire["columns"]["count"] < 40
    held.apply(wire)
    assert held.more
    assert poll(job, held) is held and not held.more
    same(held, fresh(job))
    assert held.counts() == {COMPLETED: 40, READY: 1} == held.job["counts"]


def test_cancelled_and_failed_rows_carry_their_values() -> None:
    job = job_of(4, on_failure="stop")
    job.start_run(1000.0)
    held = poll(job, None)
    job.mark_running(0, "a0", 1001.0)
    job.tasks[0].remember("last words")
    job.end_unsuccessfully(0, FAILED, 1002.0, error={"type": "E", "message": "m", "traceback": ""})
    poll(job, held)
    same(held, fresh(job))
    assert held.task(0).tail == ["last words"] and held.task(1).state == CANCELLED


def test_apply_refuses_what_does_not_fit() -> None:
    job = job_of(3)
    job.start_run(1000.0)
    held = poll(job, None)
    job.mark_running(0, "a0", 1001.0)
    delta = through_the_wire(status.changes_page(job, held.cursor or ""))
    with pytest.raises(ValueError, match="apply it"):
        JobStatus.decode(delta)
    part = JobStatus.decode(through_the_wire(status.columns_page(job, 1)))
    with pytest.raises(ValueError, match="every task"):
        part.apply(delta)
    with pytest.raises(ValueError, match="not a reply"):
        held.apply(through_the_wire(status.columns_page(job, 0)))
    bad = dict(delta, sparse={"name": [delta["columns"]["index"], ["x"]], "result": [b"\x02\0\0\0", [1]]})
    with pytest.raises(ValueError, match="did not change"):
        held.apply(bad)
    wrong = dict(delta, columns=dict(delta["columns"], index=b"\x09\0\0\0"))
    with pytest.raises(ValueError, match="name task 9"):
        held.apply(wrong)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("x", "must be the 'cursor' of an earlier reply"),
        ("1.", "must be the 'cursor'"),
        ("-1.2", "must be the 'cursor'"),
        ("1" * 17 + ".2", "must be the 'cursor'"),
        ("1." + "2" * (CURSOR_MAX_CHARS + 1), f"must be at most {CURSOR_MAX_CHARS} characters"),
    ],
)
def test_a_bad_cursor_is_refused_with_a_clear_error(value: str, why: str) -> None:
    for op, args in (("status", {"job": "1", "view": "columns"}), ("wait", {"id": "1", "view": "columns"})):
        with pytest.raises(RequestError, match=f"{op}: argument 'changes_since' {why}"):
            check_args(op, {**args, "changes_since": value})


def test_good_cursors_pass_and_other_types_do_not() -> None:
    for value in ("", "0.0", format_cursor(2**52 - 1, 10**19)):
        check_args("status", {"job": "1", "view": "columns", "changes_since": value})
    assert parse_cursor("") is None and parse_cursor("12.34") == (12, 34)
    with pytest.raises(RequestError, match="must be a string"):
        check_args("status", {"job": "1", "changes_since": 3})

"""The columnar job status (format 2): what the daemon builds is what the client decodes, and
the state names come from one place."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import procpool.contract.states as contract_states
import procpoold.core.states as daemon_states
from procpool.contract.codec import decode_reply, encode_result
from procpool.contract.states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    READY,
    RUNNING,
    SKIPPED,
    TASK_STATE_CODES,
    TASK_STATES,
    TIMEOUT,
)
from procpool.contract.status import DENSE_BYTES_PER_TASK, FORMAT_COLUMNS, JobStatus, pack_f64, pack_u32
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Job, TaskRun

pytestmark = pytest.mark.unit

CTL = Path(__file__).resolve().parents[3] / "ctl" / "procpool"


def job_of(n: int, on_failure: str = "continue") -> Job:
    raw: dict[str, Any] = {
        "name": "j",
        "on_failure": on_failure,
        "root": {
            "name": "top",
            "sequential": [
                {"name": "g", "concurrent": [{"name": f"t{i}", "call": "m:f"} for i in range(n)]},
                {"name": "last", "cmd": ["true"]},
            ],
        },
    }
    return Job("7", parse_job(raw), raw, 1000.0)


def mixed() -> Job:
    """A job whose tasks are in every state, with every sparse field set somewhere."""
    job = job_of(12)
    job.start_run(1000.0)
    job.mark_running(0, "a0", 1001.0)
    job.complete(0, 1002.5, result={"rows": [1, 2]})
    job.mark_running(1, "a1", 1001.0)
    job.complete(1, 1003.0, result=None, exit_code=0)
    job.mark_running(2, "a2", 1001.0)
    job.tasks[2].remember("line one")
    job.tasks[2].remember("boom")
    error = {"type": "E", "message": "m", "traceback": "tb"}
    job.end_unsuccessfully(2, FAILED, 1004.0, error=error, exit_code=3)
    job.mark_running(3, "a3", 1001.0)
    job.end_unsuccessfully(3, TIMEOUT, 1005.0, error={"type": "Timeout", "message": "slow", "traceback": ""})
    job.mark_running(4, "a4", 1001.0)
    job.tasks[4].progress = {"fraction": 0.25, "message": "copying"}
    job.mark_running(5, "a5", 1001.0)
    job.retry_later(5, 1010.0)  # failed once, a retry is due
    job.cancel(1006.0, [6], reason="not wanted")
    for i in (7, 8):  # two attempts: the first interrupted
        job.mark_running(i, f"a{i}", 1001.0)
        job.retry_later(i, 1001.5)
        job.retry_due(i)
        job.mark_running(i, f"b{i}", 1002.0)
    return job


def through_the_wire(value: Any) -> Any:
    """What the client receives for ``value`` (the real envelope and its strict decoder)."""
    return decode_reply(encode_result("1", value)).result


def test_states_are_defined_once() -> None:
    for name in ("TASK_STATES", "JOB_STATES", "FINAL_TASK_STATES", "FINAL_JOB_STATES", "UNSUCCESSFUL",
                 "TASK_TRANSITIONS", "TASK_STATE_CODES"):
        assert getattr(daemon_states, name) is getattr(contract_states, name), name
    assert [TASK_STATE_CODES[s] for s in TASK_STATES] == list(range(len(TASK_STATES)))
    # appended only: the codes are on the wire (format 2)
    assert TASK_STATES[:8] == ("pending", "ready", "running", "completed", "failed", "timeout",
                               "cancelled", "skipped")


# Strings that look like a state but name something else (an argument, a field, a counter).
NOT_STATES = {
    ("client.py", '"timeout": chunk'),  # the wait request's argument
    ("cli/jobs.py", '("timeout", task_timeout)'),  # a task's field in a job file
    ("cli/jobs.py", '"timeout": _POLL'),  # the progress wait's argument
    ("cli/pool.py", "counters = ("),  # the pool's statistics counters
    ("cli/render.py", "jobs.get('running', 0)"),  # the daemon summary's count of running attempts
    ("cli/top.py", 'queued=int(jobs.get("queued")'),  # the daemon summary's count of queued attempts
    ("cli/explain.py", '"queued": "ready (queued)"'),  # explain's reason name, not a state
    ("cli/jobs.py", 'list(result["cancelled"])'),  # cancel's reply: the ids it cancelled
    ("cli/jobs.py", '{"cancelled": [], "stopping": 0'),  # (the same, when nothing matched)
    ("cli/render.py", 'data.get("paused")'),  # the daemon summary's record of its pause
    ("cli/render.py", "q.get('running', 0)"),  # a named queue's count of running tasks
    ("cli/render.py", 'q.get("paused")'),  # a named queue's pause
    ("cli/pool.py", 'q.get("paused")'),  # (the same)
    ("cli/pool.py", 'q.get("running", 0)'),  # (the same)
}


def test_the_client_spells_no_state_by_hand() -> None:
    states = set(contract_states.TASK_STATES) | set(contract_states.JOB_STATES)
    found = []
    for path in sorted(CTL.rglob("*.py")):
        rel = path.relative_to(CTL).as_posix()
        if rel.startswith("contract/"):
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and node.value in states:
                line = lines[node.lineno - 1]
                if not any(rel == f and snippet in line for f, snippet in NOT_STATES):
                    found.append(f"{rel}:{node.lineno}: {line.strip()}")
    assert found == []


def test_columns_round_trip_agrees_with_the_full_view() -> None:
    job = mixed()
    wire = through_the_wire(status.columns_page(job, 0))
    assert wire["format"] == FORMAT_COLUMNS
    decoded = JobStatus.decode(wire)
    assert (decoded.first, decoded.total, decoded.next) == (0, 13, None)
    assert decoded.counts() == job.counts() == decoded.job["counts"]
    for i, t in enumerate(job.tasks):
        full = status.task_status(t, status.engine_routes(job)[0])
        row = decoded.task(i)
        assert row.index == i
        assert row.state == full["state"]
        assert row.attempts == full["attempts"]
        assert row.started_at == full["started_at"] and row.finished_at == full["finished_at"]
        for key in ("result", "error", "exit_code", "progress", "reason", "retry_at", "tail"):
            assert getattr(row, key) == full[key], (i, key)  # type: ignore[literal-required]
        if row.state not in (PENDING, READY, COMPLETED):
            assert row.name == full["name"]
    assert decoded.task(2).tail == ["line one", "boom"]
    assert decoded.task(4).name == "t4"
    assert decoded.task(4).progress == {"fraction": 0.25, "message": "copying"}
    assert decoded.task(5).retry_at == 1010.0 and decoded.task(5).state == PENDING
    assert decoded.task(8).attempts == 2
    assert decoded.task(0).name is None  # a completed task's name is not sent
    assert list(decoded.indices(FAILED, TIMEOUT)) == [2, 3]
    assert list(decoded.indices(RUNNING)) == [4, 7, 8]
    assert list(decoded.indices(CANCELLED, SKIPPED)) == [6, 12]  # 12 waits on the failed ones
    assert list(decoded.indices()) == []


def test_a_finished_big_job_costs_about_21_bytes_a_task() -> None:
    n = 5_000
    job = job_of(n)
    job.start_run(1.0)
    for i in range(n):
        job.mark_running(i, f"a{i}", 2.0)
        job.complete(i, 3.0)
    wire = status.columns_page(job, 0)
    size = len(encode_result("1", wire))
    assert n * DENSE_BYTES_PER_TASK < size < n * DENSE_BYTES_PER_TASK + 1_000, size
    assert wire["groups"][1]["children"] == [["task", 0, n]]  # one run, not n pairs
    assert status.groups(job)[1]["children"][:2] == [("task", 0), ("task", 1)]  # the full view's


def test_pages_extend_to_the_whole() -> None:
    job = mixed()
    whole = JobStatus.decode(through_the_wire(status.columns_page(job, 0)))
    first = JobStatus.decode(through_the_wire(status.columns_page(job, 0, limit=5)))
    assert (len(first.states), first.next) == (5, 5) and first.groups
    while first.next is not None:
        page = JobStatus.decode(through_the_wire(status.columns_page(job, first.next, limit=5)))
        assert page.groups == [] and page.first == first.end
        first.extend(page)
    assert first.states == whole.states and first.sparse == whole.sparse
    assert list(first.attempts) == list(whole.attempts)
    assert [x for x in first.started_at if not math.isnan(x)] == [
        x for x in whole.started_at if not math.isnan(x)
    ]
    with pytest.raises(ValueError, match="does not follow"):
        first.extend(JobStatus.decode(through_the_wire(status.columns_page(job, 2, limit=2))))


def test_a_page_stops_early_on_big_sparse_values() -> None:
    job = job_of(10)
    job.start_run(1.0)
    for i in range(10):
        job.mark_running(i, f"a{i}", 2.0)
        job.complete(i, 3.0, result="x" * 200_000)
    page = status.columns_page(job, 0)
    assert page["columns"]["count"] == 3 and page["columns"]["next"] == 3
    assert len(page["columns"]["state"]) == 3 and len(page["sparse"]["result"][1]) == 3


def good_wire() -> dict[str, Any]:
    return through_the_wire(status.columns_page(mixed(), 0))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (lambda w: w.update(format=1), "not a columnar status"),
        (lambda w: w["columns"].update(state=w["columns"]["state"][:-1]), "state must be 13 bytes"),
        (lambda w: w["columns"].update(state=b"\x09" * 13), "unknown state code 9"),
        (lambda w: w["columns"].update(attempts=b"\x00"), "attempts has 1 bytes for 13 tasks"),
        (lambda w: w["columns"].update(started_at="x"), "started_at must be bytes"),
        (lambda w: w["columns"].update(count=-1), "count must be a count"),
        (lambda w: w["sparse"].update(result=[pack_u32([99]), [1]]), "outside the page"),
        (lambda w: w["sparse"].update(result=[pack_u32([1, 2]), [1]]), "has 8 bytes for 1 tasks"),
        (lambda w: w["sparse"].update(result={"1": 2}), "must be \\[indices, values\\]"),
        (lambda w: w.update(sparse=[]), "must be maps"),
    ],
)
def test_a_malformed_columnar_status_is_refused(spoil: Any, error: str) -> None:
    wire = good_wire()
    spoil(wire)
    with pytest.raises(ValueError, match=error):
        JobStatus.decode(wire)


def test_packing_is_little_endian_with_nan_for_none() -> None:
    assert pack_u32([1, 2**32 + 5]) == b"\x01\x00\x00\x00\xff\xff\xff\xff"
    packed = pack_f64([None, 1.5])
    assert packed[8:] == b"\x00\x00\x00\x00\x00\x00\xf8\x3f" and math.isnan(
        JobStatus.decode(good_wire()).started_at[9]
    )


def test_tails_are_stripped_from_every_shape() -> None:
    job = mixed()
    cols: dict[str, Any] = dict(status.columns_page(job, 0))
    assert "tail" in cols["sparse"]
    status.strip_tails(cols)
    assert "tail" not in cols["sparse"]
    full: dict[str, Any] = dict(status.full_page(job, 0, 100))
    status.strip_tails(full)
    assert all(t["tail"] == [] for t in full["tasks"])
    one: dict[str, Any] = dict(status.task_reply(job, 2))
    assert one["task"]["tail"]
    status.strip_tails(one)
    assert one["task"]["tail"] == []


class Watched(list[TaskRun]):
    """A job's task list that counts the tasks read through it (the status reads tasks through
    ``job.tasks`` only: see core.status)."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        found = super().__getitem__(key)
        self.reads += len(found) if isinstance(key, slice) else 1
        return found

    def __iter__(self) -> Iterator[TaskRun]:
        for t in super().__iter__():
            self.reads += 1
            yield t


def test_the_head_and_the_summary_view_read_no_task() -> None:
    """A status of a 20,000-task job in the summary view, and the head of every view, take the
    counts kept as tasks move: no task is read (the counts equal a count of the state column)."""
    job = job_of(20_000)
    job.start_run(1000.0)
    for i in range(7):
        job.mark_running(i, f"a{i}", 1001.0)
    job.complete(0, 1002.0)
    tasks = job.tasks = Watched(job.tasks)
    summary = status.page(job, "summary", 0, 1000)
    assert summary == {"format": status.FORMAT_SUMMARY, "job": status.detail(job)}
    assert summary["job"]["counts"] == {READY: 20_000 - 7, RUNNING: 6, COMPLETED: 1, PENDING: 1}
    assert status.summary(job)["tasks"] == 20_001
    assert tasks.reads == 0
    whole = JobStatus.decode(through_the_wire(status.columns_page(job, 0)))
    assert tasks.reads == 20_001  # one slice: the page (its columns are made from it)
    assert whole.counts() == whole.job["counts"] == summary["job"]["counts"]


def test_a_poll_with_a_cursor_reads_the_changed_tasks_only() -> None:
    job = job_of(20_000)
    job.start_run(1000.0)
    first = status.changes_page(job, "")  # starts the change log: a full answer
    assert (first["changes"], first["reset"], first["columns"]["count"]) == (False, "new", 20_001)
    tasks = job.tasks = Watched(job.tasks)
    for i in (5, 17, 5):
        job.mark_running(i, f"a{i}", 1001.0) if job.tasks[i].state == READY else job.complete(i, 1002.0)
    tasks.reads = 0
    delta = status.changes_page(job, first["cursor"])
    assert delta["changes"] and not delta["more"] and delta["columns"]["count"] == 2
    assert tasks.reads == 2  # the two tasks that changed, each once
    nothing = status.changes_page(job, delta["cursor"])
    assert nothing["columns"]["count"] == 0 and nothing["cursor"] == delta["cursor"]
    assert tasks.reads == 2


def test_groups_runs_are_kept_for_big_jobs_only_and_read_the_same() -> None:
    small, big = job_of(3), job_of(status.RUNS_CACHED_FROM)
    for job in (small, big):
        assert status.groups(job, runs=True) == status._groups(job, True)
    assert id(small.spec) not in status._RUNS  # made each time: cheaper than the entry's clean-up
    assert status.groups(big, runs=True) is status.groups(big, runs=True)  # made once

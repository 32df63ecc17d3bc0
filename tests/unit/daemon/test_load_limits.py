"""The load limits without a daemon: quotas, connection and wait accounting, status pages, settings."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.ops import check_args
from procpool.contract.tree import parse_job
from procpoold.config import ConfigError, load
from procpoold.control import limits
from procpoold.control.limits import Connections, Waits, connection_cap
from procpoold.core import status
from procpoold.core.jobs import Job
from procpoold.core.quota import TaskQuota
from procpoold.engines.registry import Engines


def test_quota_counts_unfinished_tasks_per_user_and_in_all() -> None:
    q = TaskQuota(max_queued_tasks=10, max_user_tasks=6)
    q.check(1000, 6)
    q.hold("1", 1000, 6)
    with pytest.raises(ProcpoolError) as mine:
        q.check(1000, 1)
    assert mine.value.code == ErrorCode.LIMIT_EXCEEDED
    assert mine.value.message == "queue full for uid 1000: 6 tasks queued, max_user_tasks = 6"
    q.check(1001, 4)
    q.hold("2", 1001, 4)
    with pytest.raises(ProcpoolError) as everyone:
        q.check(1002, 2)
    assert everyone.value.message == "queue full: 10 tasks queued, max_queued_tasks = 10 (this job has 2)"
    q.hold("2", 1001, 4)  # counted once
    q.release("1")
    q.release("1")  # released once
    assert (q.queued, q.by_user) == (4, {1001: 4})
    q.check(1000, 6)


def test_quota_of_zero_means_no_limit() -> None:
    q = TaskQuota()
    q.hold("1", None, 10**7)
    q.check(None, 10**7)


def test_connections_over_the_cap_are_refused_then_shed() -> None:
    conns = Connections(cap=2)
    for fd in (10, 11, 12):
        conns.accepted(fd, now=100.0)
    assert conns.is_over(12) and not conns.is_over(11) and not conns.is_over(None)
    assert conns.due(100.5) == []
    assert conns.due(100.0 + limits.OVER_CAP_GRACE) == [12]
    conns.closed(12)
    assert conns.over == {} and conns.open == {10, 11}
    conns.accepted(11, now=101.0)  # a reused fd number: still one connection
    assert conns.open == {10, 11}


def test_a_burst_past_the_cap_is_shed_at_once_oldest_first() -> None:
    conns = Connections(cap=1)
    conns.accepted(3, 0.0)
    extra = limits.OVER_CAP_BURST + 5
    for fd in range(100, 100 + extra):
        conns.accepted(fd, 0.0)
    assert conns.due(0.0) == list(range(100, 105))


def test_shutting_a_connection_down_keeps_its_fd_open() -> None:
    a, b = socket.socketpair()
    try:
        conns = Connections(cap=0)
        conns.accepted(a.fileno(), 0.0)
        conns.shut(a.fileno())
        assert b.recv(1) == b""  # the peer sees the end of the connection
        assert a.fileno() >= 0 and conns.shed == 1 and conns.open == set()
    finally:
        a.close()
        b.close()


def test_waits_per_peer_and_in_all() -> None:
    w = Waits(per_peer=2, total=3)
    w.add(b"a")
    w.add(b"a")
    assert w.refusal(b"a") == "too many pending waits on this connection: 2, max_waits_per_peer = 2"
    w.add(b"b")
    assert w.refusal(b"c") == "too many pending waits: 3, max_pending_waits = 3"
    w.done(b"a")
    w.done(b"b")
    assert w.refusal(b"c") is None and w.by_peer == {b"a": 1} and w.pending == 1


def test_waits_per_user_across_connections() -> None:
    """One user's connections share one budget; another user's waits are not refused by it."""
    w = Waits(per_peer=2, total=10, per_user=3)
    w.add(b"a", 1000)
    w.add(b"a", 1000)
    w.add(b"b", 1000)
    assert w.refusal(b"c", 1000) == "too many pending waits of this user: 3, max_waits_per_user = 3"
    assert w.refusal(b"d", 2000) is None
    w.done(b"b", 1000)
    assert w.refusal(b"c", 1000) is None and w.by_user == {1000: 2} and w.pending == 2
    assert Waits(per_peer=5, total=10).refusal(b"x", 1) is None  # 0: no per-user cap


def test_connection_cap_is_derived_from_the_fd_limit() -> None:
    assert connection_cap(0, workers=2, fd_limit=1024) == (1024 - 64 - 16) // 2
    assert connection_cap(0, workers=2, fd_limit=65536) == limits.DERIVED_CAP
    assert connection_cap(100, workers=2, fd_limit=1024) == 100
    assert connection_cap(5000, workers=2, fd_limit=1024) == 472  # clamped, with a warning
    assert connection_cap(0, workers=1024, fd_limit=1024) >= 8


def wide(n: int) -> Job:
    raw: dict[str, Any] = {
        "name": "w",
        "root": {"name": "g", "concurrent": [{"name": f"t{i}", "call": "m:f"} for i in range(n)]},
    }
    return Job("1", parse_job(raw), raw, time.time())


def test_status_pages_cover_the_job_once() -> None:
    job = wide(25)
    names: list[str] = []
    first: int | None = 0
    pages = 0
    while first is not None:
        page = status.full_page(job, first, 10)
        assert len(page["tasks"]) <= 10 and page["page"]["total"] == 25
        assert (page["groups"] != []) == (first == 0)
        assert page["job"]["counts"] == {"pending": 25}
        names += [t["name"] for t in page["tasks"]]
        first = page["page"]["next"]
        pages += 1
    assert names == [f"t{i}" for i in range(25)] and pages == 3
    assert status.full_page(job, 99, 10)["tasks"] == []


def test_a_status_page_stops_early_on_big_results() -> None:
    job = wide(10)
    for t in job.tasks:
        t.result = b"x" * 200_000
    page = status.full_page(job, 0, 10)
    assert page["page"]["count"] == 3 and page["page"]["next"] == 3


def test_status_takes_page_arguments() -> None:
    check_args("status", {"job": "1", "tasks_from": 1000, "tasks_limit": 10})
    with pytest.raises(ProcpoolError):
        check_args("status", {"job": "1", "tasks_from": "1000"})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_queued_tasks = -1", "max_queued_tasks must be between 0 and"),
        ("max_queued_replies = 0", "max_queued_replies must be between 1 and"),
        ("max_pending_waits = 1.5", "must be an integer"),
        ("status_page_size = 0", "status_page_size must be between 1 and"),
    ],
)
def test_load_settings_are_validated(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=fragment):
        load(cfg, {})


def test_load_settings_load(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_user_tasks = 500\nmax_connections = 64\n")
    c = load(cfg, {})
    assert (c.max_user_tasks, c.max_connections, c.max_queued_tasks) == (500, 64, 1_000_000)


def test_the_scheduler_refuses_a_full_queue_and_frees_it_when_jobs_finish() -> None:
    from procpoold.engines import Outcome
    from procpoold.loop import EventLoop
    from procpoold.scheduler import Scheduler
    from tests.unit.daemon.test_scheduler import RecordingExecutor

    loop = EventLoop()
    executor = RecordingExecutor(1)
    scheduler = Scheduler(loop, Engines([executor]))
    scheduler.quota.max_queued_tasks = 1
    try:
        scheduler.submit({"name": "a", "root": {"cmd": ["true"]}}, uid=1000)
        with pytest.raises(ProcpoolError, match=r"^queue full: 1 tasks queued, max_queued_tasks = 1$"):
            scheduler.submit({"name": "b", "root": {"cmd": ["true"]}}, uid=1000)
        assert len(scheduler.jobs) == 1
        loop.run_once(0)
        [spec] = executor.submitted
        scheduler.attempt_finished(Outcome(spec.attempt_id, "completed", result=None))
        loop.run_once(0)
        assert scheduler.quota.queued == 0
        scheduler.submit({"name": "c", "root": {"cmd": ["true"]}}, uid=1000)
    finally:
        loop.close()


def test_job_list_is_newest_first_bounded_by_its_limit() -> None:
    from procpoold.loop import EventLoop
    from procpoold.scheduler import Scheduler
    from tests.unit.daemon.test_scheduler import RecordingExecutor

    loop = EventLoop()
    executor = RecordingExecutor(0)
    scheduler = Scheduler(loop, Engines([executor]))
    scheduler.status_page_size = 4
    try:
        for i in range(10):
            scheduler.submit({"name": f"j{i}", "root": {"cmd": ["true"]}})
        assert [j["name"] for j in scheduler.job_list(limit=3)[0]] == ["j7", "j8", "j9"]
        assert len(scheduler.job_list(limit=0)[0]) == 0
        assert [j["name"] for j in scheduler.job_list()[0]] == ["j6", "j7", "j8", "j9"]  # capped
    finally:
        loop.close()


def test_reply_budget_follows_what_the_peer_has_read() -> None:
    a, b = socket.socketpair()
    try:
        budget = limits.ReplyBudget(cap=1000)
        fd = a.fileno()
        assert budget.allow(b"p", fd, 600, turn=1)
        a.send(b"x" * 600)
        assert not budget.allow(b"p", fd, 600, turn=1)  # same turn: 1,200 > 1,000
        assert not budget.allow(b"p", fd, 600, turn=2)  # later, but 600 bytes still unread
        assert (limits.unread_bytes(fd) or 0) >= 600  # the kernel counts its own overhead too
        assert b.recv(1000) == b"x" * 600
        assert budget.allow(b"p", fd, 900, turn=3)  # all read: the estimate starts again
        assert budget.allow(b"q", None, 5000, turn=3)  # nothing queued: one big reply goes
        assert budget.refused == 2
    finally:
        a.close()
        b.close()

"""No exception in a callback stops the loop; far-future timers; the scheduler's own callbacks
fail only their attempt or task; the config refuses non-finite numbers; namespace limits."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold.config import ConfigError, load
from procpoold.core import namespace
from procpoold.engines import AttemptSpec, Outcome, StopReason, TaskError
from procpoold.engines.registry import Engines
from procpoold.loop import MAX_POLL_MS, EventLoop
from procpoold.scheduler import Scheduler
from tests.unit.daemon.test_scheduler import RecordingExecutor


def boom() -> None:
    raise RuntimeError("injected")


def test_an_exception_in_each_kind_of_callback_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = EventLoop()
    r, w = os.pipe()
    served: list[str] = []
    try:

        def bad_reader() -> None:
            os.read(r, 100)
            boom()

        loop.add_reader(r, bad_reader)
        loop.call_later(0, boom)
        loop.call_soon(boom)
        loop.call_last(boom)
        loop.add_signal_handler(signal.SIGUSR2, lambda n: boom())
        os.write(w, b"x")
        os.kill(os.getpid(), signal.SIGUSR2)
        with caplog.at_level(logging.ERROR, logger="procpoold.loop"):
            deadline = time.monotonic() + 5
            while len(caplog.records) < 5 and time.monotonic() < deadline:
                loop.run_once(100)
        kinds = sorted(r.getMessage().split(" callback")[0] for r in caplog.records)
        assert len(caplog.records) == 5, kinds
        assert all(r.exc_info is not None for r in caplog.records)  # with the traceback
        assert any("signal" in r.getMessage() for r in caplog.records)
        # ... and the loop serves what comes next, the same reader included
        loop.remove_reader(r)
        loop.add_reader(r, lambda: served.append(os.read(r, 100).decode()))
        loop.call_soon(lambda: served.append("soon"))
        os.write(w, b"y")
        loop.run_once(1000)
        assert served == ["y", "soon"]
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_a_callback_that_keeps_raising_does_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    loop = EventLoop()
    try:
        with caplog.at_level(logging.ERROR, logger="procpoold.loop"):
            for _ in range(100):
                loop.call_soon(boom)
                loop.run_once(0)
        assert len(caplog.records) == 1
    finally:
        loop.close()


def test_far_future_timers_do_not_overflow_the_poll() -> None:
    loop = EventLoop()
    try:
        for delay in (1e17, math.inf, 10 * 365 * 86400.0):
            timer = loop.call_later(delay, boom)
            assert loop._next_timeout_ms() == MAX_POLL_MS
            loop.run_once(0)
            timer.cancel()
        with pytest.raises(ValueError, match="NaN"):
            loop.call_later(math.nan, boom)
    finally:
        loop.close()


class BrokenExecutor(RecordingExecutor):
    """Raises where told: in submit, or in stop_attempt."""

    def __init__(self, slots: int, fail_submit: bool = False, fail_stop: bool = False) -> None:
        super().__init__(slots)
        self.fail_submit, self.fail_stop = fail_submit, fail_stop

    def submit(self, spec: AttemptSpec) -> None:
        super().submit(spec)
        if self.fail_submit:
            raise ValueError("embedded null byte")

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        if self.fail_stop:
            raise RuntimeError("stop failed")


def scheduler_with(executor: RecordingExecutor) -> tuple[EventLoop, Scheduler]:
    loop = EventLoop()
    return loop, Scheduler(loop, Engines([executor]))


def run_until(loop: EventLoop, done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        loop.run_once(20)


def test_an_executor_that_raises_at_submit_fails_only_that_attempt() -> None:
    executor = BrokenExecutor(slots=4, fail_submit=True)
    loop, scheduler = scheduler_with(executor)
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["x"]}})
    run_until(loop, lambda: job.finished)
    t = job.tasks[0]
    assert (job.state, t.state) == ("failed", "failed")
    assert t.error is not None and "could not be started" in t.error["message"]
    assert "embedded null byte" in t.error["message"]
    assert scheduler.attempts == {}  # no phantom running attempt
    executor.fail_submit = False
    ok, _ = scheduler.submit({"name": "k", "root": {"cmd": ["x"]}})
    run_until(loop, lambda: ok.tasks[0].state == "running")
    loop.close()


def test_a_timeout_whose_stop_raises_fails_that_attempt_and_retries() -> None:
    executor = BrokenExecutor(slots=4, fail_stop=True)
    loop, scheduler = scheduler_with(executor)
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["x"], "timeout": 0.01, "retries": 1}})
    run_until(loop, lambda: len(job.tasks[0].attempts) == 2)
    first = job.tasks[0].attempts[0]
    assert first.status == "failed"
    executor.fail_stop = False
    loop.close()


def test_a_retry_that_raises_fails_the_task_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = RecordingExecutor(slots=4)
    loop, scheduler = scheduler_with(executor)
    job, _ = scheduler.submit({"name": "j", "root": {"cmd": ["x"], "retries": 1, "retry_delay": 0.01}})
    run_until(loop, lambda: len(executor.submitted) == 1)
    monkeypatch.setattr(type(job), "retry_due", lambda self, index: boom())
    scheduler.attempt_finished(Outcome(executor.submitted[0].attempt_id, "failed", error=TaskError("E", "x")))
    run_until(loop, lambda: job.finished)
    t = job.tasks[0]
    assert t.state == "failed" and "could not retry" in (t.error or {})["message"]
    loop.close()


@pytest.mark.parametrize("text", ["drain_timeout = inf", "kill_grace = nan", "priority_aging = -inf",
                                  "heartbeat_timeout = 1e17", "max_worker_age = 1e300"])
def test_config_refuses_non_finite_and_huge_numbers(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(cfg, {})
    assert text.split(" ")[0] in str(info.value)


def test_config_limits_name_themselves_and_follow_the_message_size(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_name_bytes = 0\n")
    with pytest.raises(ConfigError, match="max_name_bytes"):
        load(cfg, {})
    cfg.write_text("max_message_size = 2000000\nmax_result_bytes = 3000000\n")
    with pytest.raises(ConfigError, match="max_result_bytes"):
        load(cfg, {})
    cfg.write_text("max_message_size = 2000000\nmax_nodes = 10\n")
    limits = load(cfg, {}).limits()
    assert (limits.max_result_bytes, limits.max_args_bytes, limits.max_nodes) == (2000000, 2000000, 10)


def test_namespace_growth_beyond_its_limit_fails_that_operation() -> None:
    ns: dict[str, Any] = {"keep": 1}
    sizes = namespace.Sizes(ns, limit=1000)
    namespace.apply(ns, "set", {"key": "a", "value": "x" * 500}, sizes)
    with pytest.raises(ProcpoolError) as info:
        namespace.apply(ns, "set", {"key": "b", "value": "y" * 600}, sizes)
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert "max_namespace_bytes = 1000" in info.value.message
    assert "b" not in ns  # nothing changed
    for _ in range(20):
        namespace.apply(ns, "append", {"key": "l", "value": "z" * 10}, sizes)
    with pytest.raises(ProcpoolError):
        for _ in range(100):
            namespace.apply(ns, "append", {"key": "l", "value": "z" * 10}, sizes)
    namespace.apply(ns, "delete", {"key": "a"}, sizes)  # room again
    namespace.apply(ns, "set", {"key": "b", "value": "y" * 400}, sizes)
    namespace.apply(ns, "set", {"key": "b", "value": "y"}, sizes)  # shrinking is always allowed
    assert sizes.total <= 1000


class Events:
    """Records what an executor reports."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[Outcome] = []

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        self.started.append(attempt_id)

    def attempt_finished(self, outcome: Outcome) -> None:
        self.finished.append(outcome)

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None: ...

    def attempt_log(self, *args: Any, **kwargs: Any) -> None: ...

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any: ...


@pytest.mark.parametrize(
    "where",
    [{"cmd": ["echo", "a\0b"]}, {"cmd": ["echo"], "env": {"A": "x\0y"}}, {"cmd": ["echo"], "cwd": "/\0"},
     {"cmd": "echo \0", "shell": True}],
)
def test_a_nul_byte_that_slips_through_fails_only_that_attempt(where: dict[str, Any]) -> None:
    from procpoold.engines.commands import CommandExecutor

    loop = EventLoop()
    executor = CommandExecutor(slots=2)
    events = Events()
    executor.start(loop, events)  # type: ignore[arg-type]
    try:
        spec = AttemptSpec("1.0@1#1", "1", "j", "1.0", "t", 1, "cmd", **where)
        executor.submit(spec)
        run_until(loop, lambda: bool(events.finished))
        [outcome] = events.finished
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type == "ValueError" and "cannot start" in outcome.error.message
        assert events.started == [] and executor.free_slots() == 2  # no phantom running attempt
    finally:
        executor.shutdown(0)
        loop.close()


def test_lookups_of_hostile_ids_are_short_not_found_errors() -> None:
    loop, scheduler = scheduler_with(RecordingExecutor(slots=0))
    scheduler.submit({"name": "j", "root": {"cmd": ["x"]}})
    for ref in ("x" * 10_000_000, "1." + "9" * 5000, "1/" + "n" * 10_000, "1.-1", "1."):
        with pytest.raises(ProcpoolError) as info:
            scheduler.resolve(ref)
        assert info.value.code is ErrorCode.NOT_FOUND and len(info.value.message) < 250
    with pytest.raises(ProcpoolError) as info:
        scheduler.job_list(state="s" * 1_000_000)
    assert len(info.value.message) < 200
    loop.close()


def test_incr_beyond_64_bits_is_refused_and_changes_nothing() -> None:
    ns: dict[str, Any] = {"n": 2**64 - 2}
    with pytest.raises(ProcpoolError, match="64-bit"):
        namespace.apply(ns, "incr", {"key": "n", "by": 2}, namespace.Sizes(ns, 1000))
    assert ns == {"n": 2**64 - 2}
    assert namespace.apply(ns, "incr", {"key": "n", "by": -(2**64 - 2)}) == 0


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    """A timer cancelled long before it is due (a wait answered early, with a timeout of years)
    releases its callback at once, and the heap is rebuilt once half of it is cancelled: it stays
    bounded however many such timers come and go."""
    from procpoold.loop import COMPACT_AT, EventLoop

    loop = EventLoop()
    try:
        held = [bytearray(1024)]

        def reply() -> None:
            held.append(bytearray(1))

        first = loop.call_later(3e8, reply)
        first.cancel()
        first.cancel()  # twice is once
        assert first.callback is not reply  # what it held is released now, not in 10 years
        assert loop._timers.cancelled == 1
        for _ in range(20 * COMPACT_AT):
            loop.call_later(3e8, lambda: None).cancel()
        assert len(loop._timers) <= 2 * COMPACT_AT + 2
        assert 0 <= loop._timers.cancelled <= len(loop._timers)
        fired: list[int] = []
        loop.call_later(0, lambda: fired.append(1)).cancel()
        live = loop.call_later(0, lambda: fired.append(2))
        loop.run_once(0)
        assert fired == [2]
        live.cancel()  # after it fired: not counted again
        assert 0 <= loop._timers.cancelled <= len(loop._timers)
    finally:
        loop.close()

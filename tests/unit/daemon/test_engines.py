"""Engines behind one protocol: routing by engine name, an engine added by registration only, and
recovery of a crashed daemon's attempts through ``Executor.recover``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from procpool.contract.tree import TreeError
from procpoold.engines import AttemptSpec
from procpoold.engines.registry import Engines, RouteError
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore
from tests.support.inline_engine import InlineEngine
from tests.unit.daemon.test_scheduler import RecordingExecutor

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def engine(name: str, kinds: set[str], slots: int = 10, outlives: bool = False) -> RecordingExecutor:
    e = RecordingExecutor(slots)
    e.name = name  # type: ignore[misc]
    e.kinds = frozenset(kinds)  # type: ignore[misc]
    e.outlives_daemon = outlives  # type: ignore[misc]
    return e


def test_each_kind_goes_to_the_first_engine_that_runs_it_unless_told_otherwise() -> None:
    pool, commands, inline = engine("pool", {"call"}), engine("commands", {"cmd"}), InlineEngine()
    engines = Engines([pool, commands, inline])
    assert engines.route("call") is pool and engines.route("cmd") is commands
    assert engines.route("call", "inline") is inline
    assert Engines([pool, commands, inline], defaults={"call": "inline"}).route("call") is inline
    with pytest.raises(RouteError, match="no engine named 'dask'"):
        engines.route("call", "dask")
    with pytest.raises(RouteError, match="does not run 'cmd' tasks"):
        engines.route("cmd", "inline")
    with pytest.raises(ValueError, match="two engines"):
        Engines([pool, engine("pool", {"cmd"})])
    with pytest.raises(ValueError, match="does not run them"):
        Engines([pool, commands], defaults={"cmd": "pool"})


def test_a_task_runs_on_the_engine_it_names() -> None:
    loop = EventLoop()
    pool, commands, inline = engine("pool", {"call"}), engine("commands", {"cmd"}), InlineEngine()
    scheduler = Scheduler(loop, Engines([pool, commands, inline]))
    for e in (pool, commands, inline):
        e.start(loop, scheduler)
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": [
        {"name": "here", "call": "tests.support.tasks:add", "args": [2, 3], "engine": "inline"},
        {"name": "there", "call": "tests.support.tasks:add", "args": [1, 1]},
        {"name": "cmd", "cmd": ["true"]},
    ]}})
    for _ in range(3):
        loop.run_once(0)
    assert [s.task_name for s in pool.submitted] == ["there"]
    assert [s.task_name for s in commands.submitted] == ["cmd"]
    assert len(inline.ran) == 1
    here = scheduler.finished_status(f"{job.id}/here")
    assert here["task"]["state"] == "completed" and here["task"]["result"] == 5
    loop.close()


def test_a_task_naming_an_unknown_engine_is_refused_at_submission() -> None:
    loop = EventLoop()
    scheduler = Scheduler(loop, Engines([engine("pool", {"call"}), engine("commands", {"cmd"})]))
    with pytest.raises(TreeError, match=r"root\.engine: no engine named 'inline'"):
        scheduler.submit({"name": "j", "root": {"call": "tests.support.tasks:add", "engine": "inline"}})
    with pytest.raises(TreeError, match="does not run 'cmd' tasks"):
        scheduler.submit({"name": "j", "root": {"cmd": ["true"], "engine": "pool"}})
    assert not scheduler.jobs
    loop.close()


def test_recover_hands_each_engine_the_attempts_a_crashed_daemon_left_with_it(tmp_path: Path) -> None:
    def daemon() -> tuple[EventLoop, StateStore, RecordingExecutor, RecordingExecutor, Scheduler]:
        loop, store = EventLoop(), StateStore(tmp_path / "state.db")
        calls, commands = engine("pool", {"call"}), engine("commands", {"cmd"}, outlives=True)
        scheduler = Scheduler(loop, Engines([calls, commands]), store=store)
        scheduler.pid_flush_delay = None  # pids go only with another commit (as after a crash)
        scheduler.recover()
        return loop, store, calls, commands, scheduler

    loop, store, calls, commands, scheduler = daemon()
    job, _ = scheduler.submit({"name": "j", "root": {"concurrent": [
        {"name": "c", "call": "tests.support.tasks:add", "args": [1, 2]},
        {"name": "x", "cmd": ["sleep", "60"]},
    ]}})
    loop.run_once(0)
    [call_spec], [cmd_spec] = calls.submitted, commands.submitted
    scheduler.attempt_started(call_spec.attempt_id, 111, "w0")
    scheduler.attempt_started(cmd_spec.attempt_id, 222, None)
    scheduler.flush()  # the pid of the engine whose processes outlive the daemon is committed
    store.close()  # the daemon "crashes": nothing ends the attempts
    loop.close()

    loop, store, calls, commands, scheduler = daemon()
    assert [(a.job_id, a.task_id, a.attempt, a.pid) for a in commands.recovered] == [
        (job.id, job.tasks[1].id, 1, 222)]
    assert [a.task_id for a in calls.recovered] == [job.tasks[0].id]  # (its pid: not worth a commit)
    store.close()
    loop.close()


def test_a_stored_job_of_an_engine_no_longer_registered_fails_with_the_reason(tmp_path: Path) -> None:
    loop, store = EventLoop(), StateStore(tmp_path / "state.db")
    engines = Engines([engine("pool", {"call"}, slots=0), InlineEngine(slots=0)])
    scheduler = Scheduler(loop, engines, store=store)
    scheduler.recover()
    job, _ = scheduler.submit({"name": "j", "root": {"call": "tests.support.tasks:add", "engine": "inline"}})
    store.close()
    loop.close()

    loop, store = EventLoop(), StateStore(tmp_path / "state.db")
    scheduler = Scheduler(loop, Engines([engine("pool", {"call"})]), store=store)
    counts = scheduler.recover()
    assert counts["failed"] == 1
    status = scheduler.finished_status(job.id)
    assert status["state"] == "failed" and "no engine named 'inline'" in str(status)
    store.close()
    loop.close()


def test_an_attempt_has_every_field_of_its_definition_set_by_name() -> None:
    loop = EventLoop()
    calls, commands = engine("pool", {"call"}), engine("commands", {"cmd"})
    scheduler = Scheduler(loop, Engines([calls, commands]))
    scheduler.submit({"name": "j", "env": {"A": "1"}, "python_path": ["/opt/lib"], "root": {"concurrent": [
        {"name": "c", "call": "tests.support.tasks:add", "args": [1, 2], "kwargs": {}, "timeout": 5},
        {"name": "x", "cmd": "echo hi", "shell": True, "env": {"B": "2"}, "cwd": "/usr"},
    ]}})
    loop.run_once(0)
    [call], [cmd] = calls.submitted, commands.submitted
    for spec in (call, cmd):
        missing = [f.name for f in fields(AttemptSpec) if not hasattr(spec, f.name)]
        assert not missing, f"fields of AttemptSpec that _prepare does not set: {missing}"
    assert (call.task_name, call.kind, call.call, call.args, call.timeout, call.attempt, call.run) == (
        "c", "call", "tests.support.tasks:add", [1, 2], 5, 1, 1)
    assert (call.env, call.python_path, call.user, call.cmd, call.shell) == (
        {"A": "1"}, ["/opt/lib"], None, None, False)
    assert (cmd.kind, cmd.cmd, cmd.shell, cmd.env, cmd.cwd) == (
        "cmd", "echo hi", True, {"A": "1", "B": "2"}, "/usr")
    loop.close()

"""A PoolExecutor driven by a real EventLoop and a recording ExecutorEvents, always cleaned up."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold.engines import AttemptSpec, Outcome
from procpoold.loop import EventLoop
from procpoold.pool import shm
from procpoold.pool.pool import PoolExecutor
from procpoold.pool.slot import PoolSettings

ROOT = str(Path(__file__).resolve().parents[3])
PROBES = "tests.support.pool_probes"
#: Only reached when something is broken (a deadlock, a lost wakeup).
DEADLINE = 20.0
_ids = itertools.count(1)


class Recorder:
    """ExecutorEvents that records everything and serves a dict as the namespace."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[int | None, str | None]] = {}
        self.finished: dict[str, Outcome] = {}
        self.finish_count: dict[str, int] = {}
        #: The size of each batch reported through attempts_finished.
        self.batches: list[int] = []
        self.progress: list[tuple[str, dict[str, Any]]] = []
        self.logs: list[tuple[str, str, int, str, dict[str, str] | None]] = []
        self.namespace: dict[str, Any] = {}
        #: Called with (attempt_id, op, args) before a namespace operation is answered.
        self.on_namespace: Callable[[str, str, dict[str, Any]], None] | None = None

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        self.started[attempt_id] = (pid, worker)

    def attempt_finished(self, outcome: Outcome) -> None:
        self.finished[outcome.attempt_id] = outcome
        self.finish_count[outcome.attempt_id] = self.finish_count.get(outcome.attempt_id, 0) + 1

    def attempts_finished(self, outcomes: list[Outcome]) -> None:
        self.batches.append(len(outcomes))
        for outcome in outcomes:
            self.attempt_finished(outcome)

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        self.progress.append((attempt_id, progress))

    def attempt_log(self, attempt_id: str, stream: str, level: int, message: str,
                    fields: dict[str, str] | None = None) -> None:
        self.logs.append((attempt_id, stream, level, message, fields))

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        if self.on_namespace is not None:
            self.on_namespace(attempt_id, op, args)
        if op == "incr":
            self.namespace[args["key"]] = self.namespace.get(args["key"], 0) + args.get("by", 1)
            return self.namespace[args["key"]]
        if op == "get" and args["key"] != "forbidden":
            return self.namespace.get(args["key"], args.get("default"))
        raise ProcpoolError(ErrorCode.NOT_FOUND, f"no access to {args.get('key')!r}")


class PoolHarness:
    """One pool, its loop and its recorder, with helpers to submit and wait."""

    def __init__(self, settings: PoolSettings, sink: Any = None) -> None:
        self.loop = EventLoop()
        self.events = Recorder()
        self.pool = PoolExecutor(settings, sink=sink)
        self.pool.prefork()
        self.pool.start(self.loop, self.events)
        self.closed = False

    def spec(self, fn: str, *args: Any, name: str | None = None, **fields: Any) -> AttemptSpec:
        n = next(_ids)
        call = fn if ":" in fn else f"{PROBES}:{fn}"
        return AttemptSpec(attempt_id=f"t{n}#1", job_id="job1", job_name="jobname", task_id=f"t{n}",
                           task_name=name or fn, attempt=1, kind="call", call=call, args=list(args),
                           python_path=[ROOT], **fields)

    def submit(self, fn: str, *args: Any, **fields: Any) -> str:
        spec = self.spec(fn, *args, **fields)
        self.pool.submit(spec)
        return spec.attempt_id

    def run_until(self, predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "") -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what or predicate}; "
                                     f"finished={self.events.finished}, workers={self.pool.workers_info()}")
            self.loop.run_once(50)

    def wait(self, *aids: str, timeout: float = DEADLINE) -> list[Outcome]:
        self.run_until(lambda: all(a in self.events.finished for a in aids), timeout, f"outcomes of {aids}")
        return [self.events.finished[a] for a in aids]

    def call(self, fn: str, *args: Any, **fields: Any) -> Outcome:
        return self.wait(self.submit(fn, *args, **fields))[0]

    def pids(self) -> set[int]:
        return {w["pid"] for w in self.pool.workers_info() if w["pid"] is not None}

    def idle_workers(self, n: int) -> None:
        self.run_until(lambda: [w["state"] for w in self.pool.workers_info()] == ["idle"] * n,
                       what=f"{n} idle workers")

    def close(self, grace: float = 1.0) -> None:
        if not self.closed:
            self.closed = True
            self.pool.shutdown(grace)
            self.loop.close()


def shm_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("procpool-")}


def _creator(entry: str) -> int | None:
    """The pid in a shared-memory object's name (``procpool-<kind>-<pid>-...``)."""
    return shm.owner_pid(entry)


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def make_pool() -> Iterator[Callable[..., PoolHarness]]:
    """Factory of pools; after the test: everything shut down, no child, segment or fd left."""
    harnesses: list[PoolHarness] = []
    shm_before = shm_entries()
    fds_before = open_fds()

    def make(sink: Any = None, **settings: Any) -> PoolHarness:
        settings.setdefault("workers", 2)
        harness = PoolHarness(PoolSettings(**settings), sink)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.close()
    me = psutil.Process()
    assert me.children(recursive=True) == [], "pool processes left behind"
    # Only objects made here (this process, or a worker that ran an attempt): other test runs
    # on the machine make theirs meanwhile.
    ours = {me.pid} | {pid for h in harnesses for pid, _ in h.events.started.values()}
    left = {e for e in shm_entries() - shm_before if _creator(e) in ours or _creator(e) is None}
    assert left == set(), "shared-memory objects left behind"
    leaked = open_fds() - fds_before
    assert not leaked, f"fds left open: {sorted(leaked)}"


@pytest.fixture
def pool(make_pool: Callable[..., PoolHarness]) -> PoolHarness:
    """A two-worker pool with short grace periods."""
    return make_pool(workers=2, kill_grace=0.5)

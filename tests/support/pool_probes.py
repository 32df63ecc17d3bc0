"""Task callables for the worker-pool tests (``tests.support.pool_probes:<name>``).

They run inside pool workers. Each one does one thing a real task might do, including the ways a
worker can die: raise, ``os._exit``, SIGKILL itself, segfault, hang, allocate, flood output.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from procpool import task

log = logging.getLogger("probes")


def echo(value: Any) -> Any:
    return value


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def pid() -> int:
    return os.getpid()


def context() -> dict[str, Any]:
    ctx = task.context()
    return {"task_name": ctx.task_name, "attempt": ctx.attempt, "job_id": ctx.job_id}


def env_and_cwd(key: str) -> list[Any]:
    return [os.environ.get(key), os.getcwd()]


def stubborn(seconds: float, marker: str | None = None) -> str:
    """Ignores interrupts (a task stuck in C code behaves the same): only SIGKILL stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:
            if marker:
                Path(marker).write_text("interrupted")
    return "survived"


def interruptible(seconds: float, marker: str) -> str:
    """Records the exception that stopped it, then lets it propagate."""
    try:
        time.sleep(seconds)
    except BaseException as exc:
        Path(marker).write_text(type(exc).__name__)
        raise
    return "slept"


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault() -> None:
    ctypes.string_at(0)


def hold_gil(seconds: int) -> None:
    """Sleeps in C without releasing the GIL: the heartbeat thread cannot run (a hung worker)."""
    ctypes.PyDLL(None).sleep(seconds)


def allocate(mib: int, hold: float = 0.0) -> int:
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if hold:
        time.sleep(hold)
    return len(block)


def big(n_bytes: int) -> bytes:
    return b"x" * n_bytes


def length(data: bytes) -> int:
    return len(data)


def unserializable() -> Any:
    return object()


class _DiesWhenEncoded(dict):  # type: ignore[type-arg]
    """A dict whose ``items()`` (called by msgpack's encoder for dict subclasses) kills the worker."""

    def __init__(self, how: str) -> None:
        super().__init__(x=1)
        self.how = how

    def items(self) -> Any:
        _die(self.how)
        return super().items()


def _die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    elif how == "segv":
        ctypes.string_at(0)
    elif how == "runtime":
        # Break the worker runtime itself: the next result it posts raises outside task code.
        from procpoold.pool import worker as runtime

        def broken(self: Any, data: bytes) -> None:
            raise RuntimeError("the worker runtime is broken")

        runtime.Worker.post = broken  # type: ignore[method-assign]


def die(how: str, stage: str) -> Any:
    """Die ``how`` (exit, sigkill, segv, runtime) ``before``/``inside``/``after`` computing or
    while the result is ``encoded``."""
    if stage == "before":
        _die(how)
    if stage == "encoded":
        return _DiesWhenEncoded(how)
    total = 0
    for i in range(1000):
        total += i
        if stage == "inside" and i == 500:
            _die(how)
    if stage == "after":
        _die(how)
    return total


def garble(message: Any) -> None:
    """From now on the worker posts ``message`` (msgpack) instead of each result: a worker whose
    result ring carries something that is not a result message."""
    import msgpack

    from procpoold.pool import worker as runtime

    original = runtime.Worker.post

    def post(self: Any, data: bytes) -> None:
        original(self, msgpack.packb(message))

    runtime.Worker.post = post  # type: ignore[method-assign]


def output(lines: int) -> str:
    for i in range(lines):
        print(f"out {i}")
    print("err line", file=sys.stderr)
    log.warning("logged %d", lines)
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("with traceback")
    sys.stdout.write("partial")
    return "printed"


def progress() -> str:
    task.progress(0.5)
    task.progress(done=3, total=4, message="three")
    return "reported"


def ns_incr(key: str, times: int = 1) -> Any:
    value = None
    for _ in range(times):
        value = task.namespace().incr(key)
    return value


def ns_bad() -> str:
    try:
        task.namespace().get("forbidden")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def async_fail() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("async boom")


async def async_cancellable(seconds: float, marker: str) -> str:
    """Counts the CancelledErrors it sees into ``marker``."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        path = Path(marker)
        count = int(path.read_text()) if path.exists() else 0
        path.write_text(str(count + 1))
        raise
    return "finished"


async def async_context(delay: float) -> str:
    """The task context stays right while other async attempts interleave."""
    before = task.context().task_name
    await asyncio.sleep(delay)
    after = task.context().task_name
    print(f"async line of {after}")
    return f"{before}/{after}"

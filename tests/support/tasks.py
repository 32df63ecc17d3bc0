"""Task functions for the daemon-level job tests (imported by workers through python_path)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from procpool import task


def add(a: int, b: int) -> int:
    return a + b


def incr(key: str = "n") -> Any:
    return task.namespace().incr(key)


def context() -> dict[str, Any]:
    ctx = task.context()
    ctx.logger.info("context of %s", ctx.task_name)
    return {
        "job_id": ctx.job_id,
        "task_id": ctx.task_id,
        "task_name": ctx.task_name,
        "attempt": ctx.attempt,
        "run": ctx.run,
        "env": os.environ.get("SPECIAL", ""),
    }


def progress_then_wait(gate: str) -> str:
    task.progress(fraction=0.5, message="halfway")
    while not Path(gate).exists():
        time.sleep(0.01)
    return "done"


def boom(message: str) -> None:
    raise ValueError(message)


def fail_deep(depth: int, message: str) -> None:
    """Raises ``RuntimeError(message)`` ``depth`` calls down (a traceback of the task's own frames)."""
    if depth > 0:
        fail_deep(depth - 1, message)
        return
    raise RuntimeError(message)


def flaky(marker: str) -> str:
    """Fails on the first attempt, succeeds on the second."""
    if task.context().attempt == 1:
        Path(marker).write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def not_msgpackable() -> object:
    return object()


def sleep_forever() -> None:
    while True:
        time.sleep(0.05)


async def async_wait_cancel(marker: str) -> str:
    Path(marker + ".started").write_text("started")  # the test cancels once the coroutine runs
    try:
        await asyncio.sleep(1000)
    except asyncio.CancelledError:
        Path(marker).write_text("cancelled")
        raise
    return "not reached"


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def cas_append(key: str) -> int:
    ns = task.namespace()
    ns.cas("first", None, task.context().task_name)
    return ns.append(key, task.context().task_name)


def pid_then_wait(path: str, gate: str) -> int:
    """Write this process's pid to ``path`` (atomically) and add it to ``path``.all (every process
    that ran this, in order), then wait until ``gate`` exists."""
    with open(f"{path}.all", "a") as every:
        every.write(f"{os.getpid()}\n")
    Path(f"{path}.tmp").write_text(str(os.getpid()))
    os.replace(f"{path}.tmp", path)
    while not Path(gate).exists():
        time.sleep(0.01)
    return os.getpid()


def record_run(log: str, name: str, needs: str = "", gate: str = "") -> str:
    """Append ``name`` to the file ``log`` (a line per run of the task: a test counts them) and
    count it in the namespace (``runs``); fail while the file ``needs`` (if given) is missing;
    then wait (at most 60 s) for the file ``gate`` (if given). Returns ``name@run<N>``."""
    with open(log, "a") as every:
        every.write(f"{name}\n")
    task.namespace().incr("runs")
    if needs and not Path(needs).exists():
        raise RuntimeError(f"{Path(needs).name} is missing")
    deadline = time.monotonic() + 60
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"{name}@run{task.context().run}"


async def io_wait(seconds: float) -> list[float]:
    """An I/O-bound task: waits ``seconds`` without holding the CPU; returns [its worker's pid,
    start, end] (CLOCK_MONOTONIC, the same in every process of the machine)."""
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return [os.getpid(), start, time.monotonic()]


def sync_wait(seconds: float) -> list[float]:
    """As ``io_wait``, a plain function."""
    start = time.monotonic()
    time.sleep(seconds)
    return [os.getpid(), start, time.monotonic()]

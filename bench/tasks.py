"""Task functions of the benchmark (``tasks:<name>``).

Imported by procpoold's workers (the benchmark's jobs put this folder in ``python_path``) and
by the peers' workers (``bench/run.py`` puts it on ``PYTHONPATH``), so every contender runs
exactly the same code.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def noop() -> None:
    return None


def echo(value: Any) -> Any:
    return value


def cpu(ms: float = 5.0) -> int:
    """Pure-Python CPU work for ``ms`` milliseconds of thread CPU time (no sleeping)."""
    end = time.thread_time() + ms / 1000.0
    n = 0
    while time.thread_time() < end:
        for _ in range(200):
            n += 1
    return n


def spew(lines: int) -> int:
    """Print ``lines`` short lines to stdout (an output flood from one task)."""
    write = sys.stdout.write
    for i in range(lines):
        write(f"line {i}\n")
    return lines


def sleep_ms(ms: float = 5.0) -> None:
    """Sleep ``ms`` milliseconds (a task that waits, not one that computes)."""
    time.sleep(ms / 1000.0)


async def io_sleep_ms(ms: float = 50.0) -> None:
    """An I/O-bound ``async def`` task: awaits ``ms`` milliseconds (a network call, say)."""
    import asyncio

    await asyncio.sleep(ms / 1000.0)

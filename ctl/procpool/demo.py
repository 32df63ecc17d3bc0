"""Small task functions for the examples and the quick start (``procpool.demo:greet`` ...).

They ship with the package so that the example job trees run anywhere procpool
is installed, including under systemd, without extra import paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from procpool import task


def greet(name: str = "world") -> str:
    """Log a greeting and return it."""
    message = f"hello, {name}"
    task.context().logger.info(message)
    print(message)
    return message


def count(n: int = 5, pause: float = 0.05) -> int:
    """Count to ``n``, reporting progress and adding to the namespace counter ``counted``."""
    for i in range(1, n + 1):
        time.sleep(pause)
        task.progress(done=i, total=n)
    total = task.namespace().incr("counted", n)
    return int(total)


async def fetch(url: str, delay: float = 0.1) -> dict[str, str]:
    """Pretend to fetch ``url`` (an async task): wait, then record it in the namespace."""
    await asyncio.sleep(delay)
    task.namespace().append("fetched", url)
    return {"url": url, "status": "200"}


def checksum(data: str) -> str:
    """The SHA-256 of ``data``: a little CPU work."""
    return hashlib.sha256(data.encode()).hexdigest()


def fail(message: str = "something went wrong") -> None:
    """Always raise, to show failures, retries and skipped dependents."""
    raise RuntimeError(message)

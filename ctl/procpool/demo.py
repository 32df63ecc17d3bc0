"""Small task functions for the examples and the quick start (``procpool.demo:greet`` ...).

They ship with the package so that the example job trees run anywhere procpool
is installed, including under systemd, without extra import paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

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


@dataclass
class Tally:
    """The namespace of ``examples/typed-namespace.json`` as its tasks read it (typed)."""

    words: int = 0
    longest: str = ""
    seen: list[str] = field(default_factory=list)


def tally(word: str) -> int:
    """Count ``word`` and keep the longest word seen, through a typed view of the namespace."""
    ns = task.namespace(Tally)
    ns.append("seen", word)
    while True:  # compare-and-set: concurrent tallies keep the longest
        longest = ns.get("longest")
        if len(word) <= len(longest) or ns.cas("longest", longest, word):
            break
    return int(ns.incr("words"))


def tally_report() -> dict[str, object]:
    """What the tallies left, read from one snapshot of the namespace."""
    state = task.namespace(Tally).snapshot()
    return {"words": state.words, "longest": state.longest, "seen": sorted(state.seen)}

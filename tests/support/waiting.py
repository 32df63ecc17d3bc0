"""Bounded waiting: poll a predicate until it holds, or fail showing the last value seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Only reached when something is broken (a deadlock, a lost wakeup): never a tuning knob.
DEADLINE = 30.0


def wait_until(
    probe: Callable[[], T], accept: Callable[[T], bool] = bool, timeout: float = DEADLINE, what: str = ""
) -> T:
    """Return ``probe()`` once ``accept`` holds for it; raise AssertionError with the last value."""
    end = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or probe}: last saw {value!r}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)

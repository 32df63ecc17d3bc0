"""A module whose import is slow until the worker importing it gets a stop's signal.

The pool tests use it for a stop that comes while a worker is still importing a task's function
(no task code is running yet): on import it writes ``importing`` in the folder named by
``PP_SLOW_IMPORT_DIR`` (set in the test's environment before the pool forks its workers), then
waits, at most a minute, until the worker's interrupt signal has been delivered to it. The
worker's own handler still runs: this only watches it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from procpoold.pool.worker import INTERRUPT_SIGNAL
from tests.support.pool_probes import interruptible

__all__ = ["interruptible"]


def _wait_for_the_signal() -> None:
    seen: list[int] = []
    handler: Any = signal.getsignal(INTERRUPT_SIGNAL)

    def watch(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)
        if callable(handler):
            handler(signum, frame)

    signal.signal(INTERRUPT_SIGNAL, watch)
    try:
        Path(os.environ["PP_SLOW_IMPORT_DIR"], "importing").write_text(str(os.getpid()))
        end = time.monotonic() + 60
        while not seen and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        signal.signal(INTERRUPT_SIGNAL, handler)


_wait_for_the_signal()

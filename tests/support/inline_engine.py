"""A test-only engine: runs ``call`` tasks in the daemon's own process, one at a time, synchronously.

It exists to prove that an engine is one module implementing ``procpoold.engines.Executor`` plus its
registration (``Engines([...])``): nothing else in the daemon names it. Not for production: task
code would run inside the daemon, with its privileges, and block its loop.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

from procpoold.engines import AttemptSpec, ExecutorEvents, Health, LeftAttempt, Outcome, StopReason, TaskError
from procpoold.loop import EventLoop


class InlineEngine:
    """Runs each ``call`` attempt at the next turn of the loop, in this process."""

    name = "inline"
    kinds = frozenset({"call"})
    outlives_daemon = False

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.ran: list[str] = []  # attempt ids, in the order they ran
        self.recovered: list[LeftAttempt] = []
        self._queued: dict[str, AttemptSpec] = {}
        self._loop: EventLoop | None = None
        self._events: ExecutorEvents | None = None

    def prefork(self) -> None: ...

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        self._loop, self._events = loop, events

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._queued))

    def submit(self, spec: AttemptSpec) -> None:
        assert self._loop is not None
        self._queued[spec.attempt_id] = spec
        self._loop.call_soon(lambda: self._run(spec.attempt_id))

    def expect_work(self, uid: int | None) -> None: ...

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        spec = self._queued.pop(attempt_id, None)
        if spec is not None and self._events is not None:
            status = "interrupted" if reason == "shutdown" else reason
            self._events.attempt_finished(Outcome(attempt_id, status, error=TaskError("Stopped", reason)))

    def shutdown(self, grace: float) -> None:
        for attempt_id in list(self._queued):
            self.stop_attempt(attempt_id, "shutdown")

    def info(self) -> dict[str, Any]:
        return {"ran": len(self.ran)}

    def set_daemon_id(self, daemon_id: str) -> None: ...

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        self.recovered.extend(attempts)
        return 0  # nothing of a previous daemon's attempts outlives it here

    def resize(self, workers: int) -> bool:
        return False

    def health(self) -> Health:
        return Health(busy=len(self._queued))

    def workers(self) -> list[dict[str, Any]]:
        return []

    def _run(self, attempt_id: str) -> None:
        spec = self._queued.pop(attempt_id, None)
        if spec is None or self._events is None:
            return  # stopped before its turn
        self._events.attempt_started(attempt_id, None, None)
        self.ran.append(attempt_id)
        module, _, function = (spec.call or "").partition(":")
        try:
            result = getattr(importlib.import_module(module), function)(*spec.args, **spec.kwargs)
        except Exception as exc:
            error = TaskError(type(exc).__name__, str(exc), traceback.format_exc())
            self._events.attempt_finished(Outcome(attempt_id, "failed", error=error))
            return
        self._events.attempt_finished(Outcome(attempt_id, "completed", result=result))

"""The API that task code imports: context, namespace, progress, logger.

Inside a task (a ``call`` task running in a procpool worker)::

    from procpool import task

    def resize(path: str) -> int:
        ctx = task.context()
        ctx.logger.info("resizing %s (attempt %d)", path, ctx.attempt)
        done = task.namespace().incr("resized")
        task.progress(fraction=0.5)
        ...

Namespace operations are atomic because the daemon executes them, one at a
time, on its event loop: 200 concurrent tasks that each ``incr("n")`` leave
exactly 200. Outside a task (say, in a unit test of your function) these
calls raise :class:`NotInTask`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

#: Namespace operations understood by the daemon, with their argument names.
NAMESPACE_OPS: dict[str, tuple[str, ...]] = {
    "get": ("key", "default"),
    "set": ("key", "value"),
    "incr": ("key", "by"),
    "append": ("key", "value"),
    "cas": ("key", "expected", "value"),
    "delete": ("key",),
    "snapshot": (),
}


class NotInTask(RuntimeError):
    """A task API was used outside a running procpool task."""


class Channel(Protocol):
    """How a worker runtime carries task API calls to the daemon."""

    def request(self, op: str, args: dict[str, Any]) -> Any:
        """A round trip: the daemon's result, or raise the daemon's error."""

    def send(self, op: str, args: dict[str, Any]) -> None:
        """Fire and forget (progress reports)."""


@dataclass(frozen=True)
class TaskContext:
    """Who is running: ids, names, the attempt number and a logger."""

    job_id: str
    job_name: str
    task_id: str
    task_name: str
    attempt: int
    run: int
    logger: logging.Logger


class _Attempt:
    """The running attempt as the task API sees it; its :class:`TaskContext` is built on first use.

    A no-op task never asks for its context, so the worker's per-attempt cost stays one small
    object (a frozen dataclass takes microseconds to build).
    """

    __slots__ = ("_context", "channel", "fields", "logger")

    def __init__(
        self, channel: Channel, fields: dict[str, Any], logger: logging.Logger | None = None
    ) -> None:
        self.channel = channel
        self.fields = fields
        self.logger = logger
        self._context: TaskContext | None = None

    def context(self) -> TaskContext:
        if self._context is None:
            fields = self.fields
            self._context = TaskContext(
                job_id=str(fields["job_id"]),
                job_name=str(fields.get("job_name", "")),
                task_id=str(fields["task_id"]),
                task_name=str(fields["task_name"]),
                attempt=int(fields["attempt"]),
                run=int(fields.get("run", 1)),
                logger=self.logger or logging.getLogger(f"procpool.task.{fields['task_name']}"),
            )
        return self._context


_current: _Attempt | None = None


def _install(channel: Channel, fields: dict[str, Any], logger: logging.Logger | None = None) -> _Attempt:
    """Called by the worker runtime before the task function runs; returns what it installed."""
    global _current
    _current = _Attempt(channel, fields, logger)
    return _current


def _clear() -> None:
    """Called by the worker runtime after the task function returned."""
    global _current
    _current = None


def _need() -> _Attempt:
    if _current is None:
        raise NotInTask("procpool.task is only available inside a task run by procpoold")
    return _current


def context() -> TaskContext:
    """The running task's context."""
    return _need().context()


def progress(
    fraction: float | None = None,
    *,
    done: int | None = None,
    total: int | None = None,
    message: str | None = None,
) -> None:
    """Report progress: a ``fraction`` in [0, 1], or ``done`` out of ``total``; shown by status."""
    channel = _need().channel
    report: dict[str, Any] = {}
    if fraction is not None:
        report["fraction"] = max(0.0, min(1.0, float(fraction)))
    if done is not None:
        report["done"] = int(done)
    if total is not None:
        report["total"] = int(total)
    if message is not None:
        report["message"] = str(message)
    channel.send("progress", report)


class Namespace:
    """The job's shared key-value namespace; every method is one atomic daemon operation."""

    def _op(self, op: str, **args: Any) -> Any:
        return _need().channel.request("ns", {"op": op, **args})

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self._op("get", key=key, default=default)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (msgpack-able)."""
        self._op("set", key=key, value=value)

    def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add ``by`` to the number at ``key`` (missing counts as 0); returns the new value."""
        result: int | float = self._op("incr", key=key, by=by)
        return result

    def append(self, key: str, value: Any) -> int:
        """Append to the list at ``key`` (missing counts as empty); returns the new length."""
        result: int = self._op("append", key=key, value=value)
        return result

    def cas(self, key: str, expected: Any, value: Any) -> bool:
        """Set ``key`` to ``value`` only if it currently equals ``expected`` (missing is None)."""
        return bool(self._op("cas", key=key, expected=expected, value=value))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return bool(self._op("delete", key=key))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the whole namespace."""
        result: dict[str, Any] = self._op("snapshot")
        return result


_namespace = Namespace()


def namespace() -> Namespace:
    """The running task's job namespace."""
    _need()
    return _namespace

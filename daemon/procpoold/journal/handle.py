"""A handle on one attempt's log, for tools and tests that write an attempt's records one by one.

The daemon's scheduler does not make one per attempt: it calls the sink's
:meth:`~procpoold.journal.sink.LogSink.started`, :meth:`~procpoold.journal.sink.LogSink.event`
and :meth:`~procpoold.journal.sink.LogSink.line` with the integers it already has. A
:class:`TaskLog` holds those integers for one attempt and passes them on, with the code location
of its caller as the events' site.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from procpoold.journal import encoding as enc

if TYPE_CHECKING:
    from procpoold.journal.sink import LogSink


class TaskLog:
    """The log of one attempt of one task (made by :meth:`LogSink.task_log`)."""

    __slots__ = ("_sink", "attempt", "index", "job", "job_id", "pid", "task_id")

    def __init__(self, sink: LogSink, job_id: str, job: int, index: int, task_id: str, attempt: int) -> None:
        self._sink = sink
        self.job_id = job_id
        self.job = job
        self.index = index
        self.task_id = task_id
        self.attempt = attempt
        self.pid = 0

    @property
    def key(self) -> int:
        """The task's number in the journal (``job << 32 | index``): whose records a drop counts against."""
        return (self.job << 32) | self.index

    def set_worker_pid(self, pid: int | None) -> None:
        """The pid of the process running the attempt (a pool worker or the command)."""
        if pid is not None:
            self.pid = pid

    def event(self, code: int, text: str = "") -> None:
        """A lifecycle event of the attempt (:data:`procpoold.journal.encoding.STARTED`...), with the
        caller's code location."""
        frame = sys._getframe(1)
        site = self._sink.site(frame.f_code, frame.f_lineno)
        if code == enc.STARTED:
            self._sink.started(self.job, self.index, self.attempt, self.pid, site)
        else:
            self._sink.event(code, self.job, self.index, self.attempt, self.pid, text, site)

    def line(self, stream: str, level: int, message: str, fields: Mapping[str, str] | None = None) -> bool:
        """One output line or log record; returns False when the producer should pause (``block``)."""
        return self._sink.line(self.job_id, self.task_id, self.job, self.index, self.attempt, self.pid,
                               stream, level, message, fields)

    def lines(self, stream: str, level: int, messages: Iterable[str]) -> bool:
        ok = True
        for message in messages:
            ok = self.line(stream, level, message) and ok
        return ok

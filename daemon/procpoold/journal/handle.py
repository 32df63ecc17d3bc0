"""The task-facing handle: where one attempt's output lines and lifecycle events go.

A :class:`TaskLog` holds integer keys, not fields: the task's names travel to the forwarder once
(:meth:`LogSink.task_log <procpoold.journal.sink.LogSink.task_log>` sends them with the task's
first attempt), and each line or event is one packed record of a few dozen bytes plus its text.
Each record is also kept in the daemon's tail of the task (``procctl logs`` without journald).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from procpoold.journal import encoding as enc
from procpoold.logstore import Record

if TYPE_CHECKING:
    from procpoold.journal.sink import LogSink

_LINE = enc.LINE.pack
_EVENT = enc.EVENT.pack
_STREAMS = enc.STREAM_CODES
_PRIORITIES = enc.PRIORITIES
_new = tuple.__new__


class TaskLog:
    """The log of one attempt of one task (made by :meth:`LogSink.task_log`, on the loop's thread)."""

    __slots__ = ("_sink", "_tail", "attempt", "job_id", "key", "name", "pid", "task_id")

    def __init__(self, sink: LogSink, key: int, job_id: str, task_id: str, name: str, attempt: int,
                 tail: deque[Record]) -> None:
        self._sink = sink
        self.key = key
        self.job_id = job_id
        self.task_id = task_id
        self.name = name
        self.attempt = attempt
        self.pid = 0
        self._tail = tail

    def set_worker_pid(self, pid: int | None) -> None:
        """The pid of the process running the attempt (a pool worker or the command)."""
        if pid is not None:
            self.pid = pid

    def event(self, code: int, text: str = "") -> None:
        """A lifecycle event of the attempt (:data:`procpoold.journal.encoding.STARTED`...).

        The forwarder writes it with the event's MESSAGE_ID and message, the attempt's fields,
        and the code location of the caller (sent once per call site).
        """
        sink = self._sink
        frame = sys._getframe(1)
        site = sink.site(frame.f_code, frame.f_lineno)
        prio = enc.EVENTS[code][1]
        seq = sink.seq = sink.seq + 1
        now = time.time()
        message = enc.event_message(code, self.name, self.attempt, text)
        self._tail.append(_new(Record, (seq, now, prio, "daemon", self.attempt, self.task_id, message)))
        data = text.encode("utf-8", "replace")
        sink.put(_EVENT(enc.K_EVENT, code, prio, self.key, self.attempt, self.pid, site, seq, now) + data,
                 seq, self.key, True)

    def line(self, stream: str, level: int, message: str, fields: Mapping[str, str] | None = None) -> bool:
        """One output line or log record; returns False when the producer should pause (``block``)."""
        if len(message) > enc.MAX_MESSAGE:
            ok = True
            for start in range(0, len(message), enc.MAX_MESSAGE):
                ok = self.line(stream, level, message[start : start + enc.MAX_MESSAGE], fields) and ok
            return ok
        sink = self._sink
        prio = _PRIORITIES.get(level)
        if prio is None:
            prio = enc.priority(level)
        seq = sink.seq = sink.seq + 1
        now = time.time()
        self._tail.append(_new(Record, (seq, now, prio, stream, self.attempt, self.task_id, message)))
        data = message.encode("utf-8", "replace")
        rec = _LINE(enc.K_LINE, prio, _STREAMS.get(stream, 0), self.key, self.attempt, self.pid, len(data),
                    seq, now) + data
        if fields:
            rec += enc.encode_fields((k, str(v)) for k, v in fields.items())
        return sink.put(rec, seq, self.key, False)

    def lines(self, stream: str, level: int, messages: Iterable[str]) -> bool:
        ok = True
        for message in messages:
            ok = self.line(stream, level, message) and ok
        return ok

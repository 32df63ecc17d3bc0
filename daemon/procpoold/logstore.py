"""The daemon's own bounded memory of recent log lines, per task (and per job for job-level records).

``procctl logs`` falls back to it when the client cannot read the journal, and reads it when the
daemon writes to neither journald nor job log files (``log_job_max_bytes = 0``; with files, see
:mod:`procpoold.logfiles`, the records of jobs go there instead and this tail keeps none). Every
record that carries a job id goes here, whatever happens to it downstream: a record the log queue
drops (policy ``drop``) is still in this tail.

Memory is bounded twice: at most ``lines_per_owner`` records per task (older ones fall off), and at
most ``max_owners`` tasks and jobs (the oldest are forgotten first).

Attempt lifecycle events are kept as the journal packs them, one batch per loop iteration (the
integers and texts of :func:`procpoold.journal.encoding.events_record`), with each job's task
names: a record is worded only when ``procctl logs`` asks for it. At most ``max_events`` events
are kept (the oldest batches go first), and the names of at most ``max_owners`` jobs.

Appends happen on the loop thread (task output) and on whatever thread logs a lifecycle record, so
creating and forgetting owners takes a lock; appending to an owner's deque is atomic in CPython.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple

#: integers per lifecycle item (see procpoold.journal.encoding.ITEM_INTS; not imported: the
#: journal package imports this module)
_ITEM = 8


class Record(NamedTuple):
    """One remembered line. ``seq`` orders records across tasks and is the ``--follow`` cursor."""

    seq: int
    ts: float  # time.time() when the daemon received it
    priority: int  # syslog priority, 0 (emerg) .. 7 (debug)
    stream: str  # "log", "stdout", "stderr", or "daemon" for the daemon's own records
    attempt: int  # 0 for records that belong to no attempt
    task_id: str | None
    message: str

    def to_wire(self) -> dict[str, object]:
        return {"seq": self.seq, "ts": self.ts, "priority": self.priority, "stream": self.stream,
                "attempt": self.attempt, "task_id": self.task_id, "message": self.message}


class _Owner:
    __slots__ = ("evicted", "job_id", "key", "lines")

    def __init__(self, key: str, job_id: str, maxlen: int) -> None:
        self.key = key
        self.job_id = job_id
        self.lines: deque[Record] = deque(maxlen=maxlen)
        self.evicted = False


class LogStore:
    """Recent records per task id (or job id, for records of a job that name no task)."""

    def __init__(self, lines_per_owner: int = 200, max_owners: int = 2000, max_events: int = 200_000) -> None:
        self.lines_per_owner = lines_per_owner
        self.max_owners = max_owners
        self.max_events = max_events
        #: lifecycle batches: (seq of the first item, time, items' integers, items' texts)
        self._events: deque[tuple[int, float, Sequence[int], list[bytes]]] = deque()
        self._event_count = 0
        #: job number -> the seq of the last batch that holds one of its events
        self._event_last: dict[int, int] = {}
        #: job number -> its tasks' names (the sink's list: names added later show up)
        self._names: OrderedDict[int, list[str]] = OrderedDict()
        self._owners: OrderedDict[str, _Owner] = OrderedDict()
        #: job id -> its owners' keys, in creation order (a dict: an evicted key leaves in O(1))
        self._jobs: dict[str, dict[str, None]] = {}
        self._lock = threading.Lock()

    def owner(self, key: str, job_id: str) -> deque[Record]:
        """The deque that keeps ``key``'s records (created on first use); append Records to it."""
        found = self._owners.get(key)
        if found is not None:
            return found.lines
        with self._lock:
            found = self._owners.get(key)
            if found is None:
                found = _Owner(key, job_id, self.lines_per_owner)
                self._owners[key] = found
                self._jobs.setdefault(job_id, {})[key] = None
                while len(self._owners) > self.max_owners:
                    _, old = self._owners.popitem(last=False)
                    old.evicted = True
                    keys = self._jobs.get(old.job_id)
                    if keys is not None:
                        del keys[old.key]
                        if not keys:
                            del self._jobs[old.job_id]
            return found.lines

    def add(self, key: str, job_id: str, record: Record) -> None:
        self.owner(key, job_id).append(record)

    def name_job(self, job_id: str, names: list[str]) -> None:
        """The names of a job's tasks, by index (for the words of its lifecycle records)."""
        with self._lock:
            self._names[int(job_id)] = names
            while len(self._names) > self.max_owners:
                self._names.popitem(last=False)

    def add_events(self, first: int, ts: float, items: Sequence[int], texts: list[bytes]) -> None:
        """One loop iteration's lifecycle events, as the journal packed them (kept, not copied)."""
        with self._lock:
            self._events.append((first, ts, items, texts))
            self._event_count += len(texts)
            last = first + len(texts) - 1
            for job in set(items[2::_ITEM]):
                self._event_last[job] = last
            while self._event_count > self.max_events and len(self._events) > 1:
                self._event_count -= len(self._events.popleft()[3])

    def _event_records(self, job_id: str, task_id: str | None, after: int) -> list[Record]:
        """The job's (or task's) lifecycle records after ``after``, worded now."""
        if not job_id.isdigit():
            return []
        job = int(job_id)
        if self._event_last.get(job, 0) <= after:
            return []
        from procpoold.journal.encoding import EVENTS, event_message

        task = int(task_id.rpartition(".")[2]) if task_id is not None else -1
        names = self._names.get(job, [])
        out: list[Record] = []
        for first, ts, items, texts in list(self._events):
            if first + len(texts) - 1 <= after:
                continue
            for n, i in enumerate(range(0, len(items), _ITEM)):
                if items[i + 2] != job or first + n <= after:
                    continue
                code, index, count, attempt = items[i], items[i + 3], items[i + 4], items[i + 5]
                if task >= 0 and not index <= task < index + count:
                    continue
                prio = EVENTS.get(code, ("", 6))[1]
                text = texts[n].decode("utf-8", "replace") if texts[n] else ""
                for t in ((task,) if task >= 0 else range(index, index + count)):
                    name = names[t] if t < len(names) else f"#{t}"
                    out.append(Record(first + n, ts, prio, "daemon", attempt, f"{job_id}.{t}",
                                      event_message(code, name, attempt, text)))
        return out

    def records(self, job_id: str, task_id: str | None = None, attempt: int | None = None, after: int = 0,
                limit: int | None = None) -> list[Record]:
        """The remembered records of a job (all its tasks, merged in order) or of one task."""
        keys = [task_id] if task_id is not None else list(self._jobs.get(job_id, ()))
        sources = [list(o.lines) for k in keys if (o := self._owners.get(k)) is not None]
        sources.append(self._event_records(job_id, task_id, after))
        merged = heapq.merge(*sources)  # each deque is in seq order already
        out = [r for r in merged if r.seq > after and (attempt is None or r.attempt == attempt)]
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def last_seq(self, job_id: str, task_id: str | None = None) -> int:
        """The seq of the newest record of the job or task (0 if none is remembered)."""
        keys = [task_id] if task_id is not None else list(self._jobs.get(job_id, ()))
        best = self._event_last.get(int(job_id), 0) if job_id.isdigit() else 0
        for key in keys:
            o = self._owners.get(key)
            if o is not None and o.lines:
                best = max(best, o.lines[-1].seq)
        return best

    def tail(self, task_id: str, lines: int = 20) -> list[str]:
        """The last ``lines`` messages of a task (its output and lifecycle records)."""
        return [r.message for r in self.records(task_id.rpartition(".")[0], task_id, limit=lines)]

    def forget_job(self, job_id: str) -> None:
        """Drop everything remembered about a job (when it is removed from the history)."""
        with self._lock:
            if job_id.isdigit():
                self._names.pop(int(job_id), None)
                self._event_last.pop(int(job_id), None)
            for key in self._jobs.pop(job_id, {}):
                o = self._owners.pop(key, None)
                if o is not None:
                    o.evicted = True

    def truncated(self, job_id: str, task_id: str | None = None) -> bool:
        """True when older records of the job or task have fallen off the tail."""
        keys = [task_id] if task_id is not None else list(self._jobs.get(job_id, ()))
        return any((o := self._owners.get(k)) is not None and len(o.lines) == o.lines.maxlen for k in keys)

    def __len__(self) -> int:
        return sum(len(o.lines) for o in list(self._owners.values()))

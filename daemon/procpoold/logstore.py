"""The daemon's own bounded memory of recent log lines, per task (and per job for job-level records).

``procctl logs`` reads it when the daemon does not write to journald (a terminal, the tests), and
``procctl logs`` falls back to it when the client cannot read the journal. Every record that carries a
job id goes here, whatever happens to it downstream: a record the log queue drops (policy ``drop``) is
still in this tail.

Memory is bounded twice: at most ``lines_per_owner`` records per task (older ones fall off), and at
most ``max_owners`` tasks and jobs (the oldest are forgotten first).

Appends happen on the loop thread (task output) and on whatever thread logs a lifecycle record, so
creating and forgetting owners takes a lock; appending to an owner's deque is atomic in CPython.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from typing import NamedTuple


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

    def __init__(self, lines_per_owner: int = 200, max_owners: int = 2000) -> None:
        self.lines_per_owner = lines_per_owner
        self.max_owners = max_owners
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

    def records(self, job_id: str, task_id: str | None = None, attempt: int | None = None, after: int = 0,
                limit: int | None = None) -> list[Record]:
        """The remembered records of a job (all its tasks, merged in order) or of one task."""
        keys = [task_id] if task_id is not None else list(self._jobs.get(job_id, ()))
        sources = [list(o.lines) for k in keys if (o := self._owners.get(k)) is not None]
        merged = heapq.merge(*sources)  # each deque is in seq order already
        out = [r for r in merged if r.seq > after and (attempt is None or r.attempt == attempt)]
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def last_seq(self, job_id: str, task_id: str | None = None) -> int:
        """The seq of the newest record of the job or task (0 if none is remembered)."""
        keys = [task_id] if task_id is not None else list(self._jobs.get(job_id, ()))
        best = 0
        for key in keys:
            o = self._owners.get(key)
            if o is not None and o.lines:
                best = max(best, o.lines[-1].seq)
        return best

    def tail(self, task_id: str, lines: int = 20) -> list[str]:
        """The last ``lines`` messages of a task (what ``procctl status`` shows for a failed one)."""
        o = self._owners.get(task_id)
        if o is None:
            return []
        return [r.message for r in list(o.lines)[-lines:]]

    def forget_job(self, job_id: str) -> None:
        """Drop everything remembered about a job (when it is removed from the history)."""
        with self._lock:
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

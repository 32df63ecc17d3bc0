"""What changed in a job's tasks, for the status polls that ask only for that (``changes_since``).

A job's :class:`ChangeLog` starts when a client first asks for its changes (:func:`track`); until
then a task's move costs nothing more than a None check. Once started, every move of a task (and
every progress report) appends the task's index to the log: the position of an entry is its
*sequence number*, and a client's cursor names the log (its ``epoch``, drawn at random when the
log starts, so a cursor from before a restart of the daemon, or from another copy of a finished
job read back from the store, is told apart) and a sequence number in it. The tasks changed since
a cursor are the distinct indices in the log from there on: O(changes since), never a walk of
every task.

The log is bounded: past ``2 * max(tasks, MIN_KEPT)`` entries its older half goes. A cursor from
before what is left is *too old* and gets a full answer (so a poll costs at most what a full
answer would, and memory stays at 4 to 8 bytes per task of a watched job).
"""

from __future__ import annotations

import secrets
from array import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from procpoold.core.jobs import Job

#: The log of a small job keeps at least twice this many entries before dropping its older half.
MIN_KEPT = 1024


class ChangeLog:
    """The indices of a job's tasks in the order they changed (see the module docstring)."""

    __slots__ = ("base", "cap", "entries", "epoch")

    def __init__(self, tasks: int) -> None:
        #: names this log in cursors (52 random bits: a cursor of another log matches by chance
        #: about once in 4.5e15)
        self.epoch = secrets.randbits(52)
        #: the sequence number of entries[0] (entries before it were dropped)
        self.base = 0
        self.entries = array("I")
        self.cap = 2 * max(tasks, MIN_KEPT)

    @property
    def seq(self) -> int:
        """The sequence number the next change gets: a cursor taken now sees every later change."""
        return self.base + len(self.entries)

    def note(self, index: int) -> None:
        """Task ``index`` changed (O(1) amortized: the older half is dropped once in cap/2 calls)."""
        entries = self.entries
        entries.append(index)
        if len(entries) > self.cap:
            drop = len(entries) // 2
            del entries[:drop]
            self.base += drop

    def covers(self, seq: int) -> bool:
        """Whether the changes since ``seq`` are all still in the log."""
        return self.base <= seq <= self.base + len(self.entries)

    def since(self, seq: int) -> list[int]:
        """The distinct tasks changed at or after ``seq`` (it must be covered), in the order of
        their first change since then; O(changes since ``seq``), made in C."""
        return list(dict.fromkeys(self.entries[seq - self.base :]))

    def first_change(self, index: int, seq: int) -> int:
        """The sequence number of task ``index``'s first change at or after ``seq`` (it has one)."""
        return self.base + self.entries.index(index, seq - self.base)


def track(job: Job) -> ChangeLog:
    """The job's change log, started now if nobody asked before (O(tasks) once per job)."""
    log = job.changes
    if log is None:
        log = job.changes = ChangeLog(len(job.tasks))
        for t in job.tasks:
            t.changes = log
    return log

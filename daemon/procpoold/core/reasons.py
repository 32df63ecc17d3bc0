"""Why a task is in its state: a compact reason code and argument per task, noted by the job as it
decides (``procctl explain`` reads them; see :mod:`procpoold.scheduler.explain`).

Code 0 (:data:`ORDINARY`) is the ordinary cause of each state, so the common path writes nothing:
a pending task waits for its dependencies, a ready one for a free slot, a running one runs, a
completed one completed. Every other cause is noted where the core makes the decision (a retry
delay, an interruption, a skip because an upstream task failed, a cancel), with one integer
argument: the attempt number, or the index of the task whose failure decided it. A code is read
together with the task's state (each code belongs to the states listed below); a code noted
before a later ordinary transition is ignored by the reader when the state no longer matches.

A job that never needs one holds no table (``Job.reasons`` is None); the first note makes it:
one byte and one 32-bit integer per task, no Python object per task. A new run starts without one.
"""

from __future__ import annotations

from array import array

#: the state's ordinary cause (nothing noted)
ORDINARY = 0
#: pending: its attempt ``arg`` failed or timed out and it waits for its retry delay (``retry_at``)
RETRY_WAIT = 1
#: ready: its retry delay after attempt ``arg`` ran out
RETRY_DUE = 2
#: ready: the daemon lost its running attempt ``arg`` (a worker died or was retired): it runs
#: again without using a retry
REQUEUED = 3
#: pending (held job) or ready: attempt ``arg`` was interrupted by a restart of the daemon
INTERRUPTED = 4
#: skipped: task ``arg`` (an index of the job) ended unsuccessfully, and this task came after it
UPSTREAM = 5
#: cancelled: the job stopped (``on_failure: stop``) when task ``arg`` ended unsuccessfully
STOPPED = 6
#: cancelled (or skipped, a job cancelled while it waited for its prerequisites): by request
CANCELLED = 7
#: skipped: a prerequisite of the job (``after``) ended unsuccessfully, or went (the job's ``reason``)
AFTER_FAILED = 8

#: The codes' names, as ``explain`` replies carry them (index: code).
NAMES = (
    "ordinary",
    "retry_wait",
    "retry_due",
    "requeued",
    "interrupted",
    "upstream",
    "stopped",
    "cancelled",
    "after_failed",
)

#: The task states each code explains (a code read with another state is a stale one).
STATES: dict[int, frozenset[str]] = {
    RETRY_WAIT: frozenset({"pending"}),
    RETRY_DUE: frozenset({"ready"}),
    REQUEUED: frozenset({"ready"}),
    INTERRUPTED: frozenset({"pending", "ready"}),
    UPSTREAM: frozenset({"skipped"}),
    STOPPED: frozenset({"cancelled"}),
    CANCELLED: frozenset({"cancelled", "skipped"}),
    AFTER_FAILED: frozenset({"skipped"}),
}


class Reasons:
    """The noted reasons of one job's tasks: ``codes[i]`` and ``args[i]`` for task ``i``."""

    __slots__ = ("args", "codes")

    def __init__(self, tasks: int) -> None:
        self.codes = bytearray(tasks)
        self.args = array("i", bytes(4 * tasks))

    def note(self, index: int, code: int, arg: int = 0) -> None:
        self.codes[index] = code
        self.args[index] = arg

    def get(self, index: int, state: str) -> tuple[int, int]:
        """Task ``index``'s code and argument, or ``(ORDINARY, 0)`` if what was noted does not
        explain ``state`` (the task moved on along an ordinary edge since)."""
        code = self.codes[index]
        if code and state in STATES[code]:
            return code, self.args[index]
        return ORDINARY, 0

    def dump(self, index: int, state: str) -> list[int] | None:
        """What the state store keeps of task ``index`` in ``state`` (None: nothing that
        explains that state was noted)."""
        code, arg = self.get(index, state)
        return [code, arg] if code else None

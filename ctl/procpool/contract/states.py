"""Task and job states, their sets and the legal transitions: the one definition both sides use.

Leaf module (imports only typing). The daemon's ``procpoold.core.states`` re-exports these names;
the client and ``procctl`` use them instead of spelling a state by hand. A task state's *code* is
its position in :data:`TASK_STATES`: the columnar status (see :mod:`procpool.contract.status`)
sends one code byte per task, so the order of that tuple is part of the wire format (format 2);
new states are only ever appended.
"""

from __future__ import annotations

from typing import Final, Literal

TaskState = Literal["pending", "ready", "running", "completed", "failed", "timeout", "cancelled", "skipped"]
JobState = Literal[
    "pending", "running", "held", "completed", "failed", "cancelled", "queued", "scheduled", "paused"
]

# Each state's name once. Job and task states share the names they have in common.
PENDING: Final = "pending"
READY: Final = "ready"
QUEUED: Final = "queued"
RUNNING: Final = "running"
HELD: Final = "held"
SCHEDULED: Final = "scheduled"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
TIMEOUT: Final = "timeout"
CANCELLED: Final = "cancelled"
SKIPPED: Final = "skipped"

#: Every task state; a state's index is its code in the columnar status (append only).
TASK_STATES: tuple[TaskState, ...] = (PENDING, READY, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, SKIPPED)
#: Every job state. ``pending``: accepted, waiting for its ``after`` prerequisites; ``queued``: its
#: run began but none of its attempts has started yet; ``running``: an attempt started; ``held``:
#: parked after a restart until ``resume``; ``scheduled``: waiting for the start time of its next
#: run (a job's ``schedule`` or ``every``); ``paused``: ``procctl pause`` keeps it from starting
#: anything new until ``resume`` (its running attempts finish); then one of the final states.
JOB_STATES: tuple[JobState, ...] = (
    PENDING, QUEUED, RUNNING, HELD, COMPLETED, FAILED, CANCELLED, SCHEDULED, PAUSED
)
#: Job states of a job whose run began and has not ended (it counts against the queue's limits).
ACTIVE_JOB_STATES: frozenset[str] = frozenset({QUEUED, RUNNING, HELD, PAUSED})
#: Code of each task state in the columnar status (the inverse of TASK_STATES).
TASK_STATE_CODES: dict[str, int] = {state: code for code, state in enumerate(TASK_STATES)}

FINAL_TASK_STATES: frozenset[str] = frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED, SKIPPED})
FINAL_JOB_STATES: frozenset[str] = frozenset({COMPLETED, FAILED, CANCELLED})
#: Final states that doom whatever must come after the task.
UNSUCCESSFUL: frozenset[str] = frozenset({FAILED, TIMEOUT, CANCELLED, SKIPPED})
#: Task states whose output tail a status shows (the task ran and did not complete).
SHOWS_TAIL: frozenset[str] = frozenset({FAILED, TIMEOUT})

# Every legal edge. pending -> ready when the task's predecessors completed (or a retry delay ran out);
# ready -> running when dispatched; running -> pending when an attempt failed and a retry is due.
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    # pending/ready -> failed: the daemon could not run the task (a retry that could not be
    # scheduled: see Scheduler._retry); the error says why.
    PENDING: frozenset({READY, CANCELLED, SKIPPED, FAILED}),
    READY: frozenset({RUNNING, CANCELLED, SKIPPED, FAILED}),
    RUNNING: frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED, PENDING}),
    COMPLETED: frozenset({PENDING}),  # only when a repeat run resets the tree
    FAILED: frozenset({PENDING}),
    TIMEOUT: frozenset({PENDING}),
    CANCELLED: frozenset({PENDING}),
    SKIPPED: frozenset({PENDING}),
}

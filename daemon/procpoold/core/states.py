"""Task and job states and the legal transitions between them (leaf module)."""

from __future__ import annotations

from typing import Literal

TaskState = Literal["pending", "ready", "running", "completed", "failed", "timeout", "cancelled", "skipped"]
JobState = Literal["pending", "running", "held", "completed", "failed", "cancelled"]

TASK_STATES: tuple[TaskState, ...] = (
    "pending",
    "ready",
    "running",
    "completed",
    "failed",
    "timeout",
    "cancelled",
    "skipped",
)
JOB_STATES: tuple[JobState, ...] = ("pending", "running", "held", "completed", "failed", "cancelled")
FINAL_TASK_STATES: frozenset[str] = frozenset({"completed", "failed", "timeout", "cancelled", "skipped"})
FINAL_JOB_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: Final states that doom whatever must come after the task.
UNSUCCESSFUL: frozenset[str] = frozenset({"failed", "timeout", "cancelled", "skipped"})

# Every legal edge. pending -> ready when the task's predecessors completed (or a retry delay ran out);
# ready -> running when dispatched; running -> pending when an attempt failed and a retry is due.
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    # pending/ready -> failed: the daemon could not run the task (a retry that could not be
    # scheduled: see Scheduler._retry); the error says why.
    "pending": frozenset({"ready", "cancelled", "skipped", "failed"}),
    "ready": frozenset({"running", "cancelled", "skipped", "failed"}),
    "running": frozenset({"completed", "failed", "timeout", "cancelled", "pending"}),
    "completed": frozenset({"pending"}),  # only when a repeat run resets the tree
    "failed": frozenset({"pending"}),
    "timeout": frozenset({"pending"}),
    "cancelled": frozenset({"pending"}),
    "skipped": frozenset({"pending"}),
}


class IllegalTransition(RuntimeError):
    """A bug: a task was moved along an edge that does not exist."""

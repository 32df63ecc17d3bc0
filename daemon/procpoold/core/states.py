"""Task and job states and the legal transitions between them.

The names, sets and edges are defined once in :mod:`procpool.contract.states` (the client needs
them too) and re-exported here for the daemon; only the daemon's own error type lives here.
"""

from __future__ import annotations

from procpool.contract.states import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    JOB_STATES,
    SHOWS_TAIL,
    TASK_STATE_CODES,
    TASK_STATES,
    TASK_TRANSITIONS,
    UNSUCCESSFUL,
    JobState,
    TaskState,
)

__all__ = [
    "ACTIVE_JOB_STATES",
    "FINAL_JOB_STATES",
    "FINAL_TASK_STATES",
    "JOB_STATES",
    "SHOWS_TAIL",
    "TASK_STATES",
    "TASK_STATE_CODES",
    "TASK_TRANSITIONS",
    "UNSUCCESSFUL",
    "IllegalTransition",
    "JobState",
    "TaskState",
]


class IllegalTransition(RuntimeError):
    """A bug: a task was moved along an edge that does not exist."""

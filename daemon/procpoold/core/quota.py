"""Admission limits on queued work: tasks of unfinished jobs, daemon-wide and per submitting user.

Pure bookkeeping, no I/O; the scheduler (on the loop's thread) asks :meth:`TaskQuota.admit` before
it accepts a job and calls :meth:`TaskQuota.release` once the job has finished. A job's tasks
count from its acceptance until the job finishes (a repeating job counts once, for all its runs),
so the check costs O(1) per submit and nothing per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from procpool.contract.errors import ErrorCode, ProcpoolError


@dataclass(slots=True)
class TaskQuota:
    """Counts of the tasks of unfinished jobs; limits of 0 or None mean "no limit"."""

    max_queued_tasks: int | None = None
    max_user_tasks: int | None = None
    queued: int = 0
    by_user: dict[int | None, int] = field(default_factory=dict)
    #: job id -> (submitter uid, tasks counted): what release() gives back, at most once
    held: dict[str, tuple[int | None, int]] = field(default_factory=dict)

    def check(self, uid: int | None, tasks: int) -> None:
        """Raise ``limit_exceeded`` if a job of ``tasks`` tasks from ``uid`` would pass a limit."""
        limit = self.max_queued_tasks
        if limit and self.queued + tasks > limit:
            raise ProcpoolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"queue full: {self.queued} tasks queued, max_queued_tasks = {limit}"
                + (f" (this job has {tasks})" if tasks > 1 else ""),
                "submit again once jobs have finished, or ask an administrator to raise max_queued_tasks",
            )
        limit = self.max_user_tasks
        mine = self.by_user.get(uid, 0)
        if limit and uid is not None and mine + tasks > limit:
            raise ProcpoolError(
                ErrorCode.LIMIT_EXCEEDED,
                f"queue full for uid {uid}: {mine} tasks queued, max_user_tasks = {limit}"
                + (f" (this job has {tasks})" if tasks > 1 else ""),
                "submit again once your jobs have finished, or ask an administrator to raise max_user_tasks",
            )

    def hold(self, job_id: str, uid: int | None, tasks: int) -> None:
        """Count an accepted (or recovered) unfinished job."""
        if job_id in self.held:
            return
        self.held[job_id] = (uid, tasks)
        self.queued += tasks
        self.by_user[uid] = self.by_user.get(uid, 0) + tasks

    def release(self, job_id: str) -> None:
        """The job finished (or was removed): its tasks no longer count. Safe to call twice."""
        entry = self.held.pop(job_id, None)
        if entry is None:
            return
        uid, tasks = entry
        self.queued -= tasks
        left = self.by_user.get(uid, 0) - tasks
        if left > 0:
            self.by_user[uid] = left
        else:
            self.by_user.pop(uid, None)

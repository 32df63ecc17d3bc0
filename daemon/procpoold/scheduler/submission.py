"""Submission: accept a job (keys, quota, prerequisites), cancel it, release it when held."""

from __future__ import annotations

import logging
import os
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.tree import JobSpec, TreeError, parse_job
from procpool.contract.words import plural
from procpoold import failures, journal
from procpoold.core import reasons
from procpoold.core.jobs import Job, scoped_key
from procpoold.core.states import FINAL_TASK_STATES
from procpoold.identity import (
    Authority,
    UnknownUser,
    can_switch_users,
    identity_by_name,
    identity_of,
    run_as_uid,
    user_name,
)
from procpoold.pathsafety import check_folders, unsafe_folder
from procpoold.scheduler.state import SchedulerState, _job_row, _user_fields, log


class Submission(SchedulerState):
    """Accepting jobs: validation, idempotency keys, quota, prerequisites; cancel and resume."""

    def submit(
        self, raw: dict[str, Any], uid: int | None = None, after: list[str] | None = None
    ) -> tuple[Job, bool]:
        """Validate and accept a job; returns (job, existing) where existing means a known key.

        Loop thread. Adds the job to ``jobs`` (and ``keys``, the quota, the prerequisite waits), starts
        its run when its prerequisites allow, and commits it (with the write-ahead of its first
        attempts) before returning, so the caller replies only once it is durable. Raises (and changes
        nothing) for a stopping daemon, an invalid tree, a refused user or folder, an unknown
        prerequisite or a full queue. May not block on anything but that commit.
        """
        if not self.accepting:
            raise ProcpoolError(
                ErrorCode.SHUTTING_DOWN,
                "procpoold is stopping and takes no new jobs",
                "submit again once it has restarted",
            )
        spec = parse_job(raw, self.limits)
        self.engines.check_job(spec)  # a task naming an engine this daemon has not is refused now
        run_as = job_user(spec, uid, self.authority)  # raises permission_denied for another user
        unsafe = _unsafe_folder(spec, run_as)
        if unsafe is not None:
            raise TreeError("", unsafe, "use a folder that only its owner (and root) may write")
        key = scoped_key(uid, spec.key)
        if key is not None and key in self.keys:
            known = self._job(self.keys[key])
            if known is not None:
                return known, True
        for ref in after or []:
            self.resolve(ref)  # unknown prerequisites are an error now, not a hang later
        self.quota.check(uid, len(spec.tasks))  # "queue full" before anything is written
        job_id = str(self._next_id)
        self._next_id += 1
        job = Job(job_id, spec, raw, self.clock(), uid, after, run_as)
        job.submitter_name = user_name(uid)
        job.engines = self.engines
        if self.store is not None:
            # Queued here, committed by the flush below, before the caller replies. Tasks get log
            # entries when they first change: a task without any is pending, with no attempts.
            self.store.add_job(
                job_id, key, spec.name, job.state, job.created_at, raw, job.dump(), job.submitter_uid
            )
            self._job_rows[job_id] = _job_row(job)
        self.jobs[job_id] = job
        self.quota.hold(job_id, uid, len(job.tasks))
        if key is not None:
            self.keys[key] = job_id
        self.counters["submitted"] += 1
        self._record(
            logging.INFO,
            f'job {job_id} "{spec.name}" submitted: {plural(len(job.tasks), "task")}',
            {
                "PROCPOOL_JOB_ID": job_id,
                "PROCPOOL_JOB_NAME": spec.name,
                **_user_fields(job),
                "MESSAGE_ID": journal.MessageId.JOB_SUBMITTED,
            },
        )
        self._start_when_prerequisites_allow(job)
        if self._pump_scheduled:
            self._pump()  # now, so the first attempts' write-ahead shares the job's commit
        self.flush()  # durable before the caller replies
        return job, False

    def _start_when_prerequisites_allow(self, job: Job) -> None:
        pending = []
        for ref in job.after:
            try:
                state = self._state_of(ref)
            except ProcpoolError:  # removed while the job waited (a restart finds it so)
                self._apply(job, job.fail_before_start(f'upstream "{ref}" no longer exists', self.clock()))
                return
            if state == "completed":
                continue
            if state in FINAL_TASK_STATES or state in ("failed", "cancelled"):  # finished, unsuccessfully
                self._apply(job, job.fail_before_start(f'upstream "{ref}" {state}', self.clock()))
                return
            # Keyed as _notify names it ("12" or "12.3"), not as given ("12/name", "12.03").
            prerequisite, index = self.resolve(ref)
            pending.append(prerequisite.id if index is None else prerequisite.tasks[index].id)
        if pending:
            for ref in pending:
                self._after.setdefault(ref, []).append(job.id)
            return
        self._apply(job, job.start_run(self.clock()))

    def cancel(self, ref: str, by: int | None = None) -> dict[str, Any]:
        """Cancel a job, or one task of a running job; returns the id and how many attempts stop.
        ``by``: the uid who asked (the reason names them: ``cancelled by alice (uid 1000)``).

        Loop thread. Unfinished tasks end ``cancelled`` (a pending job fails before it starts); their
        queue entries and retry timers go, running attempts are asked to stop (their outcomes arrive
        later through the executor events). Raises ``conflict`` for what already finished, or for a
        task of a job still waiting for its prerequisites. Never waits for an attempt to end.
        """
        job, index = self.resolve(ref)
        if job.finished:
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} already {job.state}")
        now = self.clock()
        reason = failures.cancelled_by(by)
        if index is None:
            if job.state == "pending":  # still waiting for prerequisites: none of its tasks began
                effects = job.fail_before_start(reason, now, reasons.CANCELLED)
                job.cancel_requested = True
            else:
                effects = job.cancel(now, reason=reason)
        else:
            if job.tasks[index].state in FINAL_TASK_STATES:
                raise ProcpoolError(
                    ErrorCode.CONFLICT, f"task {job.tasks[index].id} already {job.tasks[index].state}"
                )
            if job.state == "pending":  # its run resets every task when it starts
                raise ProcpoolError(
                    ErrorCode.CONFLICT,
                    f"job {job.id} waits for its prerequisites: none of its tasks has started",
                    f"cancel the whole job (procctl cancel {job.id}), or the task once the job runs",
                )
            effects = job.cancel(now, [index], reason)
        for ref_ in [(job.id, i) for i in effects.finished_tasks]:
            self._forget_queued(ref_)
        stopping = list(effects.stop)
        self._apply(job, effects)
        log.info(
            "cancel %s: %d running attempt(s) being stopped",
            ref,
            len(stopping),
            extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}},
        )
        return {"id": ref, "stopping": len(stopping)}

    def _prerequisite_done(self, job_id: str) -> None:
        """One of a pending job's prerequisites finished: evaluate them all again."""
        job = self.jobs.get(job_id)
        if job is None or job.state != "pending":
            return
        for refs in self._after.values():
            while job_id in refs:
                refs.remove(job_id)
        self._start_when_prerequisites_allow(job)

    def resume(self, ref: str) -> dict[str, Any]:
        """Release a job held after a restart (on_interrupt: hold).

        Loop thread. Its held tasks become ready and are queued; raises ``conflict`` if it is not held.
        """
        job, _ = self.resolve(ref)
        if job.state != "held":
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} is {job.state}, not held")
        self._apply(job, job.resume())
        return {"id": job.id, "state": job.state}


def job_user(spec: JobSpec, submitter: int | None, authority: Authority) -> int | None:
    """The uid every attempt of a job runs as (None: the daemon's own user); loop thread.

    Without ``"user"`` a job runs as its submitter (when this daemon can switch users). Naming
    yourself changes nothing; naming someone else needs an administrator (root, the daemon's
    user or the ``admin_group``) and a daemon that can switch users. An unknown name is an
    invalid tree (path ``user``); a refusal is ``permission_denied`` naming the rule.
    """
    if spec.user is None:
        return run_as_uid(submitter)
    try:
        target = identity_by_name(spec.user)
    except UnknownUser:
        raise TreeError(
            "user", f'no user named "{spec.user[:64]}"', "give the login name of an existing user"
        ) from None
    if target.uid == submitter:
        return run_as_uid(submitter)
    if not authority.is_admin(submitter):
        raise ProcpoolError(
            ErrorCode.PERMISSION_DENIED,
            f'only root or an administrator may run a job as another user ("user": "{target.name[:64]}")',
            'leave out "user" to run the job as yourself',
        )
    if can_switch_users():
        return target.uid
    if target.uid == os.geteuid():
        return None
    me = identity_of(os.geteuid()).name
    raise ProcpoolError(
        ErrorCode.PERMISSION_DENIED,
        f'procpoold runs as {me} and cannot run jobs as another user ("user": "{target.name[:64]}")',
        "run the job on the system service (root), or leave out \"user\"",
    )

def _unsafe_folder(spec: JobSpec, run_uid: int | None) -> str | None:
    """The first ``python_path`` entry or ``cwd`` (the job's or a task's) that others could fill or swap, as
    ``"<json path>: why"`` (the worker checks again right before using it)."""
    problem = check_folders(spec.python_path, imports=True, owner_uid=run_uid, what="python_path")
    if problem is not None:
        return problem
    why = unsafe_folder(spec.cwd, imports=False) if spec.cwd else None
    if why is not None:
        return f"cwd: {why}"
    for task in spec.tasks:
        if task.cwd:
            why = unsafe_folder(task.cwd, imports=False)
            if why is not None:
                return f"{task.path}.cwd: {why}"
    return None

"""Submission: accept a job (keys, quota, prerequisites, replacing a job of the same key), cancel
it (with a signal and grace of the caller's choosing), stop a repeating one after its run,
release it when held."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import shorten
from procpool.contract.tree import JobSpec, TreeError, parse_job
from procpool.contract.words import plural
from procpoold import failures, journal
from procpoold.core import reasons
from procpoold.core.gates import check_gates
from procpoold.core.jobs import Job, RetryRefused, scoped_key
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
from procpoold.scheduler.queries import _name_matcher
from procpoold.scheduler.state import SchedulerState, _job_row, _user_fields, log

#: Names of the tasks run again that a retry's reply lists (the count is always there).
RETRY_NAMES = 20
#: ``may_change(job)``: whether the peer asking may change (cancel, replace) that job: the access
#: policy's owner rule (procpoold.control.policy.Policy.may_change), given by the caller.
MayChange = Callable[[Job], bool]


class Submission(SchedulerState):
    """Accepting jobs: validation, idempotency keys, quota, prerequisites; cancel and resume."""

    def submit(
        self,
        raw: dict[str, Any],
        uid: int | None = None,
        after: list[str] | None = None,
        replace: MayChange | None = None,
    ) -> tuple[Job, bool]:
        """Validate and accept a job; returns (job, existing) where existing means a known key.

        With ``replace`` (the job must have a ``key``), the unfinished jobs of any submitter with
        the same key are cancelled (reason ``replaced by job N``) and the new job is accepted in
        their place; ``replace(job)`` says whether the submitter may change each (a job it may not
        change refuses the whole submit with ``permission_denied``, before anything changes). A
        key whose jobs have all finished: the new job is accepted all the same.

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
        if spec.gated:
            check_gates(spec, self.gates.limits, self.gates.queues)  # (else it could never start)
        self.engines.check_job(spec)  # a task naming an engine this daemon has not is refused now
        run_as = job_user(spec, uid, self.authority)  # raises permission_denied for another user
        unsafe = _unsafe_folder(spec, run_as)
        if unsafe is not None:
            raise TreeError("", unsafe, "use a folder that only its owner (and root) may write")
        key = scoped_key(uid, spec.key)
        replaced: list[Job] = []
        if replace is not None:
            if spec.key is None:
                raise ProcpoolError(ErrorCode.INVALID_ARGUMENT, "submit: 'replace' needs the job's \"key\"",
                                    'give the job a "key" (procctl --key K): the job it replaces has it too')
            replaced = self._same_key(spec.key, replace)
        elif key is not None and key in self.keys:
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
        for old in replaced:  # (the new job's id names it in their reason)
            stopping = self._cancel_job(old, None, f"replaced by job {job_id}")
            log.info("job %s replaced by job %s (key %s): %d running attempt(s) being stopped",
                     old.id, job_id, spec.key[:64] if spec.key else "", stopping,
                     extra={"journal_fields": {"PROCPOOL_JOB_ID": old.id, **_user_fields(old)}})
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
        self._begin_first_run(job)

    def _same_key(self, key: str, may_change: MayChange) -> list[Job]:
        """The unfinished jobs of any submitter whose key is ``key`` (a walk of the unfinished
        jobs: a replace is rare); raises ``permission_denied`` for one the submitter may not
        change (``may_change`` raises it, naming the job and the rule)."""
        found = [j for j in self.jobs.values() if not j.finished and j.spec.key == key]
        for job in found:
            may_change(job)
        return found

    def cancel(
        self, ref: str, by: int | None = None, signum: int | None = None, grace: float | None = None
    ) -> dict[str, Any]:
        """Cancel a job, or one task of a running job; returns the id and how many attempts stop.
        ``by``: the uid who asked (the reason names them: ``cancelled by alice (uid 1000)``);
        ``signum`` and ``grace``: what stops its running attempts (see :meth:`_cancel_job`).

        Loop thread. Unfinished tasks end ``cancelled`` (a pending job fails before it starts); their
        queue entries and retry timers go, running attempts are asked to stop (their outcomes arrive
        later through the executor events). Raises ``conflict`` for what already finished, or for a
        task of a job still waiting for its prerequisites. Never waits for an attempt to end.
        """
        job, index = self.resolve(ref)
        if job.finished:
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} already {job.state}")
        stopping = self._cancel_job(job, index, failures.cancelled_by(by), signum, grace)
        log.info(
            "cancel %s: %d running attempt(s) being stopped",
            ref,
            stopping,
            extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}},
        )
        return {"id": ref, "stopping": stopping}

    def cancel_many(
        self,
        refs: list[str],
        by: int | None,
        may_change: MayChange,
        signum: int | None = None,
        grace: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Cancel several jobs or tasks (``cancel`` with ``ids``): every reference is resolved and
        checked first (an unknown one is ``not_found``; one the peer may not change refuses the
        whole request: ``may_change`` raises; so does a task of a job waiting for its
        prerequisites: ``conflict``), then each unfinished one is cancelled as by :meth:`cancel`;
        the finished ones are listed with their state. Loop thread."""
        targets = []
        for ref in dict.fromkeys(refs):
            job, index = self.resolve(ref)
            may_change(job)
            if index is not None and job.state == "pending":  # (see cancel)
                raise ProcpoolError(
                    ErrorCode.CONFLICT,
                    f"job {job.id} waits for its prerequisites: none of its tasks has started ({ref})",
                    f"cancel the whole job (procctl cancel {job.id}), or the task once the job runs",
                )
            targets.append((ref, job, index))
        return self._cancel_targets(targets, by, signum, grace, dry_run, 0)

    def cancel_matching(
        self,
        state: str | None,
        name: str | None,
        uid: int | None,
        by: int | None,
        may_change: Callable[[Job], bool],
        signum: int | None = None,
        grace: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Cancel the unfinished jobs that match every filter given (``state``, ``name`` a shell
        pattern, submitter ``uid``; none: every unfinished job), those ``may_change`` allows;
        ``others_left`` counts the others. A walk of the unfinished jobs. Loop thread."""
        named = _name_matcher(name)
        found = [
            j for j in self.jobs.values()
            if not j.finished
            and (state is None or j.state == state)
            and (uid is None or j.submitter_uid == uid)
            and (named is None or named(j.spec.name))
        ]
        allowed = [j for j in found if may_change(j)]
        targets: list[tuple[str, Job, int | None]] = [
            (j.id, j, None) for j in sorted(allowed, key=lambda j: int(j.id))
        ]
        return self._cancel_targets(targets, by, signum, grace, dry_run, len(found) - len(allowed))

    def _cancel_targets(
        self,
        targets: list[tuple[str, Job, int | None]],
        by: int | None,
        signum: int | None,
        grace: float | None,
        dry_run: bool,
        others: int,
    ) -> dict[str, Any]:
        finished = {ref: job.state for ref, job, index in targets if job.finished or (
            index is not None and job.tasks[index].state in FINAL_TASK_STATES)}
        todo = [(ref, job, index) for ref, job, index in targets if ref not in finished]
        if dry_run:
            return {"matched": [ref for ref, _, _ in todo], "finished": finished, "others_left": others}
        reason = failures.cancelled_by(by)
        stopping = 0
        cancelled = []
        for ref, job, index in todo:
            stopping += self._cancel_job(job, index, reason, signum, grace)
            cancelled.append(ref)
        if cancelled:
            log.info("cancel %s: %d running attempt(s) being stopped", ", ".join(cancelled)[:200], stopping)
        return {"cancelled": cancelled, "stopping": stopping, "finished": finished, "others_left": others}

    def _cancel_job(
        self,
        job: Job,
        index: int | None,
        reason: str,
        signum: int | None = None,
        grace: float | None = None,
    ) -> int:
        """Cancel ``job`` (``index`` None) or one of its tasks with ``reason``; returns how many
        running attempts are being stopped. They get ``signum`` (None: SIGTERM), then SIGKILL after
        ``grace`` (None: the task's kill_grace, else its job's, else the engine's). With a signal
        or a grace, the attempts an earlier cancel is stopping get them too (``cancel --kill``
        after a ``cancel`` ends the wait for its grace)."""
        now = self.clock()
        hurried: list[str] = []
        if signum is not None or grace is not None:
            for t in job.tasks if index is None else [job.tasks[index]]:
                attempt = t.running_attempt
                if t.cancel_requested and attempt is not None:
                    hurried.append(attempt.attempt_id)
        if index is None and job.next_run_at is not None:  # waiting for its next run (or paused so)
            effects = self._end_scheduled(job, reason, cancelled=True)
            if job.finished:
                self._touch(job, [])
                self._job_ended(job, now)
        elif index is None:
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
            if job.state in ("pending", "scheduled"):  # its run resets every task when it starts
                waits = "its prerequisites" if job.state == "pending" else "its next run"
                raise ProcpoolError(
                    ErrorCode.CONFLICT,
                    f"job {job.id} waits for {waits}: none of its tasks is running",
                    f"cancel the whole job (procctl cancel {job.id}), or the task once the job runs",
                )
            effects = job.cancel(now, [index], reason)
        for ref_ in [(job.id, i) for i in effects.finished_tasks]:
            self._forget_queued(ref_)
        stopping = [*effects.stop, *hurried]
        effects.stop = []  # (stopped below, with the signal and grace asked for)
        self._apply(job, effects)
        for attempt_id in stopping:
            ref = self.attempts.get(attempt_id)
            if ref is not None:
                spec = job.tasks[ref[1]].spec
                engine = self.engines.route(spec.kind, spec.engine)
                engine.stop_attempt(attempt_id, "cancelled", signum, grace)
        return len(stopping)

    def stop(self, ref: str, by: int | None = None) -> dict[str, Any]:
        """End a repeating job after its current run (``procctl stop``): that run goes on as it
        would, no other starts, and the job ends in the state that run ends in; its reason says
        who stopped it. A node that cycles on its own clock (core.cycles) ends after its current
        cycle (one waiting for its next cycle, at once). Loop thread. Raises ``conflict`` for a
        finished job, a task id, or a job that repeats neither itself nor a node (it ends after
        this run anyway)."""
        job, index = self.resolve(ref)
        if index is not None:
            raise ProcpoolError(ErrorCode.CONFLICT, f"{ref} is a task: only a job repeats",
                                f"procctl stop {job.id} ends the job after its current run")
        if job.finished:
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} already {job.state}")
        # (a scheduled job's run number is that of the run it waits for: stopping it ends it now;
        # a job with a node that cycles on its own clock ends each such node after its cycle)
        cycling = bool(job.spec.cycles)
        if (job.next_run_at is None and job.spec.repeat is not None and job.run >= job.spec.repeat
                and not cycling):
            what = "does not repeat" if job.spec.repeat == 1 else f"is in its last run ({job.run})"
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} {what}: it ends after this run anyway",
                                f"procctl cancel {job.id} stops it now")
        who = failures.cancelled_by(by).removeprefix("cancelled by ")
        if not job.stop_requested:
            job.stop_requested = True
            job.reason = f"stopped by {who}: no run after run {job.run}"
            if job.next_run_at is not None:  # waiting for a run (scheduled, or paused so): it ends now
                job.reason = (f"stopped by {who}: no run after run {job.run - 1}" if job.runs
                              else f"stopped by {who} before its first run")
                self._end_scheduled(job, job.reason, cancelled=False)
                self._touch(job, [])
                if job.finished:
                    self._job_ended(job, self.clock())
                self.flush()
                return {"id": job.id, "run": job.run, "state": job.state}
            if cycling:
                last = job.spec.repeat is not None and job.run >= job.spec.repeat
                job.reason = (f"stopped by {who}: no node cycle after the current ones"
                              + ("" if last else f", no run after run {job.run}"))
                effects = self._stop_cycles(job)  # waiting nodes end now, the others after their cycle
                if effects is not None:
                    self._apply(job, effects)
            self._touch(job, [])
            self.flush()  # durable before the reply: a restart does not start another run
        log.info("stop %s: job %s ends after run %d", ref, job.id, job.run,
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        if cycling:  # (said only of such a job: the reply of any other is as it was)
            return {"id": job.id, "run": job.run, "state": job.state, "cycles": True}
        return {"id": job.id, "run": job.run, "state": job.state}

    def retry(self, ref: str, tasks: list[str] | None = None, by: int | None = None) -> dict[str, Any]:
        """Run a finished job's tasks that did not complete again, as a new run of the same job
        (``procctl retry``): completed tasks keep their results, the namespace carries over.

        ``tasks`` (ids ``12.3``, ``12/name`` or names of the job's tasks or groups) narrows it to
        those tasks and what waits on them that did not complete (Job.retry_plan). Loop thread.
        Refuses (``conflict``) a job that has not finished, a repeating job and a narrowing that
        cannot run; ``not_found`` for a job no longer stored. A job that completed has nothing to
        retry: the reply says so (``again`` 0) and nothing changes. Otherwise the job leaves the
        finished index, counts against the quota again, and is durable (its run, the tasks reset)
        before this returns.
        """
        if not self.accepting:
            raise ProcpoolError(
                ErrorCode.SHUTTING_DOWN, "procpoold is stopping and takes no retries",
                "retry once it has restarted",
            )
        self.flush()  # a job that has just finished is stored as such (and retired) first
        job, index = self.resolve(ref)
        if index is not None:
            raise ProcpoolError(
                ErrorCode.INVALID_ARGUMENT, f"retry takes a job, not the task {shorten(ref)}",
                f"procctl retry {job.id} --task {job.tasks[index].spec.name}",
            )
        if not job.finished:
            raise ProcpoolError(
                ErrorCode.CONFLICT,
                f"job {job.id} is {job.state}: retry is for finished jobs",
                f"wait for it (procctl wait {job.id}), or cancel it (procctl cancel {job.id}) and retry then",
            )
        if job.spec.repeat != 1:
            raise ProcpoolError(
                ErrorCode.CONFLICT,
                f"job {job.id} repeats (repeat: {job.spec.repeat or 'forever'}): retry re-runs one run of "
                "a job that runs once",
                "submit the job again",
            )
        if not job.raw or job.id not in self.finished:  # a stand-in for a job that cannot be restored
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} cannot be restored: it cannot be retried")
        if job.state == "completed" and not tasks:  # nothing to do: say so, change nothing
            return {"id": job.id, "run": job.run, "state": job.state, "again": 0,
                    "kept": len(job.tasks), "tasks": []}
        chosen = None if tasks is None else self._retry_choice(job, tasks)
        try:
            again = job.retry_plan(chosen)
        except RetryRefused as exc:
            raise ProcpoolError(ErrorCode.CONFLICT, str(exc), exc.hint) from None
        self.quota.check(job.submitter_uid, len(job.tasks))  # "queue full" before anything changes
        self._unindex_finished(job.id)
        job.engines = self.engines
        self.jobs[job.id] = job
        self.quota.hold(job.id, job.submitter_uid, len(job.tasks))
        effects = job.retry(self.clock(), again)
        kept = job.kept or {}
        if self.store is not None:
            self.store.reopen(job.id)
            # One snapshot of every task: the log of the earlier runs goes, the run starts afresh.
            self.store.snapshot_tasks(job.id, [job.full_entry(i) for i in range(len(job.tasks))])
            self._touch(job, [])
        self._record(
            logging.INFO,
            f'job {job.id} "{job.spec.name}" retried: run {job.run}, {plural(len(again), "task")} again, '
            f"{len(kept)} kept",
            {
                "PROCPOOL_JOB_ID": job.id,
                "PROCPOOL_JOB_NAME": job.spec.name,
                "PROCPOOL_RUN": str(job.run),
                **_user_fields(job),
                **({"PROCPOOL_BY_UID": str(by)} if by is not None else {}),
                "MESSAGE_ID": journal.MessageId.JOB_RETRIED,
            },
        )
        self._apply(job, effects)
        if self._pump_scheduled:
            self._pump()  # now, so the first attempts' write-ahead shares the commit
        self.flush()  # durable before the caller replies
        return {
            "id": job.id,
            "run": job.run,
            "state": job.state,
            "again": len(again),
            "kept": len(kept),
            "tasks": [job.tasks[i].spec.name for i in again[:RETRY_NAMES]],
        }

    def _retry_choice(self, job: Job, refs: list[str]) -> list[int]:
        """The task indices ``--task`` names: task ids (``12.3``), ``12/name``, or names of the
        job's tasks or groups (a group: its tasks that did not complete)."""
        chosen: list[int] = []
        groups = {g.name: g.index for g in job.spec.groups if g.name}
        for ref in refs:
            if "/" in ref or ("." in ref and ref.partition(".")[0].isdigit()):
                other, index = self.resolve(ref)
                if other is not job or index is None:
                    raise ProcpoolError(
                        ErrorCode.INVALID_ARGUMENT, f"--task {shorten(ref)} is not a task of job {job.id}"
                    )
                chosen.append(index)
            elif ref in job.by_name:
                chosen.append(job.by_name[ref])
            elif ref in groups:
                inside = [
                    t.spec.index for t in job.tasks
                    if t.state != "completed" and job.in_group(t.spec.index, groups[ref])
                ]
                if not inside:
                    raise ProcpoolError(
                        ErrorCode.CONFLICT,
                        f'group "{shorten(ref)[1:-1]}" of job {job.id} completed: nothing in it to retry',
                    )
                chosen += inside
            else:
                raise ProcpoolError(
                    ErrorCode.NOT_FOUND, f"job {job.id} has no task or group named {shorten(ref)}",
                    f"see its tasks with procctl status {job.id} --tasks",
                )
        return chosen

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
        """Release a job held after a restart (on_interrupt: hold) or paused (procctl pause).

        Loop thread. Its held tasks become ready and are queued, or its ready tasks of a pause are
        queued again; ``released`` says which (``held`` or ``paused``). Raises ``conflict`` if it
        is not held or paused.
        """
        job, _ = self.resolve(ref)
        if job.state == "paused":
            return self.unpause(job)
        if job.state != "held":
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} is {job.state}, not held or paused")
        self._apply(job, job.resume())
        self._recover_cycles(job)  # (a held job's waiting nodes wait from its release)
        return {"id": job.id, "state": job.state, "released": "held"}


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

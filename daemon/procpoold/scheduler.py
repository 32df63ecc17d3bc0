"""The scheduler: owns every job, the ready queues and the attempts in flight.

Runs on the daemon's loop thread. It turns job state changes
(:class:`~procpoold.core.jobs.Effects`) into actions: ready tasks go into the
ready queue of their kind (``call`` or ``cmd``); a coalesced *pump* (one per
loop iteration, however many changes happened) hands queued tasks to their
executor while it has free slots, highest priority first; timeouts and retry
delays are loop timers. Executors report back through the
:class:`~procpoold.engines.ExecutorEvents` methods implemented here.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import random
import signal
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import CEILINGS, DEFAULT_LIMITS, Limits, shorten
from procpool.contract.status import View
from procpool.contract.tree import RETRY_DELAY_CAP, JobSpec, TreeError, parse_job
from procpoold import journal
from procpoold.core import namespace, status
from procpoold.core.jobs import DEFAULT_MAX_INTERRUPTIONS, Effects, FinishedJob, Job, TaskRun, scoped_key
from procpoold.core.queue import ReadyQueue
from procpoold.core.quota import TaskQuota
from procpoold.core.states import FINAL_TASK_STATES, JOB_STATES, TaskState
from procpoold.engines import NOT_STARTED, AttemptSpec, Executor, Outcome, Stream, TaskError
from procpoold.identity import (
    Authority,
    Identity,
    UnknownUser,
    can_switch_users,
    identity_by_name,
    identity_of,
    run_as_uid,
    user_name,
)
from procpoold.loop import EventLoop, Timer
from procpoold.pathsafety import check_folders, unsafe_folder
from procpoold.store.protocol import Store, StoredJob

log = logging.getLogger("procpoold.scheduler")
task_log = logging.getLogger("procpoold.task")

Ref = tuple[str, int]  # (job id, task index)
Listener = Callable[[str], None]

#: A job's task log is compacted into a snapshot once it would hold more than
#: 2 x (its number of tasks) + LOG_SLACK entries (see Scheduler.flush).
LOG_SLACK = 64
_RETRIED = journal.MessageId.TASK_RETRIED
#: Finished jobs kept in memory for the next request (just finished, or read back from the store;
#: see Scheduler._job): at most this many, and beyond the newest one at most LOADED_TASKS tasks in all.
LOADED_CACHE = 4
LOADED_TASKS = 100_000
#: A command's pid reaches the store with the next commit, or at most this many seconds after
#: its start (see Scheduler._touch_pid).
PID_FLUSH_DELAY = 1.0
#: What a flush writes for a changed task (see Scheduler._dirty and Job.entry).
_STARTED, _CHANGED, _FULL = 0, 1, 2


def not_found(what: str) -> ProcpoolError:
    hint = "list jobs with 'procctl status'"
    return ProcpoolError(ErrorCode.NOT_FOUND, f"no job or task {shorten(what)}", hint)


class Scheduler:
    """Jobs, queues, attempts; see the module docstring."""

    def __init__(
        self,
        loop: EventLoop,
        executors: dict[str, Executor],
        aging: float = 30.0,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        retention_age: float | None = None,
        retention_count: int | None = None,
        max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS,
        authority: Authority | None = None,
        sink: journal.LogSink | None = None,
    ) -> None:
        self.loop = loop
        #: where task output and attempt events go (None: through ``logging``, as in tests)
        self.journal = sink
        #: interruptions of a task by the daemon (restarts, lost workers) that use none of its retries
        self.max_interruptions = max_interruptions
        #: who may name another user in a job ("user"); see job_user()
        self.authority = authority or Authority()
        self.store = store
        self.retention_age = retention_age
        self.retention_count = retention_count
        #: every finished job, in the order they finished: its small index entry (with a store, the
        #: Job itself is dropped once its final state is committed and read back on demand)
        self.finished: dict[str, FinishedJob] = {}
        #: finished jobs per state (by_state is asked for at every status refresh)
        self._finished_states: dict[str, int] = {}
        #: the same per submitter uid, for retention_count (applied per user)
        self._finished_by_uid: dict[int | None, dict[str, None]] = {}
        #: finished jobs whose Job object goes once the commit in progress holds their final state
        self._retiring: list[str] = []
        #: finished jobs read back from the store lately (a client that polls one does not make
        #: each request read it again); a few at most, so memory does not follow history
        self._loaded: OrderedDict[str, Job] = OrderedDict()
        #: changed since the last flush: job id -> {task index: _STARTED when the task's only
        #: change is an attempt starting, _CHANGED, or _FULL for a full entry}; jobs whose own
        #: fields changed
        self._dirty: dict[str, dict[int, int]] = {}
        self._dirty_jobs: set[str] = set()
        #: the job fields last written per job, to skip rewriting a job row that did not change
        self._job_rows: dict[str, tuple[Any, ...]] = {}
        self._flush_scheduled = False
        self._pid_timer: Timer | None = None
        #: None: a command's pid is written only with another commit (tests of crash recovery).
        self.pid_flush_delay: float | None = PID_FLUSH_DELAY
        self.executors = executors  # by task kind: "call", "cmd"
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, str] = {}
        self._next_id = 1
        self.queues: dict[str, ReadyQueue[Ref]] = {kind: ReadyQueue(aging) for kind in executors}
        self.attempts: dict[str, Ref] = {}
        #: attempt id -> (its log handle, its task); see procpoold.journal.TaskLog
        self._task_logs: dict[str, tuple[journal.TaskLog, TaskRun]] = {}
        self._timeouts: dict[str, Timer] = {}
        self._retry_timers: dict[Ref, Timer] = {}
        self._pump_scheduled = False
        self.accepting = True
        #: called with a job or task id whenever that job or task reaches a final state
        self.listeners: list[Listener] = []
        self._after: dict[str, list[str]] = {}  # prerequisite id -> job ids waiting on it
        self.counters = {"submitted": 0, "attempts": 0, "completed": 0, "failed": 0}
        #: the size limits new jobs are checked against (the daemon's config sets them)
        self.limits: Limits = DEFAULT_LIMITS
        self._ns_sizes: weakref.WeakKeyDictionary[Job, namespace.Sizes] = weakref.WeakKeyDictionary()
        #: tasks of unfinished jobs against max_queued_tasks and max_user_tasks (set by the daemon)
        self.quota = TaskQuota()
        #: tasks in one page of a job's full status (see core.status.full_page)
        self.status_page_size = 1_000

    # -- submission ---------------------------------------------------------------------------

    def submit(
        self, raw: dict[str, Any], uid: int | None = None, after: list[str] | None = None
    ) -> tuple[Job, bool]:
        """Validate and accept a job; returns (job, existing) where existing means a known key."""
        if not self.accepting:
            raise ProcpoolError(
                ErrorCode.SHUTTING_DOWN,
                "procpoold is stopping and takes no new jobs",
                "submit again once it has restarted",
            )
        spec = parse_job(raw, self.limits)
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
            f'job {job_id} "{spec.name}" submitted: {len(job.tasks)} tasks',
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

    def _job(self, job_id: str) -> Job | None:
        """A job by id: in memory while unfinished, else read back from the store (None: unknown)."""
        job = self.jobs.get(job_id)
        if job is not None or job_id not in self.finished or self.store is None:
            return job
        job = self._loaded.get(job_id)
        if job is not None:
            self._loaded.move_to_end(job_id)
            return job
        stored = self.store.load_job(job_id)
        if stored is None:
            return None
        try:
            job = self._restore(stored)
        except Exception:  # marked failed at the start that could not restore it
            try:
                job = self._read_back_unrestorable(stored)
            except Exception as exc:
                log.error("stored job %s cannot be read: %s", job_id, shorten(str(exc)))
                return None
        self._remember_loaded(job)
        return job

    def _remember_loaded(self, job: Job) -> None:
        """Keep a finished Job among the few most recently read (LOADED_CACHE)."""
        self._loaded[job.id] = job
        self._loaded.move_to_end(job.id)
        loaded = self._loaded
        while len(loaded) > 1 and (
            len(loaded) > LOADED_CACHE or sum(len(j.tasks) for j in loaded.values()) > LOADED_TASKS
        ):
            loaded.popitem(last=False)

    def _restore(self, stored: StoredJob) -> Job:
        """A Job as the store holds it (raises what a stored job that cannot be read raises)."""
        if stored.error is not None:
            raise ValueError(stored.error)
        job = Job(
            stored.id,
            parse_job(stored.doc, CEILINGS),  # it was within the limits when accepted
            stored.doc,
            stored.created_at,
            stored.data.get("submitter_uid"),
            stored.data.get("after"),
            stored.data.get("run_as_uid"),
        )
        job.load(stored.data, stored.entries)
        job.submitter_name = user_name(job.submitter_uid)
        return job

    def _state_of(self, ref: str) -> str:
        entry = self.finished.get(ref)
        if entry is not None:  # a finished job: no need to read it back
            return entry.state
        job, index = self.resolve(ref)
        return job.state if index is None else job.tasks[index].state

    def resolve(self, ref: str) -> tuple[Job, int | None]:
        """A job id (``"12"``), a task id (``"12.3"``) or ``"12/taskname"``."""
        if "/" in ref:
            job_id, _, name = ref.partition("/")
            job = self._job(job_id)
            if job is None or name not in job.by_name:
                raise not_found(ref)
            return job, job.by_name[name]
        job_id, dot, index = ref.partition(".")
        job = self._job(job_id)
        if job is None:
            raise not_found(ref)
        if not dot:
            return job, None
        if not index.isdigit() or len(index) > 18 or int(index) >= len(job.tasks):
            raise not_found(ref)
        return job, int(index)

    # -- cancel -------------------------------------------------------------------------------

    def cancel(self, ref: str) -> dict[str, Any]:
        job, index = self.resolve(ref)
        if job.finished:
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} already {job.state}")
        now = self.clock()
        if index is None:
            if job.state == "pending":  # still waiting for prerequisites: none of its tasks began
                effects = job.fail_before_start("cancelled by request", now)
                job.cancel_requested = True
            else:
                effects = job.cancel(now)
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
            effects = job.cancel(now, [index])
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

    def _forget_queued(self, ref: Ref) -> None:
        for q in self.queues.values():
            q.discard(ref)
        timer = self._retry_timers.pop(ref, None)
        if timer is not None:
            timer.cancel()

    # -- the engine room ----------------------------------------------------------------------

    def _apply(self, job: Job, effects: Effects) -> None:
        # "ready" is derived again at recovery, so only final states need writing here.
        self._touch(job, effects.finished_tasks)
        if effects.ready:
            self._enqueue(job, effects.ready)
        for attempt_id in effects.stop:
            ref = self.attempts.get(attempt_id)
            if ref is not None:
                self.executors[job.tasks[ref[1]].spec.kind].stop_attempt(attempt_id, "cancelled")
        for i in effects.finished_tasks:
            self._forget_queued((job.id, i))
            self._task_final(job, i)
        if effects.run_finished:
            self._run_finished(job)
        if effects.ready:
            self._schedule_pump()

    def _enqueue(self, job: Job, indices: list[int]) -> None:
        """Queue ready tasks, one queue entry per run of tasks of the same kind and priority."""
        now_mono = time.monotonic()
        tasks, job_id = job.tasks, job.id
        first = tasks[indices[0]].spec
        kind, priority = first.kind, first.priority
        refs: list[Ref] = []
        for i in indices:
            spec = tasks[i].spec
            if spec.kind != kind or spec.priority != priority:
                self.queues[kind].push_many(refs, priority, now_mono)
                kind, priority, refs = spec.kind, spec.priority, []
            refs.append((job_id, i))
        self.queues[kind].push_many(refs, priority, now_mono)

    def _task_final(self, job: Job, index: int) -> None:
        t = job.tasks[index]
        if t.state == "completed":
            self.counters["completed"] += 1
            level, message_id, message = (
                logging.INFO,
                journal.MessageId.TASK_COMPLETED,
                f'task "{t.spec.name}" completed',
            )
        elif t.state in ("skipped", "cancelled"):
            message_id = (
                journal.MessageId.TASK_SKIPPED if t.state == "skipped" else journal.MessageId.TASK_CANCELLED
            )
            level, message = logging.INFO, f'task "{t.spec.name}" {t.state}: {t.reason}'
        else:
            self.counters["failed"] += 1
            message_id = (
                journal.MessageId.TASK_TIMED_OUT if t.state == "timeout" else journal.MessageId.TASK_FAILED
            )
            level = logging.WARNING
            message = (
                f'task "{t.spec.name}" {t.state} after {len(t.attempts)} attempt(s): '
                f"{(t.error or {}).get('message', '')}"
            )
        attempt = t.attempts[-1] if t.attempts else None
        handle = self._task_logs.get(attempt.attempt_id) if attempt is not None else None
        code = journal.encoding.FINAL_EVENTS.get(t.state)
        if handle is not None and code is not None:  # the attempt's handle: a small event record
            skipped = code in (journal.encoding.SKIPPED, journal.encoding.CANCELLED)
            handle[0].event(code, str(t.reason) if skipped else (t.error or {}).get("message", ""))
        else:
            fields = {**self._fields(job, index), "MESSAGE_ID": message_id}
            task_log.log(level, "%s", message, extra={"journal_fields": fields})
        self._notify(t.id)

    def _run_finished(self, job: Job) -> None:
        now = self.clock()
        self._touch(job, [])
        if job.finish_run(now):
            log.info(
                "job %s run %d starting",
                job.id,
                job.run,
                extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}},
            )
            # Start the next run from the loop, not from inside the previous run's last callback.
            self.loop.call_soon(lambda: self._start_next_run(job))
            return
        self._record(
            logging.INFO,
            f'job {job.id} "{job.spec.name}" {job.state}',
            {
                "PROCPOOL_JOB_ID": job.id,
                "PROCPOOL_JOB_NAME": job.spec.name,
                "PROCPOOL_JOB_STATE": job.state,
                **_user_fields(job),
                "MESSAGE_ID": journal.MessageId.JOB_FINISHED,
            },
        )
        if self.journal is not None:
            self.journal.forget_job(job.id)  # its names leave the journal's tables
        self._index_finished(job.index_entry())
        if self.store is not None:
            self._retiring.append(job.id)
        self.quota.release(job.id)
        self._notify(job.id)
        self._prune(now, [job.submitter_uid])

    def _start_next_run(self, job: Job) -> None:
        if job.finished:
            return
        effects = job.start_run(self.clock())
        # Every task's stored row still describes the previous run: write them all as reset.
        self._touch(job, list(range(len(job.tasks))))
        self._apply(job, effects)

    def _notify(self, ref: str) -> None:
        for listener in list(self.listeners):
            listener(ref)
        if ref in self._after:
            for waiting_id in self._after.pop(ref):
                self._prerequisite_done(waiting_id)

    def _prerequisite_done(self, job_id: str) -> None:
        """One of a pending job's prerequisites finished: evaluate them all again."""
        job = self.jobs.get(job_id)
        if job is None or job.state != "pending":
            return
        for refs in self._after.values():
            while job_id in refs:
                refs.remove(job_id)
        self._start_when_prerequisites_allow(job)

    def kick(self) -> None:
        """Capacity changed (e.g. the pool grew): try to dispatch."""
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand ready tasks to executors while they have room, best first."""
        self._pump_scheduled = False
        if not self.accepting:
            return
        batch: list[tuple[Executor, AttemptSpec]] = []
        jobs = self.jobs
        users: dict[str, Identity | None] = {}  # per job, looked up once per pass
        for kind, queue in self.queues.items():
            executor = self.executors[kind]
            free = executor.free_slots()
            while free > 0 and queue:
                ref = queue.pop()
                if ref is None:
                    break
                job = jobs[ref[0]]
                if job.tasks[ref[1]].state != "ready":
                    continue
                if job.id not in users:
                    users[job.id] = self._run_as(job)
                batch.append((executor, self._prepare(job, ref[1], executor, users[job.id])))
                free -= 1
        if not batch:
            return
        # Write-ahead: the attempts are recorded as running before any of them starts, so after a
        # crash an attempt that ran is known (and counted) instead of silently run again as new.
        self.flush()
        for executor, spec in batch:
            try:
                executor.submit(spec)
            except Exception as exc:  # that attempt fails, with the reason; the others start
                self._internal_failure(spec.attempt_id, "could not be started", exc)

    def _internal_failure(self, attempt_id: str, what: str, exc: Exception) -> None:
        """An exception in the daemon's handling of one attempt fails that attempt (not the loop).

        Runs on the loop thread. The attempt ends ``failed`` with an error naming the exception
        (retried like any failure); its traceback goes to the daemon's log.
        """
        log.error("attempt %s %s: %s", attempt_id, what, exc, exc_info=exc)
        if attempt_id not in self.attempts:
            return
        why = f"{type(exc).__name__}: {shorten(str(exc))[1:-1]}"
        error = TaskError("InternalError", f"procpoold: the attempt {what}: {why}")
        self.attempt_finished(Outcome(attempt_id, "failed", error=error))

    def _on_timeout(self, executor: Executor, attempt_id: str) -> None:
        """The timer of an attempt's ``timeout``: stop it (an exception here fails the attempt)."""
        self._timeouts.pop(attempt_id, None)
        try:
            executor.stop_attempt(attempt_id, "timeout")
        except Exception as exc:
            self._internal_failure(attempt_id, "could not be stopped at its timeout", exc)

    def _prepare(self, job: Job, index: int, executor: Executor, user: Identity | None) -> AttemptSpec:
        t = job.tasks[index]
        attempt_id = f"{t.id}@{job.run}#{len(t.attempts) + 1}"
        attempt = job.mark_running(index, attempt_id, self.clock())
        self._touch_started(job, index)
        spec = AttemptSpec(
            attempt_id=attempt_id,
            job_id=job.id,
            job_name=job.spec.name,
            task_id=t.id,
            task_name=t.spec.name,
            attempt=attempt.number,
            kind=t.spec.kind,
            call=t.spec.call,
            args=t.spec.args,
            kwargs=t.spec.kwargs,
            cmd=t.spec.cmd,
            shell=t.spec.shell,
            env={**job.spec.env, **t.spec.env} if t.spec.env else job.spec.env,
            cwd=t.spec.cwd or job.spec.cwd,
            python_path=job.spec.python_path,
            timeout=t.spec.timeout,
            run=job.run,
            user=user,
        )
        self.attempts[attempt_id] = (job.id, index)
        self.counters["attempts"] += 1
        if t.spec.timeout is not None:
            self._timeouts[attempt_id] = self.loop.call_later(
                t.spec.timeout, lambda: self._on_timeout(executor, attempt_id)
            )
        sink = self.journal
        if sink is not None:
            handle = sink.task_log(
                job.id,
                t.id,
                t.spec.name,
                len(t.attempts),
                lambda: {"PROCPOOL_JOB_NAME": job.spec.name, **_user_fields(job)},
            )
            self._task_logs[attempt_id] = (handle, t)
        return spec

    @staticmethod
    def _run_as(job: Job) -> Identity | None:
        """The identity an attempt of ``job`` drops to; None when it runs as the daemon's user.

        A job stored by a daemon that could not switch users has no ``run_as_uid``: once the
        daemon can, it runs as its submitter rather than as the daemon's user.
        """
        uid = job.run_as_uid if job.run_as_uid is not None else run_as_uid(job.submitter_uid)
        if uid is None or uid == os.geteuid():
            return None
        return identity_of(uid)

    def _record(self, level: int, message: str, fields: dict[str, str]) -> None:
        """A job's record (submitted, finished) with its journal fields."""
        if self.journal is not None:
            self.journal.record(log, level, message, fields)
        else:
            log.log(level, "%s", message, extra={"journal_fields": fields}, stacklevel=2)

    def _fields(self, job: Job, index: int) -> dict[str, str]:
        t = job.tasks[index]
        return {
            "PROCPOOL_JOB_ID": job.id,
            "PROCPOOL_JOB_NAME": job.spec.name,
            "PROCPOOL_TASK_ID": t.id,
            "PROCPOOL_TASK_NAME": t.spec.name,
            "PROCPOOL_ATTEMPT": str(len(t.attempts)),
            **_user_fields(job),
        }

    # -- ExecutorEvents -----------------------------------------------------------------------

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        job = self.jobs[ref[0]]
        t = job.tasks[ref[1]]
        attempt = t.running_attempt
        if attempt is not None:
            attempt.pid, attempt.worker = pid, worker
            if worker is None:
                self._touch_pid(job, ref[1])
        # The record is written once the attempt has a process, so it names the worker's pid.
        message = f'task "{t.spec.name}" attempt {len(t.attempts)} starting'
        handle = self._task_logs.get(attempt_id)
        if handle is not None:
            handle[0].set_worker_pid(pid)
            handle[0].event(journal.encoding.STARTED)
        else:
            fields = {**self._fields(job, ref[1]), "MESSAGE_ID": journal.MessageId.TASK_STARTED}
            if pid is not None:
                fields["PROCPOOL_WORKER_PID"] = str(pid)
            task_log.info(message, extra={"journal_fields": fields})

    def attempt_finished(self, outcome: Outcome) -> None:
        ref = self.attempts.pop(outcome.attempt_id, None)
        try:
            self._attempt_finished(ref, outcome)
        finally:
            self._task_logs.pop(outcome.attempt_id, None)  # kept until here for the final record

    def attempts_finished(self, outcomes: list[Outcome]) -> None:
        """A batch of outcomes (one drain of the pool's result rings), applied in order.

        Runs on the loop's thread. The same state changes as :meth:`attempt_finished` for each
        outcome; a completion (most of them) takes a short path: one clock reading and one
        dispatch pass for the whole batch. An exception while applying one outcome is logged and
        does not keep the rest of the batch from being applied.
        """
        attempts, jobs, timeouts, task_logs = self.attempts, self.jobs, self._timeouts, self._task_logs
        now: float | None = None
        for outcome in outcomes:
            aid = outcome.attempt_id
            ref = attempts.get(aid) if outcome.status == "completed" else None
            if ref is None:
                try:
                    self.attempt_finished(outcome)
                except Exception:
                    log.exception("the outcome of attempt %s could not be applied", aid)
                continue
            del attempts[aid]
            try:
                if timeouts:
                    timer = timeouts.pop(aid, None)
                    if timer is not None:
                        timer.cancel()
                job = jobs[ref[0]]
                index = ref[1]
                if now is None:
                    now = self.clock()
                attempt = job.tasks[index].running_attempt
                if attempt is not None:
                    attempt.finished_at, attempt.status = now, "completed"
                self._apply(job, job.complete(index, now, outcome.result, outcome.exit_code))
            except Exception:
                log.exception("the outcome of attempt %s could not be applied", aid)
            finally:
                task_logs.pop(aid, None)  # kept until here for the final record
        if now is not None:
            self._schedule_pump()  # slots became free

    def _attempt_finished(self, ref: Ref | None, outcome: Outcome) -> None:
        timer = self._timeouts.pop(outcome.attempt_id, None)
        if timer is not None:
            timer.cancel()
        if ref is None:
            log.warning("outcome for unknown attempt %s ignored", outcome.attempt_id)
            return
        job = self.jobs[ref[0]]
        index = ref[1]
        t = job.tasks[index]
        now = self.clock()
        attempt = t.running_attempt
        if attempt is not None:
            attempt.finished_at, attempt.status = now, outcome.status
        error = outcome.error.to_wire() if outcome.error else None
        self._touch(job, [index])
        if outcome.error is not None and outcome.error.type == NOT_STARTED and t.attempts:
            # The attempt was still queued when it was stopped: it never ran, so it does not count.
            t.attempts.pop()
            if t.started_at is not None and not t.attempts:
                t.started_at = None
            if outcome.status == "interrupted":
                t.move("pending")  # runs as if new (after the restart, if the daemon is stopping)
                if self.accepting and not (t.cancel_requested or job.cancel_requested):
                    t.move("ready")
                    self._apply(job, Effects(ready=[index]))
                return
        if outcome.status == "interrupted" and not self.accepting:
            # The daemon is stopping: leave the task "running" in the store, so the next start
            # applies the job's on_interrupt policy to it (see Job.recover).
            return
        if outcome.status == "completed":
            effects = job.complete(index, now, outcome.result, outcome.exit_code)
        elif outcome.status == "cancelled" or t.cancel_requested or (
            outcome.status == "interrupted" and job.cancel_requested
        ):
            effects = job.end_unsuccessfully(
                index, "cancelled", now, error, outcome.exit_code, reason=job.reason or "cancelled by request"
            )
        elif outcome.status == "interrupted":
            # The daemon lost the attempt (not the task's doing): run it again without using a retry.
            effects = job.interrupt(index, now, error, self.max_interruptions)
            task_log.warning(
                'task "%s" attempt %d interrupted (%s); %s',
                t.spec.name,
                len(t.attempts),
                (error or {}).get("message", "its worker was lost"),
                "running it again" if effects.ready else "not run again",
                extra={"journal_fields": {**self._fields(job, index), "MESSAGE_ID": _RETRIED}},
            )
        else:
            state: TaskState = "timeout" if outcome.status == "timeout" else "failed"
            if state == "timeout" and error is None:
                error = {
                    "type": "Timeout",
                    "message": f"attempt ran longer than {t.spec.timeout:g}s",
                    "traceback": "",
                }
            if t.failures <= t.spec.retries and not job.cancel_requested:
                # (the exponent is bounded: 2 ** 1000 would not fit a float)
                delay = min(t.spec.retry_delay * 2 ** min(t.failures - 1, 32), RETRY_DELAY_CAP)
                delay *= random.uniform(0.8, 1.2)  # jitter: retries of many tasks do not stampede
                t.error, t.exit_code = error, outcome.exit_code
                job.retry_later(index, now + delay)
                task_log.warning(
                    'task "%s" attempt %d %s; retrying in %.1fs: %s',
                    t.spec.name,
                    len(t.attempts),
                    "timed out" if state == "timeout" else "failed",
                    delay,
                    (error or {}).get("message", ""),
                    extra={
                        "journal_fields": {
                            **self._fields(job, index),
                            "MESSAGE_ID": journal.MessageId.TASK_RETRIED,
                        }
                    },
                )
                self._retry_timers[ref] = self.loop.call_later(delay, lambda: self._retry(ref))
                self._schedule_pump()
                return
            effects = job.end_unsuccessfully(index, state, now, error, outcome.exit_code)
        self._apply(job, effects)
        self._schedule_pump()  # a slot became free

    def _retry(self, ref: Ref) -> None:
        """The timer of a retry delay: the task is ready again (an exception here fails the task)."""
        self._retry_timers.pop(ref, None)
        job = self.jobs.get(ref[0])
        try:
            if job is not None and job.retry_due(ref[1]):
                self._apply(job, Effects(ready=[ref[1]]))
        except Exception as exc:
            log.error("the retry of task %s.%d failed: %s", ref[0], ref[1], exc, exc_info=exc)
            if job is None or job.tasks[ref[1]].state in FINAL_TASK_STATES:
                return
            why = f"{type(exc).__name__}: {shorten(str(exc))[1:-1]}"
            error = {"type": "InternalError", "message": f"procpoold could not retry the task: {why}"}
            self._apply(job, job.end_unsuccessfully(ref[1], "failed", self.clock(), error, None))

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        ref = self.attempts.get(attempt_id)
        if ref is not None:
            job = self.jobs[ref[0]]
            job.tasks[ref[1]].progress = progress
            self._touch(job, [ref[1]])

    def attempt_log(
        self, attempt_id: str, stream: Stream, level: int, message: str, fields: dict[str, str] | None = None
    ) -> None:
        handle = self._task_logs.get(attempt_id)
        if handle is not None:  # the fast path: the fields were computed once per attempt
            handle[1].remember(message)
            handle[0].line(stream, level, message, fields)
            return
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        job = self.jobs[ref[0]]
        t = job.tasks[ref[1]]
        t.remember(message)
        extra = {**self._fields(job, ref[1]), "PROCPOOL_STREAM": stream, **(fields or {})}
        task_log.log(level, "%s", message, extra={"journal_fields": extra})

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        ref = self.attempts.get(attempt_id)
        if ref is None:
            raise ProcpoolError(ErrorCode.CONFLICT, "the attempt is no longer running")
        job = self.jobs[ref[0]]
        sizes = self._ns_sizes.get(job)
        if sizes is None:  # once per job and daemon: later operations cost what they change
            sizes = self._ns_sizes[job] = namespace.Sizes(job.namespace, self.limits.max_namespace_bytes)
        sizes.limit = self.limits.max_namespace_bytes
        result = namespace.apply(job.namespace, op, args, sizes)
        if op not in ("get", "snapshot"):
            self._touch(job, [])
        return result

    # -- persistence --------------------------------------------------------------------------

    def _touch(self, job: Job, indices: list[int]) -> None:
        """Remember what changed (no indices: the job's own fields); written at the next flush."""
        if self.store is None:
            return
        tasks = self._dirty.setdefault(job.id, {})
        for i in indices:
            # (a start not yet written: the full entry, which holds the attempt, not a DONE entry)
            tasks[i] = _FULL if tasks.get(i) == _STARTED else _CHANGED
        if not indices:
            self._dirty_jobs.add(job.id)
        self._schedule_flush()

    def _touch_started(self, job: Job, index: int) -> None:
        """The task's only change is that an attempt started: a small log entry will do."""
        if self.store is None:
            return
        self._dirty.setdefault(job.id, {}).setdefault(index, _STARTED)
        self._schedule_flush()

    def _touch_pid(self, job: Job, index: int) -> None:
        """A command's pid: written with the next commit, or ``PID_FLUSH_DELAY`` later at most.

        Not worth a commit of its own (that was half of the commits of a job of short commands):
        after a crash the next start finds a command by its environment when its pid was not
        written (see :func:`_kill_leftovers`).
        """
        if self.store is None:
            return
        self._dirty.setdefault(job.id, {})[index] = _FULL
        if self._pid_timer is None and self.pid_flush_delay is not None:
            self._pid_timer = self.loop.call_later(self.pid_flush_delay, self._flush_pids)

    def _flush_pids(self) -> None:
        self._pid_timer = None
        self.flush()

    def _schedule_flush(self) -> None:
        # Last in the iteration: a dispatch in the same iteration flushes first (write-ahead),
        # and everything changed meanwhile goes into that one commit.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_last(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        if self._flush_scheduled:  # else a write-ahead flush in this iteration took it over
            self.flush()

    def flush(self) -> None:
        """Group commit: everything changed since the last flush, in one transaction.

        A job's row is rewritten only when its own fields changed. Task changes are appended
        to the job's task log; when the log would grow past twice the job's size (plus a
        little), a snapshot of every task replaces it (see procpoold.store.sqlite).
        """
        self._flush_scheduled = False
        store = self.store
        if store is None:
            return
        for job_id, tasks in self._dirty.items():
            job = self.jobs.get(job_id)
            if job is None:
                continue
            row = _job_row(job)
            if job_id in self._dirty_jobs or self._job_rows.get(job_id) != row:
                self._job_rows[job_id] = row
                summary = dict(status.summary(job)) if job.finished else None
                # (the uid too: a row from before schema 4 has none, and the index is read from it)
                store.job_changed(job_id, job.state, job.finished_at, job.dump(), summary, job.submitter_uid)
            if not tasks:
                continue
            size = len(job.tasks)
            if store.log_entries.get(job_id, 0) + len(tasks) > 2 * size + LOG_SLACK:
                store.snapshot_tasks(job_id, [job.full_entry(i) for i in range(size)])
            else:
                entry, full, start = job.entry, job.full_entry, job.start_entry
                entries = [
                    entry(i) if what == _CHANGED else full(i) if what else start(i)
                    for i, what in tasks.items()
                ]
                store.append_tasks(job_id, entries)
        self._dirty.clear()
        self._dirty_jobs.clear()
        store.flush()
        if self._retiring:
            self._retire()

    def _retire(self) -> None:
        """Drop the Job objects of finished jobs now that the store holds their final state:
        what is kept of them is their index entry (memory follows unfinished work, not history)."""
        assert self.store is not None
        for job_id in self._retiring:
            job = self.jobs.get(job_id)
            if job is None or not job.finished:
                continue
            del self.jobs[job_id]
            self._job_rows.pop(job_id, None)
            self.store.forget(job_id)
            self._remember_loaded(job)  # its status is often read at once (a waiter's pages)
        self._retiring.clear()

    def recover(self) -> dict[str, int]:
        """Load every stored job; resume the unfinished ones (see Job.recover)."""
        if self.store is None:
            return {}
        self._next_id = self.store.max_job_id() + 1
        now = self.clock()
        counts = {"jobs": 0, "resumed": 0, "interrupted": 0, "held": 0}
        finished: list[FinishedJob] = []
        resumable: list[tuple[Job, Effects]] = []
        leftovers: list[tuple[str, str, int, int | None]] = []
        for entry in self.store.finished_index():  # finished jobs are read back only when asked for
            finished.append(entry)
            if entry.key is not None:
                self.keys[entry.key] = entry.id
            counts["jobs"] += 1
        for stored in self.store.load_jobs(unfinished_only=True):
            job_id = stored.id
            try:
                job = self._restore(stored)
            except Exception as exc:  # whatever is wrong with it fails this job, not the start
                job = self._unrestorable(stored.id, stored.doc, stored.created_at, exc)
                # Still its submitter's (who may clean it), and its key still finds it: a retried
                # submit must not add a second row with that key (the store would refuse it).
                key, uid = self.store.key_and_uid(job_id)
                if uid is None and isinstance(stored.data, dict):
                    uid = stored.data.get("submitter_uid")
                job.submitter_uid = uid if type(uid) is int else None
                job.submitter_name = user_name(job.submitter_uid)
                if key is not None:
                    self.keys[key] = job_id
                self.jobs[job_id] = job
                counts["jobs"] += 1
                counts["failed"] = counts.get("failed", 0) + 1
                resumable.append((job, job.fail_before_start(job.reason or "", now)))
                continue
            key = scoped_key(job.submitter_uid, job.spec.key)
            if key is not None:
                self.keys[key] = job_id
            counts["jobs"] += 1
            if job.finished:  # a row from before finished jobs had summaries: write its summary
                self.store.job_changed(job_id, job.state, job.finished_at, job.dump(),
                                       dict(status.summary(job)), job.submitter_uid)
                self.store.forget(job_id)
                finished.append(job.index_entry())
                continue
            self.jobs[job_id] = job
            self._job_rows[job_id] = _job_row(job)
            self.quota.hold(job_id, job.submitter_uid, len(job.tasks))
            if job.state == "pending":
                resumable.append((job, Effects()))
                continue
            task_of = {t.attempts[-1].attempt_id: t.id for t in job.tasks if t.state == "running"}
            effects, interrupted = job.recover(now, self.max_interruptions)
            for attempt in interrupted:
                if attempt.worker is None:  # pool workers die with the daemon (PR_SET_PDEATHSIG)
                    leftovers.append((job.id, task_of[attempt.attempt_id], attempt.number, attempt.pid))
            counts["interrupted"] += len(interrupted)
            counts["held" if job.state == "held" else "resumed"] += 1
            self._touch(job, list(range(len(job.tasks))))
            resumable.append((job, effects))
        if leftovers:
            _kill_leftovers(leftovers, self.store.daemon_id)
        finished.sort(key=lambda e: (e.finished_at, int(e.id)))
        for entry in finished:
            self._index_finished(entry)
        self._prune(now)
        for job, effects in resumable:
            if job.state == "pending":
                self._start_when_prerequisites_allow(job)
            else:
                self._apply(job, effects)
        return counts

    def _index_finished(self, entry: FinishedJob) -> None:
        self.finished[entry.id] = entry
        self._finished_by_uid.setdefault(entry.uid, {})[entry.id] = None
        self._finished_states[entry.state] = self._finished_states.get(entry.state, 0) + 1

    def _unrestorable(self, job_id: str, doc: Any, created_at: float, exc: Exception) -> Job:
        """A stored job that cannot be restored, as a job that will end ``failed`` with the reason.

        Runs on the loop thread, at start. Its tree when that still parses (every task is then
        skipped with the reason), else a one-task stand-in named after it; its stored log is
        replaced, so the next start loads it as the failed job it is (or fails it again the
        same way), and retention removes it like any finished job. Never a crash loop.
        """
        reason = f"cannot be restored after a restart: {type(exc).__name__}: {shorten(str(exc))[1:-1]}"
        log.error("stored job %s %s; it is marked failed", job_id, reason)
        job = self._stand_in(job_id, doc, created_at)
        job.reason = reason
        if self.store is not None:
            self.store.snapshot_tasks(job_id, [])  # the whole log is replaced at the next flush
            self._touch(job, list(range(len(job.tasks))))
        return job

    def _stand_in(self, job_id: str, doc: Any, created_at: float) -> Job:
        """A Job for a stored document that cannot be parsed: its tree when that still parses
        (within the ceilings), else a one-task stand-in named after it. Touches no store."""
        try:
            spec = parse_job(doc, CEILINGS)
        except Exception:
            name = doc.get("name") if isinstance(doc, dict) else None
            if not isinstance(name, str) or len(name) > 128 or "\0" in name:
                name = f"job {job_id}"
            spec = parse_job({"name": name, "root": {"name": "unrestorable", "cmd": ["false"]}})
        return Job(job_id, spec, {}, created_at if isinstance(created_at, float) else self.clock())

    def _read_back_unrestorable(self, stored: StoredJob) -> Job:
        """A finished job whose document cannot be parsed, read back for status: the stand-in with
        the final state that was stored for it (see _unrestorable)."""
        job = self._stand_in(stored.id, stored.doc, stored.created_at)
        try:
            job.load(stored.data, stored.entries)
        except Exception:  # the entries do not fit the stand-in: show it failed with its reason
            job.fail_before_start(str(stored.data.get("reason") or "cannot be restored"), self.clock())
            job.state = "failed"
        job.submitter_uid = stored.data.get("submitter_uid") if isinstance(stored.data, dict) else None
        job.submitter_name = user_name(job.submitter_uid)
        return job

    def _prune(self, now: float, users: list[int | None] | None = None) -> None:
        """Drop finished jobs beyond the retention limits (decided in memory: usually nothing to do).

        ``retention_count`` applies per submitter uid (``users``: those whose jobs just finished;
        None: every user), so one client's jobs never evict another user's history;
        ``retention_age`` to all. Only finished jobs are ever pruned: they are the index. Without
        a store they are dropped from memory all the same.
        """
        victims: list[str] = []
        count = self.retention_count
        if count is not None:
            for uid in list(self._finished_by_uid) if users is None else users:
                own = self._finished_by_uid.get(uid, {})
                if len(own) > count:
                    victims.extend(itertools.islice(own, len(own) - count))
        if self.retention_age is not None:
            cutoff = now - self.retention_age
            for job_id, entry in self.finished.items():  # in the order they finished
                if entry.finished_at >= cutoff:
                    break
                victims.append(job_id)
        if victims:
            dropped = self._drop_jobs(list(dict.fromkeys(victims)))
            if dropped:
                ids = sorted(int(j) for j in dropped)
                limits = [f"retention_count {count} per user"] if count is not None else []
                if self.retention_age is not None:
                    limits.append(f"retention_age {self.retention_age:g} s")
                log.info(
                    "retention pruned %d finished job(s), ids %d to %d (%s)",
                    len(ids),
                    ids[0],
                    ids[-1],
                    ", ".join(limits),
                    extra={"journal_fields": {"PROCPOOL_PRUNED": str(len(ids)),
                                              "PROCPOOL_PRUNED_OLDEST": str(ids[0]),
                                              "PROCPOOL_PRUNED_NEWEST": str(ids[-1])}},
                )

    def _drop_jobs(self, job_ids: list[str]) -> list[str]:
        """Delete finished jobs (never an unfinished one); returns the ids deleted."""
        job_ids = [j for j in job_ids if j in self.finished]
        if not job_ids:
            return []
        self.flush()
        if self.store is not None:
            self.store.delete_jobs(job_ids)
        for job_id in job_ids:
            entry = self.finished.pop(job_id)
            self._finished_states[entry.state] -= 1
            own = self._finished_by_uid.get(entry.uid)
            if own is not None:
                own.pop(job_id, None)
                if not own:
                    del self._finished_by_uid[entry.uid]
            self._job_rows.pop(job_id, None)
            self._loaded.pop(job_id, None)
            self.jobs.pop(job_id, None)
            if entry.key is not None and self.keys.get(entry.key) == job_id:
                del self.keys[entry.key]
        return job_ids

    def clean(
        self, state: str | None = None, before: float | None = None, owner: int | None = None
    ) -> tuple[list[str], int]:
        """Remove finished jobs (optionally only in ``state`` or finished before ``before``).

        With ``owner``, only the jobs that uid submitted. Returns the ids removed and how many
        other finished jobs matched but were left (another user's).
        """
        matching = [
            e
            for e in self.finished.values()
            if (state is None or e.state == state) and (before is None or e.finished_at < before)
        ]
        victims = [e.id for e in matching if owner is None or e.uid == owner]
        return self._drop_jobs(victims), len(matching) - len(victims)

    def resume(self, ref: str) -> dict[str, Any]:
        """Release a job held after a restart (on_interrupt: hold)."""
        job, _ = self.resolve(ref)
        if job.state != "held":
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} is {job.state}, not held")
        self._apply(job, job.resume())
        return {"id": job.id, "state": job.state}

    # -- queries ------------------------------------------------------------------------------

    def job_list(
        self, state: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        if state is not None and state not in JOB_STATES:
            raise ProcpoolError(
                ErrorCode.INVALID_ARGUMENT,
                f"unknown job state {shorten(state, 64)}",
                f"use one of {', '.join(JOB_STATES)}",
            )
        # Newest first up to the limit (at most status_page_size): unfinished jobs from memory,
        # finished ones from the index, their summaries read from the store.
        cap = self.status_page_size if limit is None else max(0, min(limit, self.status_page_size))
        live = (
            (int(j.id), j.id, j)
            for j in self.jobs.values()
            if j.id not in self.finished
            and (state is None or j.state == state)
            and (since is None or j.created_at >= since)
        )
        done = (
            (int(e.id), e.id, None)
            for e in self.finished.values()
            if (state is None or e.state == state) and (since is None or e.created_at >= since)
        )
        picked: list[tuple[int, str, Job | None]] = sorted(
            heapq.nlargest(cap, itertools.chain(live, done), key=lambda item: item[0])
        )
        wanted = [job_id for _, job_id, job in picked if job is None and job_id not in self.jobs]
        stored = self.store.summaries(wanted) if self.store is not None and wanted else {}
        out = []
        for _, job_id, job in picked:
            job = job or self.jobs.get(job_id)
            if job is not None:
                out.append(dict(status.summary(job)))
            elif job_id in stored:
                out.append(stored[job_id])
        return out

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs.values():
            if j.id not in self.finished:
                out[j.state] = out.get(j.state, 0) + 1
        for state, n in self._finished_states.items():
            if n:
                out[state] = out.get(state, 0) + n
        return out

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def running(self) -> int:
        return len(self.attempts)

    def is_finished(self, ref: str) -> bool:
        """Whether a job or task has reached a final state (cheap: no status is built)."""
        if ref in self.finished:
            return True
        job, index = self.resolve(ref)
        return job.finished if index is None else job.tasks[index].state in FINAL_TASK_STATES

    def finished_status(self, ref: str, view: View = "full") -> dict[str, Any]:
        """The status a ``wait`` returns: the job's (its first page in ``view``; Client.wait fetches
        the others), or the task's with its job summary."""
        job, index = self.resolve(ref)
        if index is None:
            return {**status.wait_reply(job, view, self.status_page_size), "id": ref}
        return {**status.task_reply(job, index), "id": ref}

    def stop_accepting(self) -> None:
        self.accepting = False


def _user_fields(job: Job) -> dict[str, str]:
    """``PROCPOOL_USER`` and ``PROCPOOL_UID`` of the job's submitter (none when it is unknown)."""
    if job.submitter_uid is None:
        return {}
    uid = str(job.submitter_uid)
    return {"PROCPOOL_USER": job.submitter_name or uid, "PROCPOOL_UID": uid}


def _job_row(job: Job) -> tuple[Any, ...]:
    """The job fields that change without an explicit touch (the namespace always has one)."""
    return (
        job.state,
        job.run,
        len(job.runs),
        job.started_at,
        job.finished_at,
        job.reason,
        job.cancel_requested,
    )


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


def _kill_leftovers(attempts: list[tuple[str, str, int, int | None]], daemon_id: str) -> None:
    """Kill what a crashed daemon's commands left running: each one's whole process group.

    ``attempts`` are ``(job id, task id, attempt number, pid or None)``. A command runs as the
    leader of its own session and carries its identity in its environment: its daemon's
    (``PROCPOOL_DAEMON_ID``, one per state file) and its attempt's (``PROCPOOL_JOB_ID``,
    ``PROCPOOL_TASK_ID``, ``PROCPOOL_ATTEMPT``). A recorded pid is killed only if its process still
    carries that identity (a reused pid is never hit), and an attempt whose pid was not written
    before the crash is found by its identity among session leaders (another daemon's commands,
    with job ids of their own, are never hit).
    """
    wanted = {(daemon_id, job_id, task_id, str(number)): pid for job_id, task_id, number, pid in attempts}
    found: dict[tuple[str, str, str, str], int] = {}
    for key, pid in wanted.items():
        if pid is not None and _identity(pid) == key:
            found[key] = pid
    if len(found) < len(wanted):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            ident = _identity(int(entry.name))
            if ident is not None and ident in wanted and ident not in found:
                found[ident] = int(entry.name)
    for pid in found.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            log.warning("killed process group %d left running by the previous daemon", pid)


def _identity(pid: int) -> tuple[str, str, str, str] | None:
    """``(daemon id, job id, task id, attempt)`` of a session leader started by procpoold, else None."""
    try:
        if os.getsid(pid) != pid:
            return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    fields: dict[bytes, str] = {}
    for item in env:
        name, sep, value = item.partition(b"=")
        if sep and name in _IDENTITY:
            fields[name] = value.decode("utf-8", "replace")
    if len(fields) != len(_IDENTITY):
        return None
    return tuple(fields[name] for name in _IDENTITY)  # type: ignore[return-value]


_IDENTITY = (b"PROCPOOL_DAEMON_ID", b"PROCPOOL_JOB_ID", b"PROCPOOL_TASK_ID", b"PROCPOOL_ATTEMPT")


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

"""Attempts: the pump, dispatch, and what the executors report (ExecutorEvents)."""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import shorten
from procpool.contract.tree import RETRY_DELAY_CAP
from procpoold import failures, journal
from procpoold.core import namespace
from procpoold.core.cycles import CyclingJob
from procpoold.core.jobs import Effects, Job
from procpoold.core.queue import RANK
from procpoold.core.states import FINAL_TASK_STATES, TaskState
from procpoold.engines import NOT_STARTED, AttemptSpec, Executor, Outcome, Stream, TaskError
from procpoold.identity import Identity, identity_of, run_as_uid
from procpoold.scheduler.state import _RETRIED, _STARTED, Ref, SchedulerState, cancel, log, task_log

#: the daemon's root logger: its level (``log_level``, changed by SIGHUP) is the level of the
#: records kept of a task that names none
_root = logging.getLogger()
#: an AttemptSpec without running its __init__: _prepare sets every field by name
_new_spec = object.__new__


class _JobPass:
    """What the attempts of one job dispatched in one pump pass share: the job, the identity they
    run as (looked up once per job per pass), the time they start, the job's entry in the
    scheduler's changed tasks (None without a store), and the daemon's ``log_level`` (the level of
    the tasks that name none; a SIGHUP may change it between passes)."""

    __slots__ = ("cycling", "job", "job_name", "level", "now", "run", "started", "user")

    def __init__(self, job: Job, user: Identity | None, now: float, started: dict[int, int] | None) -> None:
        self.job = job
        self.job_name = job.spec.name
        self.user = user
        self.now = now
        self.run = job.run
        self.started = started
        self.level = _root.level
        #: the job, when some of its nodes cycle on their own clock (their attempt ids name the cycle)
        self.cycling = job if isinstance(job, CyclingJob) else None


class Attempts(SchedulerState):
    """Running attempts: the pump hands ready tasks to executors; the executors report back here
    (the :class:`~procpoold.engines.ExecutorEvents` methods); timeouts and retry delays are loop
    timers.
    """

    def _forget_queued(self, ref: Ref) -> None:
        for q in self.queues.values():
            q.discard(ref)
        cancel(self._retry_timers, ref)
        gates = self.gates
        if gates.parked or gates.woken or gates.group_woken or gates.queue_woken:
            gates.dropped(ref)

    def _requeue_parked(self, ref: Ref, key: float) -> None:
        """A task woken by its limit, queue or lock goes back to its ready queue with the key it
        had there (see core.gates); nothing while its job is paused (its resume queues it)."""
        job = self.jobs.get(ref[0])
        if job is not None and job.state != "paused" and job.tasks[ref[1]].state == "ready":
            spec = job.tasks[ref[1]].spec
            queue = self.queues[self.engines.route_name(spec.kind, spec.engine)]
            queue.push_at(ref, key, RANK[spec.priority])
            self._schedule_pump()

    def _still_ready(self, ref: Ref) -> bool:
        job = self.jobs.get(ref[0])
        return job is not None and job.tasks[ref[1]].state == "ready"

    def _enqueue(self, job: Job, indices: list[int]) -> None:
        """Queue ready tasks on their engines' queues, one queue entry per run of tasks of the same
        route (kind and engine named) and priority. A paused job's are queued at its resume."""
        if job.state == "paused":
            return
        if job.spec.gated:
            self.gates.add_job(job.id, job.spec)  # (once per job: its tasks' limits and locks)
        now_mono = time.monotonic()
        tasks, job_id = job.tasks, job.id
        route = self.engines.route_name
        first = tasks[indices[0]].spec
        kind, engine, priority = first.kind, first.engine, first.priority
        refs: list[Ref] = []
        for i in indices:
            spec = tasks[i].spec
            if spec.kind != kind or spec.priority != priority or spec.engine != engine:
                self.queues[route(kind, engine)].push_many(refs, priority, now_mono)
                kind, engine, priority, refs = spec.kind, spec.engine, spec.priority, []
            refs.append((job_id, i))
        self.queues[route(kind, engine)].push_many(refs, priority, now_mono)

    def kick(self) -> None:
        """Capacity changed (e.g. the pool grew): try to dispatch.

        Loop thread. Only schedules a pump pass (at most one per loop iteration); dispatches nothing itself.
        """
        self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand ready tasks to executors while they have room, best first."""
        self._pump_scheduled = False
        if not self.accepting or self.paused is not None:  # stopping, or paused (pause --all)
            return
        batch: list[tuple[Executor, AttemptSpec]] = []
        jobs = self.jobs
        # What every attempt of a job shares, worked out once per job per pass (its run-as
        # identity, its journal name, the start time of this pass); see _prepare.
        passes: dict[str, _JobPass] = {}
        now: float | None = None
        engines = self.engines.by_name
        outliving = self._outliving
        stalls = self.stalls
        gates = self.gates
        gated = gates.jobs  # (empty unless a job has a max_parallel or locks: then see core.gates)
        for name, queue in self.queues.items():
            executor = engines[name]
            outlives = executor.outlives_daemon
            free = executor.free_slots()
            while free > 0:
                ref = queue.pop()
                if ref is None:  # (empty: no len() per task)
                    break
                job_id, index = ref
                job = jobs[job_id]
                if job.tasks[index].state != "ready":
                    if gates.woken or gates.group_woken or gates.queue_woken:
                        gates.dropped(ref)  # (a promise made to it goes on to the next waiter)
                    continue
                if gated:
                    its = gated.get(job_id)
                    task_gates = its[index] if its is not None else None
                    if task_gates is not None and not gates.admit(ref, task_gates, queue.last_key):
                        continue  # parked: its limit or lock wakes it
                else:
                    task_gates = None
                jp = passes.get(job_id)
                if jp is None:
                    if now is None:
                        now = self.clock()
                    jp = passes[job_id] = self._job_pass(job, now)
                spec = self._prepare(jp, ref, executor)
                if task_gates is not None:
                    gates.hold(spec.attempt_id, job_id, task_gates)
                batch.append((executor, spec))
                if outlives:
                    outliving.add(spec.attempt_id)
                free -= 1
            if free == 0 and queue:  # tasks left waiting for a free slot (for explain)
                if name not in stalls:
                    stalls[name] = self.clock()
            elif stalls:
                stalls.pop(name, None)
        if not batch:
            return
        self.counters["attempts"] += len(batch)
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

    def _job_pass(self, job: Job, now: float) -> _JobPass:
        """What the attempts of ``job`` dispatched in one pump pass share (see :class:`_JobPass`)."""
        sink = self.journal
        if sink is not None and job.id not in sink.named:
            self._name_job(sink, job)  # its names go to the journal before its first start record
        return _JobPass(job, self._run_as(job), now, self._starts_of(job))

    def _prepare(self, jp: _JobPass, ref: Ref, executor: Executor) -> AttemptSpec:
        """Mark task ``ref`` of ``jp.job`` running with a new attempt and describe that attempt.

        The task's only change is the attempt starting: a small log entry goes to the store
        (written ahead by the pump's flush) unless the task has a bigger change waiting.
        """
        job, index = jp.job, ref[1]
        t = job.tasks[index]
        task = t.spec
        if jp.cycling is None:
            attempt_id = f"{t.id}@{jp.run}#{len(t.attempts) + 1}"
        else:  # (the same attempt number comes back in each cycle: the id names the cycle too)
            stamp = jp.cycling.cycle_stamp(index)
            attempt_id = f"{t.id}@{jp.run}{'~' if stamp else ''}{stamp}#{len(t.attempts) + 1}"
        attempt = job.mark_running(index, attempt_id, jp.now)
        if jp.started is not None:
            jp.started.setdefault(index, _STARTED)  # (see Persistence._starts_of)
        job_spec = job.spec
        # Every field by name (AttemptSpec.__init__ with 18 keywords costs 0.95 us, positionally
        # 0.38 us, this 0.21 us on CPython 3.11); test_engines checks that each one is set.
        spec = _new_spec(AttemptSpec)
        spec.attempt_id = attempt_id
        spec.job_id = job.id
        spec.job_name = jp.job_name
        spec.task_id = t.id
        spec.task_name = task.name
        spec.attempt = attempt.number
        spec.kind = task.kind
        spec.call = task.call
        spec.args = task.args
        spec.kwargs = task.kwargs
        spec.cmd = task.cmd
        spec.shell = task.shell
        spec.env = {**job_spec.env, **task.env} if task.env else job_spec.env
        spec.cwd = task.cwd or job_spec.cwd
        spec.python_path = job_spec.python_path
        spec.timeout = task.timeout
        spec.run = jp.run
        spec.priority = task.priority
        spec.user = jp.user
        spec.log_level = task.log_level or jp.level
        spec.kill_grace = task.kill_grace if task.kill_grace is not None else job_spec.kill_grace
        spec.io = task.io
        self.attempts[attempt_id] = ref
        if task.timeout is not None:
            self._timeouts[attempt_id] = self.loop.call_later(
                task.timeout, lambda: self._on_timeout(executor, attempt_id)
            )
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

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        """An executor started the attempt, as ``pid`` (a pool worker's, or a command's) on ``worker``.

        Loop thread (executor event). Sets the running attempt's pid and worker (the pid of an attempt
        whose engine's processes outlive the daemon is committed with the next flush, or
        ``pid_flush_delay`` later: see Executor.recover) and writes the task's start record.
        An unknown attempt (already finished) is ignored. May not start, stop or commit anything.
        """
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        job = self.jobs[ref[0]]
        t = job.tasks[ref[1]]
        if t.state == "running" and t.attempts:  # (TaskRun.running_attempt, inline)
            attempt = t.attempts[-1]
            moved = attempt.worker is not None
            attempt.pid, attempt.worker = pid, worker
            if attempt_id in self._outliving:
                self._outliving.discard(attempt_id)
                if pid is not None:
                    self._touch_pid(job, ref[1])
            elif moved:
                # Handed to a second worker before it started on the first (the pool moves a
                # queued attempt to an idle worker): it is the same start, recorded once.
                return
        # The record is written once the attempt has a process, so it names the worker's pid.
        sink = self.journal
        if sink is not None:
            number, site = self._event_keys(sink, job, journal.encoding.STARTED)
            sink.started(number, ref[1], len(t.attempts), pid or 0, site)
        else:
            message = f'task "{t.spec.name}" attempt {len(t.attempts)} starting'
            fields = {**self._fields(job, ref[1]), "MESSAGE_ID": journal.MessageId.TASK_STARTED}
            if pid is not None:
                fields["PROCPOOL_WORKER_PID"] = str(pid)
            task_log.info(message, extra={"journal_fields": fields})

    def attempt_finished(self, outcome: Outcome) -> None:
        """An attempt ended with ``outcome``: apply it to its task.

        Loop thread (executor event). Removes the attempt from ``attempts``, cancels its timeout, then
        completes, fails, retries (with a delay timer), cancels or re-queues the task (an interrupted
        attempt uses no retry); a free slot schedules a pump. An outcome of an unknown attempt is logged
        and ignored. May not block: it runs inside the executor's callback.
        """
        ref = self.attempts.pop(outcome.attempt_id, None)
        self._outliving.discard(outcome.attempt_id)  # (one that ended before it was reported started)
        if self.gates.by_attempt:
            self.gates.release(outcome.attempt_id)  # its limits' places and locks
        self._attempt_finished(ref, outcome)

    def attempts_finished(self, outcomes: list[Outcome]) -> None:
        """A batch of outcomes (one drain of the pool's result rings), applied in order.

        Runs on the loop's thread. The same state changes as :meth:`attempt_finished` for each
        outcome; completions (most of them) take a short path: one clock reading and one dispatch
        pass for the whole batch, and a run of completions of one job is applied together (one
        :class:`Effects`, one store mark, one enqueue of what they made ready; each task's final
        record and notification still in order). An exception while applying one outcome is
        logged and does not keep the rest of the batch from being applied.
        """
        attempts, jobs, timeouts, outliving = self.attempts, self.jobs, self._timeouts, self._outliving
        holding = self.gates.by_attempt
        now: float | None = None
        job: Job | None = None  # the job of the completions gathered in ``effects``
        effects = Effects()
        for outcome in outcomes:
            aid = outcome.attempt_id
            ref = attempts.get(aid) if outcome.status == "completed" else None
            if ref is None:
                if job is not None:  # what came before is applied before this one
                    self._apply_completions(job, effects)
                    job, effects = None, Effects()
                try:
                    self.attempt_finished(outcome)
                except Exception:
                    log.exception("the outcome of attempt %s could not be applied", aid)
                continue
            del attempts[aid]
            try:
                if holding:
                    self.gates.release(aid)
                if outliving:
                    outliving.discard(aid)
                if timeouts:
                    timer = timeouts.pop(aid, None)
                    if timer is not None:
                        timer.cancel()
                if now is None:
                    now = self.clock()
                its_job = jobs[ref[0]]
                if its_job is not job:
                    if job is not None:
                        self._apply_completions(job, effects)
                    job, effects = its_job, Effects()
                index = ref[1]
                t = its_job.tasks[index]
                if t.state == "running" and t.attempts:  # (TaskRun.running_attempt, inline)
                    attempt = t.attempts[-1]
                    attempt.finished_at, attempt.status = now, "completed"
                its_job.complete(index, now, outcome.result, outcome.exit_code, into=effects)
            except Exception:
                log.exception("the outcome of attempt %s could not be applied", aid)
        if job is not None:
            self._apply_completions(job, effects)
        if now is not None:
            self._schedule_pump()  # slots became free

    def _apply_completions(self, job: Job, effects: Effects) -> None:
        """Apply the gathered effects of completions of ``job`` (an exception is logged)."""
        try:
            self._apply_completion(job, effects)
        except Exception:
            log.exception("the outcomes of %d attempt(s) of job %s could not be applied",
                          len(effects.finished_tasks), job.id)

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
        # (the error comes from the task's process: checked and bounded before anything keeps it)
        error = failures.checked(outcome.error.to_wire()) if outcome.error else None
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
        if self._pause_stopped and outcome.attempt_id in self._pause_stopped:
            self._pause_stopped.discard(outcome.attempt_id)
            if outcome.status == "interrupted" and self.accepting and not (
                t.cancel_requested or job.cancel_requested
            ):
                # Stopped by pause --stop: ready again (queued at the resume), using no retry,
                # and not counted among the daemon's interruptions (max_interruptions) either.
                if attempt is not None:
                    attempt.status = "paused"
                self._retried(job, index, "stopped by pause --stop; it runs again at resume")
                self._apply(job, job.stopped_by_pause(index, error))
                self._schedule_pump()
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
            reason = t.reason or job.reason or "cancelled by request"
            error = failures.stopped(error, "Cancelled", reason)
            effects = job.end_unsuccessfully(index, "cancelled", now, error, outcome.exit_code, reason=reason)
        elif outcome.status == "interrupted":
            # The daemon lost the attempt (not the task's doing): run it again without using a retry.
            effects = job.interrupt(index, now, error, self.max_interruptions)
            self._retried(job, index, f"interrupted ({(error or {}).get('message', 'its worker was lost')}); "
                          f"{'running it again' if effects.ready else 'not run again'}")
        else:
            state: TaskState = "timeout" if outcome.status == "timeout" else "failed"
            if state == "timeout":
                limit = t.spec.timeout
                words = "timed out" if limit is None else f"timed out after {failures.seconds(limit)}"
                error = failures.stopped(error, "Timeout", words)
            if t.failures <= t.spec.retries and not job.cancel_requested:
                # (the exponent is bounded: 2 ** 1000 would not fit a float)
                delay = min(t.spec.retry_delay * 2 ** min(t.failures - 1, 32), RETRY_DELAY_CAP)
                delay *= random.uniform(0.8, 1.2)  # jitter: retries of many tasks do not stampede
                t.error, t.exit_code = error, outcome.exit_code
                job.retry_later(index, now + delay)
                self._retried(job, index, f"{'timed out' if state == 'timeout' else 'failed'}; retrying in "
                              f"{delay:.1f}s: {(error or {}).get('message', '')}")
                self._retry_timers[ref] = self.loop.call_later(delay, lambda: self._retry(ref))
                self._schedule_pump()
                return
            effects = job.end_unsuccessfully(index, state, now, error, outcome.exit_code)
        self._apply(job, effects)
        self._schedule_pump()  # a slot became free

    def _retried(self, job: Job, index: int, text: str) -> None:
        """The record of an attempt that ended with its task to run again (``TASK_RETRIED``)."""
        t = job.tasks[index]
        sink = self.journal
        if sink is None:
            task_log.warning('task "%s" attempt %d %s', t.spec.name, len(t.attempts), text,
                             extra={"journal_fields": {**self._fields(job, index), "MESSAGE_ID": _RETRIED}})
            return
        number, site = self._event_keys(sink, job, journal.encoding.RETRIED)
        # (no worker pid: the record is as it was when it went through ``logging``)
        sink.event(journal.encoding.RETRIED, number, index, len(t.attempts), 0, text, site)

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

    def capacity_changed(self) -> None:
        """An engine can take more attempts (executor event): a pump pass looks again."""
        self._schedule_pump()

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        """The attempt reported progress: stored on its task and written at the next flush.

        Loop thread (executor event). Ignored for an attempt no longer running.
        """
        ref = self.attempts.get(attempt_id)
        if ref is not None:
            job = self.jobs[ref[0]]
            job.tasks[ref[1]].progress = progress
            job.tasks[ref[1]].touched()
            self._touch(job, [ref[1]])

    def attempt_log(
        self, attempt_id: str, stream: Stream, level: int, message: str, fields: dict[str, str] | None = None
    ) -> None:
        """A line of the attempt's output (``stream``) or a log record of its task.

        Loop thread (executor event). Goes to the journal's sink (or through ``logging`` without a
        sink) and into the task's recent lines; ignored for an attempt no longer running.
        Changes nothing that is committed.
        """
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        job = self.jobs[ref[0]]
        t = job.tasks[ref[1]]
        t.remember(message)
        context = t.spec.log_fields
        if context:  # the tree's log context (a task's own extra fields win)
            fields = {**context, **fields} if fields else context
        sink = self.journal
        if sink is not None:
            number = sink.named.get(job.id)
            if number is None:
                number = self._name_job(sink, job)
            attempt = t.attempts[-1] if t.attempts else None
            pid = attempt.pid if attempt is not None and attempt.pid is not None else 0
            sink.line(job.id, t.id, number, ref[1], len(t.attempts), pid, stream, level, message, fields)
            return
        extra = {**self._fields(job, ref[1]), "PROCPOOL_STREAM": stream, **(fields or {})}
        task_log.log(level, "%s", message, extra={"journal_fields": extra})

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        """An operation of a running attempt on its job's namespace; returns its result.

        Loop thread (executor event). Applies ``op`` within ``max_namespace_bytes``; a change is written
        at the next flush. Raises ``conflict`` for an attempt no longer running, and what
        :func:`procpoold.core.namespace.apply` raises for an invalid or too large operation.
        """
        ref = self.attempts.get(attempt_id)
        if ref is None:
            raise ProcpoolError(ErrorCode.CONFLICT, "the attempt is no longer running")
        job = self.jobs[ref[0]]
        sizes = self._ns_sizes.get(job)
        if sizes is None:  # once per job and daemon: later operations cost what they change
            sizes = self._ns_sizes[job] = namespace.Sizes(job.namespace, self.limits.max_namespace_bytes)
        sizes.limit = self.limits.max_namespace_bytes
        result = namespace.apply(job.namespace, op, args, sizes, job.spec.namespace_schema)
        if op not in ("get", "snapshot"):
            self._touch(job, [])
        return result

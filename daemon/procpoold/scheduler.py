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

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.tree import RETRY_DELAY_CAP, parse_job
from procpoold.core import namespace
from procpoold.core.jobs import Effects, Job
from procpoold.core.queue import ReadyQueue
from procpoold.core.states import FINAL_TASK_STATES, JOB_STATES, TaskState
from procpoold.engines import AttemptSpec, Executor, Outcome, Stream
from procpoold.loop import EventLoop, Timer

log = logging.getLogger("procpoold.scheduler")
task_log = logging.getLogger("procpoold.task")

Ref = tuple[str, int]  # (job id, task index)
Listener = Callable[[str], None]


def not_found(what: str) -> ProcpoolError:
    return ProcpoolError(ErrorCode.NOT_FOUND, f"no job or task {what!r}", "list jobs with 'procctl status'")


class Scheduler:
    """Jobs, queues, attempts; see the module docstring."""

    def __init__(self, loop: EventLoop, executors: dict[str, Executor], aging: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.loop = loop
        self.executors = executors  # by task kind: "call", "cmd"
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, str] = {}
        self._next_id = 1
        self.queues: dict[str, ReadyQueue[Ref]] = {kind: ReadyQueue(aging) for kind in executors}
        self.attempts: dict[str, Ref] = {}
        self._timeouts: dict[str, Timer] = {}
        self._retry_timers: dict[Ref, Timer] = {}
        self._pump_scheduled = False
        self.accepting = True
        #: called with a job or task id whenever that job or task reaches a final state
        self.listeners: list[Listener] = []
        self._after: dict[str, list[str]] = {}  # prerequisite id -> job ids waiting on it
        self.counters = {"submitted": 0, "attempts": 0, "completed": 0, "failed": 0}

    # -- submission ---------------------------------------------------------------------------

    def submit(self, raw: dict[str, Any], uid: int | None = None, after: list[str] | None = None
               ) -> tuple[Job, bool]:
        """Validate and accept a job; returns (job, existing) where existing means a known key."""
        if not self.accepting:
            raise ProcpoolError(ErrorCode.SHUTTING_DOWN, "procpoold is stopping and takes no new jobs",
                                "submit again once it has restarted")
        spec = parse_job(raw)
        if spec.key is not None and spec.key in self.keys:
            return self.jobs[self.keys[spec.key]], True
        for ref in after or []:
            self.resolve(ref)  # unknown prerequisites are an error now, not a hang later
        job_id = str(self._next_id)
        self._next_id += 1
        job = Job(job_id, spec, raw, self.clock(), uid, after)
        self.jobs[job_id] = job
        if spec.key is not None:
            self.keys[spec.key] = job_id
        self.counters["submitted"] += 1
        log.info('job %s "%s" submitted: %d tasks', job_id, spec.name, len(job.tasks),
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job_id, "PROCPOOL_JOB_NAME": spec.name}})
        self._start_when_prerequisites_allow(job)
        return job, False

    def _start_when_prerequisites_allow(self, job: Job) -> None:
        pending = []
        for ref in job.after:
            state = self._state_of(ref)
            if state == "completed":
                continue
            if state in FINAL_TASK_STATES or state in ("failed", "cancelled"):  # finished, unsuccessfully
                self._apply(job, job.fail_before_start(f'upstream "{ref}" {state}', self.clock()))
                return
            pending.append(ref)
        if pending:
            for ref in pending:
                self._after.setdefault(ref, []).append(job.id)
            return
        self._apply(job, job.start_run(self.clock()))

    def _state_of(self, ref: str) -> str:
        job, index = self.resolve(ref)
        return job.state if index is None else job.tasks[index].state

    def resolve(self, ref: str) -> tuple[Job, int | None]:
        """A job id (``"12"``), a task id (``"12.3"``) or ``"12/taskname"``."""
        if "/" in ref:
            job_id, _, name = ref.partition("/")
            job = self.jobs.get(job_id)
            if job is None or name not in job.by_name:
                raise not_found(ref)
            return job, job.by_name[name]
        job_id, dot, index = ref.partition(".")
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found(ref)
        if not dot:
            return job, None
        if not index.isdigit() or int(index) >= len(job.tasks):
            raise not_found(ref)
        return job, int(index)

    # -- cancel -------------------------------------------------------------------------------

    def cancel(self, ref: str) -> dict[str, Any]:
        job, index = self.resolve(ref)
        if job.finished:
            raise ProcpoolError(ErrorCode.CONFLICT, f"job {job.id} already {job.state}")
        now = self.clock()
        if index is None:
            effects = job.cancel(now)
            if job.state == "pending":  # still waiting for prerequisites
                effects.merge(job.fail_before_start("cancelled by request", now))
                job.cancel_requested = True
        else:
            if job.tasks[index].state in FINAL_TASK_STATES:
                raise ProcpoolError(ErrorCode.CONFLICT,
                                    f"task {job.tasks[index].id} already {job.tasks[index].state}")
            effects = job.cancel(now, [index])
        for ref_ in [(job.id, i) for i in effects.finished_tasks]:
            self._forget_queued(ref_)
        stopping = list(effects.stop)
        self._apply(job, effects)
        log.info("cancel %s: %d running attempt(s) being stopped", ref, len(stopping),
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id}})
        return {"id": ref, "stopping": len(stopping)}

    def _forget_queued(self, ref: Ref) -> None:
        for q in self.queues.values():
            q.discard(ref)
        timer = self._retry_timers.pop(ref, None)
        if timer is not None:
            timer.cancel()

    # -- the engine room ----------------------------------------------------------------------

    def _apply(self, job: Job, effects: Effects) -> None:
        now_mono = time.monotonic()
        for i in effects.ready:
            spec = job.tasks[i].spec
            self.queues[spec.kind].push((job.id, i), spec.priority, now_mono)
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

    def _task_final(self, job: Job, index: int) -> None:
        t = job.tasks[index]
        fields = self._fields(job, index)
        if t.state == "completed":
            self.counters["completed"] += 1
            task_log.info('task "%s" completed', t.spec.name, extra={"journal_fields": fields})
        elif t.state in ("skipped", "cancelled"):
            task_log.info('task "%s" %s: %s', t.spec.name, t.state, t.reason, extra={"journal_fields": fields})
        else:
            self.counters["failed"] += 1
            msg = (t.error or {}).get("message", "")
            task_log.warning('task "%s" %s after %d attempt(s): %s', t.spec.name, t.state, len(t.attempts),
                             msg, extra={"journal_fields": fields})
        self._notify(t.id)

    def _run_finished(self, job: Job) -> None:
        now = self.clock()
        if job.finish_run(now):
            log.info("job %s run %d starting", job.id, job.run, extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id}})
            # Start the next run from the loop, not from inside the previous run's last callback.
            self.loop.call_soon(lambda: self._apply(job, job.start_run(self.clock())) if not job.finished else None)
            return
        log.info('job %s "%s" %s', job.id, job.spec.name, job.state,
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, "PROCPOOL_JOB_NAME": job.spec.name}})
        self._notify(job.id)
        for waiting_id in self._after.pop(job.id, []):
            self._prerequisite_done(waiting_id)

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

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand ready tasks to executors while they have room, best first."""
        self._pump_scheduled = False
        if not self.accepting:
            return
        for kind, queue in self.queues.items():
            executor = self.executors[kind]
            free = executor.free_slots()
            while free > 0 and queue:
                ref = queue.pop()
                if ref is None:
                    break
                job = self.jobs[ref[0]]
                if job.tasks[ref[1]].state != "ready":
                    continue
                self._dispatch(job, ref[1], executor)
                free -= 1

    def _dispatch(self, job: Job, index: int, executor: Executor) -> None:
        t = job.tasks[index]
        attempt_id = f"{t.id}@{job.run}#{len(t.attempts) + 1}"
        attempt = job.mark_running(index, attempt_id, self.clock())
        spec = AttemptSpec(
            attempt_id=attempt_id, job_id=job.id, job_name=job.spec.name, task_id=t.id, task_name=t.spec.name,
            attempt=attempt.number, kind=t.spec.kind, call=t.spec.call, args=t.spec.args, kwargs=t.spec.kwargs,
            cmd=t.spec.cmd, shell=t.spec.shell, env={**job.spec.env, **t.spec.env},
            cwd=t.spec.cwd or job.spec.cwd, python_path=job.spec.python_path, timeout=t.spec.timeout, run=job.run,
        )
        self.attempts[attempt_id] = (job.id, index)
        self.counters["attempts"] += 1
        if t.spec.timeout is not None:
            self._timeouts[attempt_id] = self.loop.call_later(
                t.spec.timeout, lambda: executor.stop_attempt(attempt_id, "timeout"))
        task_log.info('task "%s" attempt %d starting', t.spec.name, attempt.number,
                      extra={"journal_fields": self._fields(job, index)})
        executor.submit(spec)

    def _fields(self, job: Job, index: int) -> dict[str, str]:
        t = job.tasks[index]
        return {"PROCPOOL_JOB_ID": job.id, "PROCPOOL_JOB_NAME": job.spec.name, "PROCPOOL_TASK_ID": t.id,
                "PROCPOOL_TASK_NAME": t.spec.name, "PROCPOOL_ATTEMPT": str(len(t.attempts))}

    # -- ExecutorEvents -----------------------------------------------------------------------

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        attempt = self.jobs[ref[0]].tasks[ref[1]].running_attempt
        if attempt is not None:
            attempt.pid, attempt.worker = pid, worker

    def attempt_finished(self, outcome: Outcome) -> None:
        ref = self.attempts.pop(outcome.attempt_id, None)
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
        if outcome.status == "completed":
            effects = job.complete(index, now, outcome.result, outcome.exit_code)
        elif outcome.status == "cancelled" or t.cancel_requested:
            effects = job.end_unsuccessfully(index, "cancelled", now, error, outcome.exit_code,
                                             reason=job.reason or "cancelled by request")
        else:
            state: TaskState = "timeout" if outcome.status == "timeout" else "failed"
            if state == "timeout" and error is None:
                error = {"type": "Timeout", "message": f"attempt ran longer than {t.spec.timeout:g}s",
                         "traceback": ""}
            if len(t.attempts) <= t.spec.retries and not job.cancel_requested:
                delay = min(t.spec.retry_delay * 2 ** (len(t.attempts) - 1), RETRY_DELAY_CAP)
                delay *= random.uniform(0.8, 1.2)  # jitter: retries of many tasks do not stampede
                t.error, t.exit_code = error, outcome.exit_code
                job.retry_later(index, now + delay)
                task_log.warning('task "%s" attempt %d %s; retrying in %.1fs: %s', t.spec.name, len(t.attempts),
                                 "timed out" if state == "timeout" else "failed", delay,
                                 (error or {}).get("message", ""), extra={"journal_fields": self._fields(job, index)})
                self._retry_timers[ref] = self.loop.call_later(delay, lambda: self._retry(ref))
                self._schedule_pump()
                return
            effects = job.end_unsuccessfully(index, state, now, error, outcome.exit_code)
        self._apply(job, effects)
        self._schedule_pump()  # a slot became free

    def _retry(self, ref: Ref) -> None:
        self._retry_timers.pop(ref, None)
        job = self.jobs.get(ref[0])
        if job is not None and job.retry_due(ref[1]):
            self._apply(job, Effects(ready=[ref[1]]))

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        ref = self.attempts.get(attempt_id)
        if ref is not None:
            self.jobs[ref[0]].tasks[ref[1]].progress = progress

    def attempt_log(self, attempt_id: str, stream: Stream, level: int, message: str,
                    fields: dict[str, str] | None = None) -> None:
        ref = self.attempts.get(attempt_id)
        if ref is None:
            return
        job = self.jobs[ref[0]]
        t = job.tasks[ref[1]]
        t.tail.append(message)
        extra = {**self._fields(job, ref[1]), "PROCPOOL_STREAM": stream, **(fields or {})}
        task_log.log(level, "%s", message, extra={"journal_fields": extra})

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        ref = self.attempts.get(attempt_id)
        if ref is None:
            raise ProcpoolError(ErrorCode.CONFLICT, "the attempt is no longer running")
        return namespace.apply(self.jobs[ref[0]].namespace, op, args)

    # -- queries ------------------------------------------------------------------------------

    def job_list(self, state: str | None = None, since: float | None = None, limit: int | None = None
                 ) -> list[dict[str, Any]]:
        if state is not None and state not in JOB_STATES:
            raise ProcpoolError(ErrorCode.INVALID_ARGUMENT, f"unknown job state {state!r}",
                                f"use one of {', '.join(JOB_STATES)}")
        jobs = [j for j in self.jobs.values()
                if (state is None or j.state == state) and (since is None or j.created_at >= since)]
        if limit is not None:
            jobs = jobs[-limit:]
        return [j.summary() for j in jobs]

    def by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs.values():
            out[j.state] = out.get(j.state, 0) + 1
        return out

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def running(self) -> int:
        return len(self.attempts)

    def finished_status(self, ref: str) -> dict[str, Any]:
        """The status a ``wait`` returns: the job's, or the task's with its job summary."""
        job, index = self.resolve(ref)
        if index is None:
            return {"id": ref, "finished": job.finished, "state": job.state, "status": job.status()}
        t = job.tasks[index]
        return {"id": ref, "finished": t.state in FINAL_TASK_STATES, "state": t.state,
                "task": job.task_status(t), "job": job.summary()}

    def stop_accepting(self) -> None:
        self.accepting = False

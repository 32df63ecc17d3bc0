"""The scheduler: owns every job, the ready queues and the attempts in flight.

Runs on the daemon's loop thread. It turns job state changes
(:class:`~procpoold.core.jobs.Effects`) into actions: ready tasks go into the
ready queue of their kind (``call`` or ``cmd``); a coalesced *pump* (one per
loop iteration, however many changes happened) hands queued tasks to their
executor while it has free slots, highest priority first; timeouts and retry
delays are loop timers. Executors report back through the
:class:`~procpoold.engines.ExecutorEvents` methods.

:class:`Scheduler` is split by responsibility into mixins over one state
(:class:`procpoold.scheduler.state.SchedulerState`), as the pool executor is:

- :mod:`.submission`: submit (validation, keys, quota, prerequisites), cancel, resume;
- :mod:`.pausing`: pause and resume of a job or of the whole daemon;
- :mod:`.attempts`: the pump and dispatch, the executor events, retries, timeouts;
- :mod:`.persistence`: what changed, and the group commit of it to the store;
- :mod:`.recovery`: jobs read back from the store at start, leftovers of a crash;
- :mod:`.queries`: finished jobs (index, cache, retention) and status queries;
- :mod:`.explain`: why a task is in its state (``procctl explain``);
- :mod:`.timing`: jobs that wait for their next run's time (``schedule``, ``every``);
- :mod:`.cycles`: nodes that wait for their next cycle (``repeat``/``every`` on a group or task);

and this module, the engine room: carrying out the state changes a job returns.
"""

from __future__ import annotations

import logging

from procpool.contract.words import plural
from procpoold import failures, journal
from procpoold.core.jobs import Effects, Job
from procpoold.scheduler.attempts import Attempts
from procpoold.scheduler.cycles import NodeCycles
from procpoold.scheduler.explain import Explain
from procpoold.scheduler.pausing import Pausing
from procpoold.scheduler.persistence import Persistence
from procpoold.scheduler.queries import Queries
from procpoold.scheduler.recovery import Recovery
from procpoold.scheduler.state import _user_fields, log, task_log
from procpoold.scheduler.submission import Submission
from procpoold.scheduler.timing import Schedules


class Scheduler(Submission, Attempts, Persistence, Recovery, Queries, Explain, Schedules, Pausing,
                NodeCycles):
    """Jobs, queues, attempts; see the module docstring.

    The parts (mixins over :class:`~procpoold.scheduler.state.SchedulerState`): submission, attempts,
    persistence, recovery, retention and queries. This class holds the engine room: carrying out
    the state changes a job returns (:class:`~procpoold.core.jobs.Effects`).
    """

    def _apply(self, job: Job, effects: Effects) -> None:
        # "ready" is derived again at recovery, so only final states need writing here.
        self._touch(job, effects.finished_tasks)
        if effects.cycled is not None:  # (a node's cycle ended or began: core.cycles)
            self._cycled(job, effects.cycled)
        if effects.ready:
            self._enqueue(job, effects.ready)
        for attempt_id in effects.stop:
            ref = self.attempts.get(attempt_id)
            if ref is not None:
                spec = job.tasks[ref[1]].spec
                self.engines.route(spec.kind, spec.engine).stop_attempt(attempt_id, "cancelled")
        for i in effects.finished_tasks:
            self._forget_queued((job.id, i))
            self._task_final(job, i)
        if effects.run_finished:
            self._run_finished(job)
        if effects.ready:
            self._schedule_pump()

    def _apply_completion(self, job: Job, effects: Effects) -> None:
        """:meth:`_apply` for the effects of :meth:`Job.complete` of tasks whose attempts were running.

        The same steps in the same order, less what cannot apply: such a task is in no ready queue
        (the pump took it out) and has no retry timer (it only has one while waiting to be ready
        again), and completing a task stops no attempt and finishes no other task.
        """
        finished = effects.finished_tasks
        self._touch(job, finished)
        if effects.cycled is not None:  # (a node's cycle ended: core.cycles)
            self._cycled(job, effects.cycled)
        if effects.ready:
            self._enqueue(job, effects.ready)
        self._completed_final(job, finished)
        if effects.run_finished:
            self._run_finished(job)
        if effects.ready:
            self._schedule_pump()

    def _completed_final(self, job: Job, indices: list[int]) -> None:
        """:meth:`_task_final` of tasks that completed, in order: their counter, their COMPLETED
        events (the job's journal number and the site looked up once) and their notices.
        One task's failure here spares the others' (see attempts_finished)."""
        sink = self.journal
        if sink is None:
            for i in indices:
                try:
                    self._task_final(job, i)
                except Exception:
                    log.exception("the final record of task %s could not be made", job.tasks[i].id)
            return
        self.counters["completed"] += len(indices)
        self.metrics.completed(job.tasks, indices)
        code = journal.encoding.COMPLETED
        number, site = self._event_keys(sink, job, code)
        tasks, event, notify = job.tasks, sink.event, self._notify
        for i in indices:
            t = tasks[i]
            try:
                attempts = t.attempts
                pid = attempts[-1].pid if attempts else None
                event(code, number, i, len(attempts), pid or 0, "", site)
                notify(t.id)
            except Exception:
                log.exception("the final record of task %s could not be made", t.id)

    def _task_final(self, job: Job, index: int) -> None:
        t = job.tasks[index]
        if t.state == "completed":
            self.counters["completed"] += 1
        elif t.state not in ("skipped", "cancelled"):
            self.counters["failed"] += 1
        self.metrics.ended(t)
        sink = self.journal
        code = journal.encoding.FINAL_EVENTS.get(t.state)
        if sink is not None and code is not None:  # a few integers in this iteration's events
            number, site = self._event_keys(sink, job, code)
            attempt = t.attempts[-1] if t.attempts else None
            pid = attempt.pid if attempt is not None and attempt.pid is not None else 0
            if code == journal.encoding.COMPLETED:
                text = ""
            elif code in (journal.encoding.SKIPPED, journal.encoding.CANCELLED):
                text = str(t.reason)
            else:
                text = failures.log_text(t.error)  # (with a call's traceback: bounded, see failures)
            sink.event(code, number, index, len(t.attempts), pid, text, site)
        else:
            self._task_final_record(job, index)
        self._notify(t.id)

    def _task_final_record(self, job: Job, index: int) -> None:
        """A task's final record through ``logging`` (no journal sink: tests)."""
        t = job.tasks[index]
        if t.state == "completed":
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
            message_id = (
                journal.MessageId.TASK_TIMED_OUT if t.state == "timeout" else journal.MessageId.TASK_FAILED
            )
            level = logging.ERROR
            message = (
                f'task "{t.spec.name}" {t.state} after {plural(len(t.attempts), "attempt")}: '
                f"{failures.log_text(t.error)}"
            )
        fields = {**self._fields(job, index), "MESSAGE_ID": message_id}
        task_log.log(level, "%s", message, extra={"journal_fields": fields})

    def _name_job(self, sink: journal.LogSink, job: Job) -> int:
        """Send the job's fields and every task name to the journal (once per job); its number."""
        return sink.name_job(job.id, {"PROCPOOL_JOB_NAME": job.spec.name, **_user_fields(job)},
                             [t.spec.name for t in job.tasks])

    def _run_finished(self, job: Job) -> None:
        now = self.clock()
        self._touch(job, [])
        if job.finish_run(now):
            if self._after_run(job, now):  # a schedule or an interval: it waits (scheduled)
                return
            log.info(
                "job %s run %d starting",
                job.id,
                job.run,
                extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}},
            )
            # Start the next run from the loop, not from inside the previous run's last callback.
            self.loop.call_soon(lambda: self._start_next_run(job))
            return
        self._job_ended(job, now)

    def _job_ended(self, job: Job, now: float) -> None:
        """A job reached its final state: record it, index it, release its quota, notify."""
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
        self.gates.forget_job(job.id)
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

    def stop_accepting(self) -> None:
        """The daemon is stopping: refuse new jobs and dispatch nothing more.

        Loop thread. Running attempts are left to the executors' shutdown; their tasks stay
        ``running`` in the store so the next start applies each job's ``on_interrupt`` policy.
        """
        self.accepting = False

"""Runs on a clock: a job's ``schedule`` (cron, in a time zone) and ``every`` (a pause between runs).

Such a job is ``scheduled`` while it waits for its next run: before its first run (a
``schedule``: the first time it names after the submit), and between runs (``every``: that many
seconds after the previous run ended; ``schedule``: the first time it names after the previous
run ended, so runs never overlap and a run longer than the period skips the times it spans). The
wait is one loop timer per job: an idle daemon sleeps until the earliest. Times are wall clock
(``self.clock``); a timer that fires early (the clock was set back) is armed again.

The next run's time is stored with the job: after a restart, a job whose time passed while the
daemon was down follows its ``missed`` policy: ``run_once`` (default) starts one run at once,
however many times passed; ``skip`` waits for the next time still to come (for ``every``, the
next time on the job's cadence).
"""

from __future__ import annotations

import logging
import time

from procpool.contract.schedule import ScheduleError, next_interval, next_time
from procpoold.core.jobs import Effects, Job
from procpoold.scheduler.state import SchedulerState, _user_fields, log

#: A timer's delay is at most this many seconds: the wall clock is read again when it fires, so a
#: clock set forward (or a suspended machine woken) starts a run at most this late.
MAX_TIMER_DELAY = 60.0


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(when))


class Schedules(SchedulerState):
    """Jobs that wait for the start time of a run (``scheduled``)."""

    def _runs_on_a_clock(self, job: Job) -> bool:
        spec = job.spec
        return spec.schedule is not None or spec.every is not None

    def _begin_first_run(self, job: Job) -> None:
        """Start a job's first run now, or (a ``schedule``) wait for its first time."""
        if job.spec.schedule is None:
            self._apply(job, job.start_run(self.clock()))
            return
        self._wait_for_run(job, self._next_slot(job, self.clock()))

    def _after_run(self, job: Job, now: float) -> bool:
        """A run of a job on a clock ended and another is due: wait for it (True), or not a job
        on a clock (False: the next run starts at once)."""
        if not self._runs_on_a_clock(job):
            return False
        self._wait_for_run(job, self._next_slot(job, now))
        return True

    def _next_slot(self, job: Job, after: float) -> float:
        spec = job.spec
        if spec.schedule is not None:
            try:
                return next_time(spec.schedule, spec.timezone, after)
            except ScheduleError:  # checked at submit; a zone's rules may have changed since
                log.exception("job %s: schedule %r has no next time; its next run starts now",
                              job.id, spec.schedule)
                return after
        assert spec.every is not None
        return after + spec.every

    def _wait_for_run(self, job: Job, when: float) -> None:
        job.wait_for_run(when)
        self._touch(job, [])
        paused = job.state == "paused"  # (its run ended while paused: the wait begins at its resume)
        log.info(
            "job %s waits for run %d at %s%s",
            job.id,
            job.run,
            _stamp(when),
            " (paused: from its resume)" if paused else "",
            extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}},
        )
        if not paused:
            self._arm(job)

    def _arm(self, job: Job) -> None:
        self._disarm(job.id)
        when = job.next_run_at
        assert when is not None
        delay = min(max(0.0, when - self.clock()), MAX_TIMER_DELAY)
        job_id = job.id
        self._schedule_timers[job_id] = self.loop.call_later(delay, lambda: self._run_due(job_id))

    def _run_due(self, job_id: str) -> None:
        """A job's timer fired: start its run if its time has come (else wait on)."""
        self._schedule_timers.pop(job_id, None)
        job = self.jobs.get(job_id)
        if job is None or job.state != "scheduled" or job.next_run_at is None:
            return
        if self.clock() < job.next_run_at:  # early: the clock was set back, or a long wait
            self._arm(job)
            return
        self._start_scheduled(job)

    def _start_scheduled(self, job: Job) -> None:
        job.next_run_at = None
        log.info("job %s run %d starting", job.id, job.run,
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        effects = job.start_run(self.clock())
        # Every task's stored row may still describe the previous run: write them all as reset.
        self._touch(job, list(range(len(job.tasks))))
        self._apply(job, effects)

    def wake_due(self) -> int:
        """Start every ``scheduled`` job whose time has come (the timers do it; this is for a
        clock that moved, and for tests with a clock of their own); returns how many started."""
        now = self.clock()
        due = [j for j in self.jobs.values() if j.state == "scheduled" and (j.next_run_at or 0) <= now]
        for job in due:
            self._disarm(job.id)
            self._start_scheduled(job)
        return len(due)

    def _recover_scheduled(self, job: Job, cause: str = "while the daemon was down") -> None:
        """A ``scheduled`` job read back at start, or released from a pause (``cause`` says which):
        apply its ``missed`` policy, then wait."""
        when = job.next_run_at
        assert when is not None
        now = self.clock()
        if when <= now:
            if job.spec.missed == "skip":
                spec = job.spec
                if spec.schedule is not None:
                    later = self._next_slot(job, now)
                else:
                    assert spec.every is not None
                    later = next_interval(spec.every, when - spec.every, now, "skip")
                log.info("job %s: its run at %s was missed %s; skipped (missed: skip)",
                         job.id, _stamp(when), cause)
                self._wait_for_run(job, later)
                return
            log.info("job %s: its run at %s was missed %s; it runs now (missed: run_once)",
                     job.id, _stamp(when), cause)
        self._arm(job)

    def _end_scheduled(self, job: Job, reason: str, cancelled: bool) -> Effects:
        """Cancel (or stop) a ``scheduled`` job: its timer goes, no run starts."""
        self._disarm(job.id)
        log.log(logging.INFO, "job %s ends while waiting for run %d: %s", job.id, job.run, reason,
                extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        return job.end_while_scheduled(self.clock(), reason, cancelled)

"""Persistence: what changed, and the group commit of it to the store."""

from __future__ import annotations

from collections.abc import Callable

from procpoold.core import status
from procpoold.core.jobs import Job
from procpoold.scheduler.state import _CHANGED, _FULL, _STARTED, LOG_SLACK, SchedulerState, _job_row, log


class Persistence(SchedulerState):
    """What changed since the last commit, and the group commit that writes it to the store."""

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

    def _starts_of(self, job: Job) -> dict[int, int] | None:
        """Where attempts of ``job`` starting in this iteration are noted, before the next flush.

        The caller sets ``setdefault(index, _STARTED)`` for each: a task whose only change is
        that an attempt started gets a small log entry (see :meth:`Job.start_entry`). The dict
        is good until that flush; None without a store.
        """
        if self.store is None:
            return None
        self._schedule_flush()
        return self._dirty.setdefault(job.id, {})

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

    def durable_now(self) -> bool:
        """Whether every change made so far is in the store (no commit pending)."""
        return self.store is None or not self._flush_scheduled

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every change made so far is in the store: at once when no commit
        is pending, else right after the commit this iteration has scheduled.

        For answers that report a state (a finished job to its waiters): a client must not be told
        of a completion that a crash between the answer and the commit would undo, and run again.
        """
        if self.durable_now():
            callback()
        else:
            self._after_flush.append(callback)

    def _scheduled_flush(self) -> None:
        if self._flush_scheduled:  # else a write-ahead flush in this iteration took it over
            self.flush()

    def flush(self) -> None:
        """Group commit: everything changed since the last flush, in one transaction.

        A job's row is rewritten only when its own fields changed. Task changes are appended
        to the job's task log; when the log would grow past twice the job's size (plus a
        little), a snapshot of every task replaces it (see procpoold.store.sqlite).

        Loop thread. Clears the dirty sets and then drops the Job objects of jobs that finished
        (see ``_retire``). Blocks for the store's commit; changes no job's state. Does nothing
        without a store.
        """
        self._flush_scheduled = False
        store = self.store
        if store is None:
            return
        sink = self.journal
        if sink is not None:
            sink.seal()  # this iteration's lifecycle events: into this entry (see on_events)
            store.events_written(sink.acked)
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
        if self._after_flush:
            after, self._after_flush = self._after_flush, []
            for callback in after:
                try:
                    callback()
                except Exception:  # one failing answer must not keep the others from theirs
                    log.exception("a callback after the commit failed")

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

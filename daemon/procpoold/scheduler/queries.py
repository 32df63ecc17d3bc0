"""Retention and queries: finished jobs, the cache of those read back, status."""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import re
from collections.abc import Callable
from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import shorten
from procpool.contract.status import View
from procpoold.core import status
from procpoold.core.jobs import FinishedJob, Job
from procpoold.core.states import FINAL_TASK_STATES, JOB_STATES
from procpoold.scheduler.state import LOADED_CACHE, LOADED_TASKS, SchedulerState, log, not_found


class Queries(SchedulerState):
    """Finished jobs (the index, the few read back lately, retention) and the queries of status."""

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

    def _state_of(self, ref: str) -> str:
        entry = self.finished.get(ref)
        if entry is not None:  # a finished job: no need to read it back
            return entry.state
        job, index = self.resolve(ref)
        return job.state if index is None else job.tasks[index].state

    def resolve(self, ref: str) -> tuple[Job, int | None]:
        """A job id (``"12"``), a task id (``"12.3"``) or ``"12/taskname"``.

        Loop thread. Returns the job and the task index (None for a job); raises ``not_found``. May read
        a finished job back from the store (and keep it among the few cached); changes no job.
        """
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

    def _index_finished(self, entry: FinishedJob) -> None:
        self.finished[entry.id] = entry
        self._finished_by_uid.setdefault(entry.uid, {})[entry.id] = None
        self._finished_states[entry.state] = self._finished_states.get(entry.state, 0) + 1

    def _unindex_finished(self, job_id: str) -> FinishedJob:
        """Take a finished job out of the index (a retry makes it run again, a removal drops it);
        its key stays. Returns its entry."""
        entry = self.finished.pop(job_id)
        self._finished_states[entry.state] -= 1
        own = self._finished_by_uid.get(entry.uid)
        if own is not None:
            own.pop(job_id, None)
            if not own:
                del self._finished_by_uid[entry.uid]
        self._loaded.pop(job_id, None)
        return entry

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
            entry = self._unindex_finished(job_id)
            self._job_rows.pop(job_id, None)
            self.jobs.pop(job_id, None)
            if entry.key is not None and self.keys.get(entry.key) == job_id:
                del self.keys[entry.key]
        if self.journal is not None:
            self.journal.jobs_removed(job_ids)  # their logs (files, tails) go with them
        return job_ids

    def clean(
        self, state: str | None = None, before: float | None = None, owner: int | None = None
    ) -> tuple[list[str], int]:
        """Remove finished jobs (optionally only in ``state`` or finished before ``before``).

        With ``owner``, only the jobs that uid submitted. Returns the ids removed and how many
        other finished jobs matched but were left (another user's).

        Loop thread. Commits pending changes, then deletes the jobs from the store, the index and the
        key table. Never removes an unfinished job.
        """
        matching = [
            e
            for e in self.finished.values()
            if (state is None or e.state == state) and (before is None or e.finished_at < before)
        ]
        victims = [e.id for e in matching if owner is None or e.uid == owner]
        return self._drop_jobs(victims), len(matching) - len(victims)

    def job_list(
        self,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        name: str | None = None,
        uid: int | None = None,
        tag: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Summaries of the jobs that match, newest first (at most ``limit`` and
        ``status_page_size``), and how many match in all.

        Loop thread. Filters: ``state``; created at or after ``since``; ``name`` (a shell pattern,
        as fnmatch: ``nightly-*``; a name without ``*?[`` matches itself only); submitted by
        ``uid``; carrying ``tag`` (see Job.tag_list). Unfinished jobs come from memory, finished
        ones from the index (their summaries read from the store; a finished job's tags the first
        time a tag filter needs them); changes nothing. Raises ``invalid_argument`` for an
        unknown state.
        """
        if state is not None and state not in JOB_STATES:
            raise ProcpoolError(
                ErrorCode.INVALID_ARGUMENT,
                f"unknown job state {shorten(state, 64)}",
                f"use one of {', '.join(JOB_STATES)}",
            )
        named = _name_matcher(name)
        if tag is not None:
            self._read_tags()
        live = [
            (int(j.id), j.id, j)
            for j in self.jobs.values()
            if j.id not in self.finished
            and (state is None or j.state == state)
            and (since is None or j.created_at >= since)
            and (uid is None or j.submitter_uid == uid)
            and (named is None or named(j.spec.name))
            and (tag is None or tag in j.tag_list())
        ]
        if uid is not None and state is None and since is None and named is None and tag is None:
            done_entries: Any = (self.finished[i] for i in self._finished_by_uid.get(uid, {}))
        else:
            done_entries = self.finished.values()
        done = [
            (int(e.id), e.id, None)
            for e in done_entries
            if (state is None or e.state == state)
            and (since is None or e.created_at >= since)
            and (uid is None or e.uid == uid)
            and (named is None or named(e.name))
            and (tag is None or tag in (e.tags or ()))
        ]
        # Newest first up to the limit (at most status_page_size): unfinished jobs from memory,
        # finished ones from the index, their summaries read from the store.
        cap = self.status_page_size if limit is None else max(0, min(limit, self.status_page_size))
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
        return out, len(live) + len(done)

    def _read_tags(self) -> None:
        """Give every finished job of the index its tags (read from the stored summaries of those
        indexed at start, once each)."""
        missing = [e.id for e in self.finished.values() if e.tags is None]
        if not missing:
            return
        stored = self.store.summaries(missing) if self.store is not None else {}
        for job_id in missing:
            tags = (stored.get(job_id) or {}).get("tags")
            self.finished[job_id].tags = tuple(t for t in tags if isinstance(t, str)) if isinstance(
                tags, list) else ()

    def by_state(self) -> dict[str, int]:
        """How many jobs are in each state (unfinished and finished); loop thread, changes nothing."""
        out: dict[str, int] = {}
        for j in self.jobs.values():
            if j.id not in self.finished:
                out[j.state] = out.get(j.state, 0) + 1
        for state, n in self._finished_states.items():
            if n:
                out[state] = out.get(state, 0) + n
        return out

    def queued(self) -> int:
        """How many tasks wait in the ready queues; loop thread, changes nothing."""
        return sum(len(q) for q in self.queues.values())

    def running(self) -> int:
        """How many attempts are in flight; loop thread, changes nothing."""
        return len(self.attempts)

    def is_finished(self, ref: str) -> bool:
        """Whether a job or task has reached a final state (cheap: no status is built).

        Loop thread; raises ``not_found`` for an unknown id. Changes nothing.
        """
        if ref in self.finished:
            return True
        job, index = self.resolve(ref)
        return job.finished if index is None else job.tasks[index].state in FINAL_TASK_STATES

    def finished_status(
        self, ref: str, view: View = "full", changes_since: str | None = None
    ) -> dict[str, Any]:
        """The status a ``wait`` returns: the job's (its first page in ``view``; Client.wait fetches
        the others; with ``changes_since`` what changed since that cursor), or the task's with its
        job summary.

        Loop thread; raises ``not_found``. May read a finished job back from the store; changes
        nothing (but may start the job's change log: core.changes).
        """
        job, index = self.resolve(ref)
        if index is None:
            return {**status.wait_reply(job, view, self.status_page_size, changes_since), "id": ref}
        return {**status.task_reply(job, index), "id": ref}


def _name_matcher(pattern: str | None) -> Callable[[str], bool] | None:
    """A job name filter: a shell pattern (``*``, ``?``, ``[...]``) or, without those, the name."""
    if pattern is None:
        return None
    if not any(c in pattern for c in "*?["):
        return lambda name: name == pattern
    rx = re.compile(fnmatch.translate(pattern))
    return lambda name: rx.match(name) is not None

"""Recovery: the jobs the store holds, read back at start or on demand."""

from __future__ import annotations

from typing import Any

from procpool.contract.limits import CEILINGS, shorten
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Effects, FinishedJob, Job, scoped_key
from procpoold.engines import LeftAttempt
from procpoold.identity import user_name
from procpoold.journal.encoding import ITEM_INTS, unpack_events
from procpoold.scheduler.state import SchedulerState, _job_row, log
from procpoold.store.protocol import StoredJob


class Recovery(SchedulerState):
    """Reading jobs back from the store: every unfinished one at start (and the finished index),
    a finished one on demand; handing what a crashed daemon left running to its engines.
    """

    def _restore(self, stored: StoredJob) -> Job:
        """A Job as the store holds it (raises what a stored job that cannot be read raises)."""
        if stored.error is not None:
            raise ValueError(stored.error)
        spec = parse_job(stored.doc, CEILINGS)  # it was within the limits when accepted
        self.engines.check_job(spec)  # a task of an engine this daemon no longer has fails the job
        job = Job(
            stored.id,
            spec,
            stored.doc,
            stored.created_at,
            stored.data.get("submitter_uid"),
            stored.data.get("after"),
            stored.data.get("run_as_uid"),
        )
        job.load(stored.data, stored.entries)
        job.submitter_name = user_name(job.submitter_uid)
        job.engines = self.engines
        return job

    def recover(self) -> dict[str, int]:
        """Load every stored job; resume the unfinished ones (see Job.recover).

        Loop thread, once, at start before anything is submitted. Fills ``jobs``, ``keys``, the
        finished index and the quota; gives each engine the attempts the previous daemon left with it
        (Executor.recover: the command engine kills what still runs); applies retention; then starts
        or queues what can run (an interrupted attempt uses no retry; a job that cannot be restored,
        or names an engine this daemon has not, is failed, never the start). Returns counts of what
        it found. Does nothing without a store.
        """
        if self.store is None:
            return {}
        self._next_id = self.store.max_job_id() + 1
        now = self.clock()
        counts = {"jobs": 0, "resumed": 0, "interrupted": 0, "held": 0}
        finished: list[FinishedJob] = []
        resumable: list[tuple[Job, Effects]] = []
        leftovers: dict[str, list[LeftAttempt]] = {}  # engine name -> its attempts
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
            if job.state in ("pending", "scheduled") or job.next_run_at is not None:
                # (waiting for prerequisites or a run; or paused while waiting for a run: no task
                # of it runs, and its resume arms the wait)
                resumable.append((job, Effects()))
                continue
            task_of = {t.attempts[-1].attempt_id: t for t in job.tasks if t.state == "running"}
            effects, interrupted = job.recover(now, self.max_interruptions)
            for attempt in interrupted:
                t = task_of[attempt.attempt_id]
                name = self.engines.route_name(t.spec.kind, t.spec.engine)
                leftovers.setdefault(name, []).append(
                    LeftAttempt(job.id, t.id, attempt.number, attempt.pid, attempt.worker))
            counts["interrupted"] += len(interrupted)
            counts["held" if job.state == "held" else "resumed"] += 1
            self._touch(job, list(range(len(job.tasks))))
            resumable.append((job, effects))
        for name, attempts in leftovers.items():
            try:
                counts["left_running"] = counts.get("left_running", 0) + self.engines[name].recover(
                    self.store.daemon_id, attempts)
            except Exception:  # the engine's failure to clean up must not stop the start
                log.exception("engine %s could not recover %d attempt(s) of the previous daemon",
                              name, len(attempts))
        finished.sort(key=lambda e: (e.finished_at, int(e.id)))
        for entry in finished:
            self._index_finished(entry)
        counts["replayed"] = self._replay_journal()
        self._prune(now)
        for job, effects in resumable:
            if job.state == "pending":
                self._start_when_prerequisites_allow(job)
            elif job.state == "scheduled":
                self._recover_scheduled(job)
            elif job.next_run_at is None:  # (a job paused while waiting for a run waits for its resume)
                self._apply(job, effects)
                self._recover_cycles(job)
        return counts

    def _replay_journal(self) -> int:
        """Write the lifecycle records that the state log holds and the journal had not written
        when the previous daemon died (their seqs are above the watermark the journal's forwarder
        left); returns how many events (a range of starts counts once).

        At least once: a batch the forwarder wrote just before the crash, its watermark not yet,
        is written again. The events go into this daemon's log anew, at once (the store removed
        the old log when it opened). A job no longer stored is named by its number only.
        """
        sink, store = self.journal, self.store
        if sink is None or store is None or not store.logged_events:
            return 0
        after = sink.replay_from
        logged, store.logged_events = store.logged_events, []
        replayed = 0
        done: set[str] = set()  # jobs named for the replay only (finished, or no longer stored)
        for first, last, record in logged:
            if last <= after:
                continue
            try:
                _first, _ts, items, texts = unpack_events(record)
            except ValueError as exc:
                log.error("a batch of lifecycle records (seqs %d to %d) in the state log cannot be read: "
                          "%s; it is not written again", first, last, exc)
                continue
            skip = max(after - first + 1, 0)  # the first items of the batch were written
            items, texts = items[skip * ITEM_INTS :], texts[skip:]
            for number in sorted(set(items[2::ITEM_INTS])):
                job_id = str(number)
                if job_id in sink.named:
                    continue
                job = self.jobs.get(job_id)
                if job is None or job.finished:
                    done.add(job_id)
                    job = self._job(job_id)
                if job is not None:
                    self._name_job(sink, job)
                else:
                    sink.name_job(job_id, {}, [])
            sink.replay(items, texts)
            replayed += len(texts)
        for job_id in sorted(done, key=int):
            sink.forget_job(job_id)  # (after their events: its names are no longer needed)
        if replayed:
            sink.seal()
            store.flush()  # in the new log at once: the old one is gone (StateStore's recovery)
            log.warning("%d lifecycle record(s) of the state log had not reached the %s when the daemon "
                        "stopped: written now", replayed, sink.target)
        return replayed

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
        job = Job(job_id, spec, {}, created_at if isinstance(created_at, float) else self.clock())
        job.engines = self.engines
        return job

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


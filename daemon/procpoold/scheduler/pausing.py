"""Pause and resume (``procctl pause``, ``procctl resume``): of one job, of a named queue, or of
the whole daemon.

A paused job (state ``paused``) has its ready tasks in no ready queue: :meth:`Attempts._enqueue`
queues nothing of it (one state test per enqueue of a job's ready tasks, none per task), so the
pump never meets them; its running attempts run on, and what they make ready waits. A paused
daemon (:attr:`SchedulerState.paused`) dispatches nothing: the pump returns at once (one test per
pump pass); submissions are accepted and their tasks wait in the queues. With ``stop`` the running
attempts are stopped as at a shutdown (``interrupted``): their tasks are ready again, using no
retry, and run when the pause ends. A paused queue parks its tasks as a full one does (see
core.gates), and its resume wakes them. Who paused and when is kept (the job's in its stored row, the
daemon's by the supervisor) and said by status and explain.
"""

from __future__ import annotations

from typing import Any

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold import failures
from procpoold.core.jobs import Job, TaskRun
from procpoold.scheduler.state import SchedulerState, _user_fields, log


def paused_by(uid: int | None) -> str:
    """``alice (uid 1000)``, ``uid 1000``, or ``request`` when who asked is not known."""
    return failures.cancelled_by(uid).removeprefix("cancelled by ")


class Pausing(SchedulerState):
    """Pause and resume of a job or of the daemon; loop thread throughout."""

    def pause(self, ref: str, by: int | None = None, stop: bool = False) -> dict[str, Any]:
        """Pause a job: nothing new of it starts until :meth:`unpause`; with ``stop`` its running
        attempts are stopped now and run again at resume (using no retry). Raises ``conflict``
        for a task id and for a job that is not queued or running (see Job.pause_refusal).
        Durable before it returns."""
        job, index = self.resolve(ref)
        if index is not None:
            raise ProcpoolError(ErrorCode.CONFLICT, f"{ref} is a task: a pause applies to a whole job",
                                f"procctl pause {job.id} pauses its job")
        refusal = job.pause_refusal()
        if refusal is not None:
            raise ProcpoolError(ErrorCode.CONFLICT, refusal)
        job.pause(paused_by(by), by, self.clock(), stop)
        self._disarm(job.id)  # (a job waiting for its next run)
        for t in job.tasks:  # out of the ready queues (Job.unpause returns them)
            if t.state == "ready":
                self._forget_queued((job.id, t.spec.index))
        stopping = self._stop_for_pause([job]) if stop else 0
        self._touch(job, [])
        self.flush()  # durable before the reply: a restart keeps it paused
        log.info("job %s paused by %s%s", job.id, job.paused and job.paused["by"],
                 f", {stopping} running attempt(s) stopped" if stop else "",
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        return {"id": job.id, "state": job.state, "stopping": stopping}

    def unpause(self, job: Job) -> dict[str, Any]:
        """Release a paused job (the caller checked that it is): its ready tasks are queued; a job
        paused while it waited for its next run waits again (a time that passed meanwhile follows
        its ``missed`` policy)."""
        self._apply(job, job.unpause())
        if job.state == "scheduled":
            self._recover_scheduled(job, "while the job was paused")
        self.flush()
        log.info("job %s resumed from its pause", job.id,
                 extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        return {"id": job.id, "state": job.state, "released": "paused"}

    def pause_all(self, by: int | None, stop: bool = False) -> dict[str, Any]:
        """Pause the daemon: the pump dispatches nothing until :meth:`resume_all`; with ``stop``
        every running attempt is stopped and runs again at resume. Returns the pause's record
        (``{"by", "uid", "at", "stop"}``), which the caller stores."""
        if self.paused is None:
            self.paused = {"by": paused_by(by), "uid": by, "at": self.clock(), "stop": stop}
        stopping = self._stop_for_pause(list(self.jobs.values())) if stop else 0
        log.info("procpoold paused by %s%s", paused_by(by),
                 f", {stopping} running attempt(s) stopped" if stop else "")
        return {**self.paused, "stopping": stopping}

    def resume_all(self) -> bool:
        """End the daemon's pause; False if it was not paused."""
        if self.paused is None:
            return False
        self.paused = None
        log.info("procpoold resumed from its pause")
        self._schedule_pump()
        return True

    def pause_queue(self, name: str, by: int | None, stop: bool = False) -> dict[str, Any]:
        """Pause a named queue: nothing new of its tasks starts until :meth:`resume_queue`; with
        ``stop`` its running attempts are stopped now and run again at resume (using no retry).
        Raises ``not_found`` for a queue the daemon does not have. Returns the pause's record
        (``{"by", "uid", "at", "stop"}``), which the caller stores, and ``stopping``."""
        gates = self.gates
        if name not in gates.queues:
            raise ProcpoolError(ErrorCode.NOT_FOUND, f'there is no queue "{name}"',
                                "procctl queue lists the daemon's queues")
        already = name in gates.queue_paused
        gates.pause_queue(name, {"by": paused_by(by), "uid": by, "at": self.clock(), "stop": stop})
        stopping = 0
        if stop:
            for aid, held in list(gates.by_attempt.items()):
                ref = self.attempts.get(aid)
                if held.gates.queue == name and ref is not None and ref[0] in self.jobs:
                    stopping += self._stop_one_for_pause(self.jobs[ref[0]].tasks[ref[1]])
        log.info("queue %s paused by %s%s", name, paused_by(by),
                 f", {stopping} running attempt(s) stopped" if stop else "")
        return {"queue": name, **gates.queue_paused[name], "stopping": stopping, "already": already}

    def resume_queue(self, name: str) -> bool:
        """End a named queue's pause; False if it was not paused."""
        if not self.gates.resume_queue(name):
            return False
        log.info("queue %s resumed from its pause", name)
        return True

    def _stop_for_pause(self, jobs: list[Job]) -> int:
        """Stop the running attempts of ``jobs`` as at a shutdown (``interrupted``): their tasks
        are ready again when the outcome comes (see Attempts._attempt_finished). How many."""
        stopping = 0
        for job in jobs:
            if job.finished:
                continue
            for t in job.tasks:
                stopping += self._stop_one_for_pause(t)
        return stopping

    def _stop_one_for_pause(self, t: TaskRun) -> int:
        """Stop the running attempt of ``t`` for a pause (see :meth:`_stop_for_pause`): 1 if it
        had one to stop, else 0."""
        attempt = t.running_attempt
        if attempt is None or t.cancel_requested or attempt.attempt_id not in self.attempts:
            return 0
        self._pause_stopped.add(attempt.attempt_id)
        self.engines.route(t.spec.kind, t.spec.engine).stop_attempt(attempt.attempt_id, "shutdown")
        return 1

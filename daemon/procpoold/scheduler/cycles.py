"""Nodes that cycle on their own clock (``repeat``/``every`` on a group or task; see core.cycles).

A node whose cycle ended waits for its next one: ``every`` seconds, or none (its next cycle then
starts in a later callback of the loop, once the completion that ended the cycle is recorded). The
wait is one loop timer per waiting node, as a retry delay is one per task (scheduler.attempts): an
idle daemon sleeps until the earliest. Times are wall clock (``self.clock``); a timer that fires
early (the clock was set back) is armed again, and a long wait is armed in steps of at most
``MAX_TIMER_DELAY`` (a clock set forward starts the cycle at most that late).

The node's cycle and the time of its next cycle are stored with the job (``Job.dump``): after a
restart the node resumes in the cycle it was in, a waiting node's timer is armed again from the
stored time, and one already due starts at once.
"""

from __future__ import annotations

from procpoold.core.cycles import CyclingJob
from procpoold.core.jobs import Effects, Job, Node
from procpoold.scheduler.state import SchedulerState, _user_fields, cancel, log
from procpoold.scheduler.timing import MAX_TIMER_DELAY


class NodeCycles(SchedulerState):
    """The timers of nodes waiting for their next cycle."""

    def _cycled(self, job: Job, reset: list[int]) -> None:
        """A node's cycle ended or began (``Effects.cycled``): write the tasks it reset and the
        job's row (the cycles), and arm the timer of each node that now waits."""
        self._touch(job, reset)
        self._touch(job, [])
        assert isinstance(job, CyclingJob)
        timers = self._cycle_timers
        for node in job.waits:
            if (job.id, node) not in timers:
                self._arm_cycle(job, node)

    def _arm_cycle(self, job: CyclingJob, node: Node) -> None:
        key = (job.id, node)
        cancel(self._cycle_timers, key)
        delay = min(max(0.0, job.waits[node] - self.clock()), MAX_TIMER_DELAY)
        self._cycle_timers[key] = self.loop.call_later(delay, lambda: self._cycle_due(key))

    def _cycle_due(self, key: tuple[str, Node]) -> None:
        """A waiting node's timer fired: start its next cycle if its time has come (else wait on)."""
        self._cycle_timers.pop(key, None)
        job = self.jobs.get(key[0])
        node = key[1]
        if not isinstance(job, CyclingJob) or node not in job.waits or job.finished:
            return
        try:
            effects = job.cycle_due(node, self.clock())
        except Exception:
            log.exception("job %s: the next cycle of %s could not start", job.id, job.node_words(node))
            return
        if effects is None:  # early: the clock was set back, or a wait longer than one timer
            self._arm_cycle(job, node)
            return
        if effects.ready:
            log.info("job %s: %s starts cycle %d", job.id, job.node_words(node), job.cycle[node],
                     extra={"journal_fields": {"PROCPOOL_JOB_ID": job.id, **_user_fields(job)}})
        self._apply(job, effects)

    def _recover_cycles(self, job: Job) -> None:
        """A job read back at start (or a held one released): arm the timers of its nodes waiting
        for their next cycle (a time already passed: at once). A held job's wait until its release."""
        if isinstance(job, CyclingJob) and not job.finished and job.state != "held":
            for node in job.waits:
                self._arm_cycle(job, node)

    def _stop_cycles(self, job: Job) -> Effects | None:
        """``procctl stop``: the job's waiting nodes are complete now (their timers go); the nodes
        in a cycle end with it. None: the job has no cycling node."""
        if not isinstance(job, CyclingJob):
            return None
        for node in list(job.waits):
            cancel(self._cycle_timers, (job.id, node))
        return job.stop_cycles(self.clock())


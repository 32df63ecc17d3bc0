"""``PoolExecutor``: ``call`` tasks on pre-forked workers fed through shared-memory rings.

Runs in the **daemon**, on its event-loop thread: every method and callback here is called from
:class:`procpoold.loop.EventLoop` (``shutdown`` runs its own bounded poll because it must block).

::

    procpoold --socketpair (SEQPACKET, msgpack, SCM_RIGHTS)--> zygote --fork/reap--> worker 0..n-1
        |  \\__ request ring (daemon -> worker), futex or eventfd wakeup ____________/ |
        |  <-- result ring (worker -> daemon) + eventfd doorbell, polled by the loop ___/

Messages: one msgpack array each, defined in :mod:`procpoold.pool.protocol`.

The executor is split by responsibility into four mixins over one state
(:class:`procpoold.pool.state.PoolState`): worker lifecycle (:mod:`.lifecycle`), dispatch
(:mod:`.dispatch`), message handling (:mod:`.messages`) and statistics (:mod:`.stats`); this
module holds the :class:`~procpoold.engines.Executor` methods.

Dispatch: :meth:`PoolExecutor.submit` only queues; one ``call_soon`` pass assigns everything
queued in the loop iteration and pushes each worker's share with one ``push_many`` (one wakeup).
Results: each worker's result ring is armed before the loop blocks; the doorbell wakes the loop,
which drains every ring and reports the outcomes it found in one ``attempts_finished`` call.
A submit arriving at the control socket wakes an idle worker first (``expect_work``), so that it
leaves its last job while the daemon commits the new one. Right after a dispatch the loop spins
on the result ring for at most ``spin_us`` first (a round trip to a worker that is awake is far
cheaper than a wakeup).

Users and jobs: a worker runs as one identity for its whole life (the zygote's child drops to it
before anything of a task's runs) and holds attempts of one job at a time. An attempt goes only to
a worker of its identity; an idle worker of another job takes it after restoring ``sys.path`` and
``sys.modules`` (the worker does that when it sees a new job). When no worker of the attempt's
identity can take it, an idle worker of another identity (one with nothing queued, least recently
used first; any idle one if the identity has no worker at all) is retired and its slot refilled
with a worker of the attempt's identity. A worker that loaded what it cannot unload (``F_UNCLEAN``)
serves only its job and is replaced the same way when another job needs it.

Round trip: for each attempt pushed to a worker that held nothing else, the time from its push
to the arrival of its result is kept (the last :data:`ROUND_TRIP_SAMPLES`), apart for workers that
were awake (spinning after their last attempt: the busy case) and asleep (the push woke them);
``info()`` reports the p50 and p99 of each (``procctl pool``): the pool's own cost per attempt,
inside the daemon.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import msgpack

from procpoold import oom as oom_kills
from procpoold.engines import (
    NOT_STARTED,
    STOP_STATUS,
    AttemptSpec,
    ExecutorEvents,
    Health,
    LeftAttempt,
    Outcome,
    StopReason,
    TaskError,
)
from procpoold.loop import EventLoop
from procpoold.pool import shm, zygote
from procpoold.pool.dispatch import Dispatch
from procpoold.pool.lifecycle import DEATH_BURST, DEATH_WINDOW, WorkerLifecycle
from procpoold.pool.messages import MAX_UNREAD_REPLIES, MessageHandling
from procpoold.pool.protocol import CANCEL, DONE, EXIT_MESSAGE
from procpoold.pool.slot import Running, WorkerSlot, WorkerState
from procpoold.pool.state import BACKOFF_START, ROUND_TRIP_SAMPLES
from procpoold.pool.stats import Statistics
from procpoold.pool.worker import INTERRUPT_SIGNAL

__all__ = [
    "BACKOFF_START",
    "DEATH_BURST",
    "DEATH_WINDOW",
    "DONE",
    "MAX_UNREAD_REPLIES",
    "ROUND_TRIP_SAMPLES",
    "PoolExecutor",
]

log = logging.getLogger("procpoold.pool")

#: A timeout that has this little left (s) when the scheduler's runs out is not put off.
TIMEOUT_SLACK = 0.001

_packb = msgpack.Packer(use_bin_type=True).pack
_IDLE, _BUSY = WorkerState.IDLE, WorkerState.BUSY
_STARTING = WorkerState.STARTING


class PoolExecutor(WorkerLifecycle, Dispatch, MessageHandling, Statistics):
    """The ``pool`` executor (see the module docstring)."""

    name = "pool"
    kinds = frozenset({"call"})
    #: a worker dies with the daemon (PR_SET_PDEATHSIG), and its attempts with it
    outlives_daemon = False

    def set_daemon_id(self, daemon_id: str) -> None:
        """Nothing to tag: workers die with the daemon."""

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        """Nothing is left: the workers died with the previous daemon, and :meth:`prefork` removed
        the shared memory they used."""
        return 0

    def health(self) -> Health:
        states: dict[str, int] = {}
        for w in self._slots.values():
            key = w.state.value if w is not None else "refilling"
            states[key] = states.get(key, 0) + 1
        return Health(not self._broken, self._broken or None, states.get("starting", 0),
                      len(self._where), states)

    def workers(self) -> list[dict[str, Any]]:
        return self.workers_info()

    def prefork(self) -> None:
        """Remove leftovers of a crashed daemon, then fork the zygote (no thread may exist yet)."""
        removed = shm.cleanup_leftovers()
        if removed:
            log.info("removed %d leftover shared-memory objects: %s", len(removed), ", ".join(removed))
        if self._zygote is None:
            self._zygote = zygote.start()

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        """Register with the loop and start the workers."""
        if self._zygote is None:
            raise RuntimeError("PoolExecutor.prefork() must run before start()")
        self._loop, self._events = loop, events
        oom_kills.shared()  # read the count of OOM kills now, before any of ours can die
        loop.add_reader(self._zygote.fileno(), self._on_zygote)
        for slot in range(self._target):
            self._slots[slot] = None
            self._spawn(slot)

    def free_slots(self) -> int:
        """Idle (or starting) workers, plus spare async capacity, minus what is queued."""
        if self._closing or self._broken:
            return 0
        limit = self.settings.async_per_worker
        depth = self._depth(self._recent_mean)  # what recent attempts suggest comes next
        if self._recent_io:
            depth = max(depth, limit)  # I/O-bound attempts: an idle worker's loop takes as many
        free = 0
        for w in self._slots.values():
            if w is None or w.retire:
                continue
            if w.state is _IDLE or w.state is _STARTING:
                free += depth
            elif w.state is _BUSY:
                n = w.sync_running
                if n == 0:
                    free += limit - len(w.running)
                elif depth > 1 and w.unshort == 0 and n == len(w.running) and n <= depth // 2:
                    # Refill a short queue only once it is half empty: batches, not a trickle.
                    free += depth - n
        return max(0, free - len(self._pending))

    def submit(self, spec: AttemptSpec) -> None:
        """Queue the attempt; it is dispatched at the end of this loop iteration."""
        if spec.kind != "call" or not spec.call:
            self._later_finish(Outcome(spec.attempt_id, "failed", error=TaskError(
                "UnsupportedTask", f"the pool executor runs only 'call' tasks, not {spec.kind!r}")))
            return
        if self._closing or self._broken:
            self._later_finish(Outcome(spec.attempt_id, "interrupted", error=TaskError(
                "PoolUnavailable", self._broken or "the pool is shutting down")))
            return
        self._pending.append(spec)
        self._schedule_dispatch()

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        """Interrupt the attempt; SIGKILL its worker if it has not ended ``grace`` seconds later (the
        attempt's ``kill_grace``, else the pool's). ``signum`` SIGKILL kills its worker at once; any
        other signal is named in the interrupt (SIGINT raises ``KeyboardInterrupt`` in a sync
        function, any other ``TaskInterrupted``; an async one is cancelled): the worker, which
        serves other attempts, never gets the signal itself.

        A timeout counts from the attempt's start: one that runs out while the attempt waits (in
        this queue, or queued on a worker behind other attempts) or that started after it was
        handed over is put off until ``timeout`` after the start (see :meth:`_put_off_timeout`).
        """
        if reason == "timeout" and self._put_off_timeout(attempt_id):
            return
        self._stop(attempt_id, reason, signum, grace)

    def _put_off_timeout(self, attempt_id: str) -> bool:
        """The scheduler's timeout of the attempt ran out (it counts from the hand-over): True if
        the attempt has not run that long yet, and is now stopped ``timeout`` after its start (by
        a timer armed now, or when it starts)."""
        for spec in self._pending:
            if spec.attempt_id == attempt_id:
                if spec.timeout is None:
                    return False
                self._due_on_start.add(attempt_id)
                return True
        w = self._where.get(attempt_id)
        if w is None:
            return False
        run = w.running[attempt_id]
        if run.stop is not None or run.spec.timeout is None or run.timeout_timer is not None:
            return False
        if not run.is_async and self._head(w) is not run:
            self._catch_up(w)  # it may have started (results pushed without a wakeup)
            if self._where.get(attempt_id) is not w:
                return True  # it has ended, with what was read
            if self._head(w) is not run:
                if not run.timeout_due:
                    run.timeout_due = True
                    w.timeouts_due += 1
                return True
        started = run.started if run.is_async else w.head_since
        if time.monotonic() - started >= run.spec.timeout - TIMEOUT_SLACK:
            return False
        run.timeout_due = True
        w.timeouts_due += 1
        self._timeout_from_start(w, run)
        return True

    def _timeout_from_start(self, w: WorkerSlot, run: Running) -> None:
        """Arm the timer that stops ``run`` ``timeout`` after its start (it has started)."""
        assert self._loop is not None and run.spec.timeout is not None
        started = run.started if run.is_async else w.head_since
        left = max(0.0, run.spec.timeout - (time.monotonic() - started))
        aid = run.spec.attempt_id

        def due() -> None:
            run.timeout_timer = None
            self._stop(aid, "timeout")

        run.timeout_timer = self._loop.call_later(left, due)

    def _stop(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        status = STOP_STATUS[reason]
        for spec in self._pending:
            if spec.attempt_id == attempt_id:
                self._pending.remove(spec)
                self._due_on_start.discard(attempt_id)
                self._later_finish(Outcome(attempt_id, status, error=TaskError(
                    NOT_STARTED, f"stopped ({reason}) before it started")))
                return
        w = self._where.get(attempt_id)
        if w is None:
            return  # already ended (its outcome was or will be reported)
        run = w.running[attempt_id]
        if run.stop is not None:
            if signum == signal.SIGKILL:  # a second stop hurries the first one
                self._kill_stopped(w, attempt_id, None)
            return
        if not run.is_async and self._head(w) is not run:
            # The worker pushes results without a wakeup while calls are queued behind them: it
            # may have gone on to this one already. Read what it pushed first.
            self._catch_up(w)
            if self._where.get(attempt_id) is not w:
                return  # it has ended (reported with what was read)
        if not run.is_async and self._head(w) is not run:
            # Prefetched, not started: the worker drops it when it sees the cancel.
            self._detach(w, attempt_id)
            self._send(w, [_packb([CANCEL, attempt_id])])
            self._later_finish(Outcome(attempt_id, STOP_STATUS[reason], error=TaskError(
                NOT_STARTED, f"stopped ({reason}) before it started")))
            self._schedule_dispatch()
            return
        run.stop = reason
        if signum == signal.SIGKILL:
            self._kill_stopped(w, attempt_id, None)
            return
        if grace is None:
            grace = self.settings.kill_grace if run.spec.kill_grace is None else run.spec.kill_grace
        name = None if signum in (None, signal.SIGTERM) else signal.Signals(signum).name
        self._send(w, [_packb([CANCEL, attempt_id] if name is None else [CANCEL, attempt_id, name])])
        spec = run.spec
        fn = (spec.call or "") if spec.user is None else (spec.user.uid, spec.call or "")
        if (not run.is_async and fn not in self._async_calls and w.pid is not None
                and self._zygote is not None):
            # (an async def function running alone needs no signal: the loop reads the cancel)
            self._zygote.kill(w.pid, INTERRUPT_SIGNAL)
        assert self._loop is not None
        run.kill_timer = self._loop.call_later(grace, lambda: self._kill_stopped(w, attempt_id, grace))

    def shutdown(self, grace: float) -> None:
        """Let running attempts finish for ``grace`` s, interrupt the rest, stop and reap everything."""
        if self._closing and self._zygote is None:
            return
        self._closing = True
        self._due_on_start.clear()
        while self._pending:
            spec = self._pending.popleft()
            self._finish(Outcome(spec.attempt_id, "interrupted", error=TaskError(
                NOT_STARTED, "the daemon stopped before the attempt started")))
        deadline = time.monotonic() + grace
        while self._where and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        if self._where:
            for aid in list(self._where):
                self._interrupt_for_shutdown(aid)
            soft = time.monotonic() + min(self.settings.kill_grace, 0.5)
            while self._where and time.monotonic() < soft:
                self._pump(soft - time.monotonic())
        # Ask every worker to exit; the zygote SIGKILLs whoever is still there when it stops.
        for w in list(self._all):
            if w.pid is not None and not w.closed:
                self._send(w, [EXIT_MESSAGE])
        soft = time.monotonic() + 0.5
        while self._by_pid and time.monotonic() < soft:
            self._pump(soft - time.monotonic())
        if self._zygote is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._zygote.fileno())
            self._zygote.stop()
            self._zygote = None
        if self._check_timer is not None:
            self._check_timer.cancel()
        for w in list(self._all):
            for aid, run in list(w.running.items()):
                status = STOP_STATUS[run.stop] if run.stop else "interrupted"
                self._end(w, aid, Outcome(aid, status, error=TaskError(
                    "WorkerKilled", f"{w.describe()} was killed at shutdown while running task "
                                    f"{run.spec.task_name!r}")))
            self._release(w)
        self._slots.clear()

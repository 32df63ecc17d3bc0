"""``PoolExecutor``: ``call`` tasks on pre-forked workers fed through shared-memory rings.

Runs in the **daemon**, on its event-loop thread: every method and callback here is called from
:class:`procpoold.loop.EventLoop` (``shutdown`` runs its own bounded poll because it must block).

::

    procpoold --socketpair (SEQPACKET, msgpack, SCM_RIGHTS)--> zygote --fork/reap--> worker 0..n-1
        |  \\__ request ring (daemon -> worker), futex or eventfd wakeup ____________/ |
        |  <-- result ring (worker -> daemon) + eventfd doorbell, polled by the loop ___/

Messages: one msgpack array each, defined in :mod:`procpoold.pool.protocol`.

Dispatch: :meth:`PoolExecutor.submit` only queues; one ``call_soon`` pass assigns everything
queued in the loop iteration and pushes each worker's share with one ``push_many`` (one wakeup).
Results: each worker's result ring is armed before the loop blocks; the doorbell wakes the loop,
which drains every ring. Right after a dispatch the loop spins on the result ring for at most
``spin_us`` first (a round trip to a worker that is awake is far cheaper than a wakeup).

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

import contextlib
import logging
import os
import select
import signal
import time
from collections import deque
from typing import Any

import msgpack

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold import oom as oom_kills
from procpoold.engines import NOT_STARTED, AttemptSpec, ExecutorEvents, Outcome, StopReason, TaskError
from procpoold.identity import Identity, user_name
from procpoold.journal import LogSink, MessageId
from procpoold.loop import EventLoop
from procpoold.pool import shm, zygote
from procpoold.pool.protocol import (
    CALL,
    CANCEL,
    DONE,
    EXIT_MESSAGE,
    F_ASYNC,
    F_UNCLEAN,
    LOG,
    MESSAGE_ENVELOPE,
    PROGRESS,
    REPLY,
    REQUEST,
    RESULT_NAMES,
    RESULT_SIZES,
    result_problem,
)
from procpoold.pool.ring import RingError, SpillError, SpillTooLarge
from procpoold.pool.slot import (
    STOP_STATUS,
    PoolSettings,
    Running,
    WorkerSlot,
    WorkerState,
    death_sentence,
    memory_info,
    read_rss,
)
from procpoold.pool.worker import INTERRUPT_SIGNAL

#: Round trips kept for ``info()`` (the newest).
ROUND_TRIP_SAMPLES = 4096

log = logging.getLogger("procpoold.pool")

#: Deaths within DEATH_WINDOW seconds that trigger backoff before refilling a slot.
DEATH_BURST = 3
DEATH_WINDOW = 10.0
BACKOFF_START = 0.1
#: Dispatch/spin round trips chained within one loop iteration before the loop polls again.
INLINE_SPINS = 16
#: Batches (of up to 256 messages) read from one worker's result ring before the loop polls
#: again: a task that writes into its ring as fast as the daemon reads cannot keep it there.
DRAIN_BATCHES = 32
#: Attempts one dispatch pass leaves queued before it stops looking further (with several users
#: the queue may hold many attempts that no worker can take yet).
KEEP_SCAN = 4096
#: Replies a worker may leave unread (in its request ring, or waiting for room there) when it sends
#: another request: one waits for each reply, but may leave one behind (its request was stopped).
MAX_UNREAD_REPLIES = 16

_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_IDLE, _BUSY = WorkerState.IDLE, WorkerState.BUSY
_STARTING, _STOPPING = WorkerState.STARTING, WorkerState.STOPPING


class PoolExecutor:
    """The ``pool`` executor (see the module docstring)."""

    name = "pool"

    def __init__(self, settings: PoolSettings | None = None, sink: LogSink | None = None) -> None:
        self.settings = settings or PoolSettings()
        #: The log queue: a worker's result ring is not read while it is full (policy block).
        self._sink = sink
        self._target = self.settings.workers
        self._zygote: zygote.Zygote | None = None
        self._loop: EventLoop | None = None
        self._events: ExecutorEvents | None = None
        #: Current worker of each slot (None while a slot waits for a refill).
        self._slots: dict[int, WorkerSlot | None] = {}
        #: Who the next worker of a slot runs as (absent: the daemon's own user).
        self._slot_user: dict[int, Identity | None] = {}
        #: Counts idle transitions: a worker's ``idle_since`` (least recently used first).
        self._idle_seq = 0
        #: Every worker process not yet reported dead (slotted, retiring, being killed).
        self._by_pid: dict[int, WorkerSlot] = {}
        self._all: set[WorkerSlot] = set()
        self._where: dict[str, WorkerSlot] = {}
        self._pending: deque[AttemptSpec] = deque()
        #: Functions known to be ``async def``, and the mean run time of each sync function (moving
        #: average of ``done.d``): a worker says so, so each user's tasks speak only for that user's
        #: functions (keys: the call, or (uid, call) for an attempt of another user than the daemon's).
        self._async_calls: set[str | tuple[int, str]] = set()
        self._fn_mean: dict[str | tuple[int, str], float] = {}
        #: ... and of all of them.
        self._recent_mean: float | None = None
        self._gen = 0
        self._deaths: deque[float] = deque()
        self._backoff = BACKOFF_START
        self._dispatch_soon = False
        self._spin_due = False
        self._last_dispatched: WorkerSlot | None = None
        self._chain = 0
        self._chain_tick = 0.0
        self._check_timer: Any = None
        self._closing = False
        self._broken: str | None = None
        self._started_at = time.monotonic()
        self._stats = {"dispatched": 0, "completed": 0, "failed": 0, "deaths": 0, "recycled": 0}
        #: seconds from push to result of attempts sent to an otherwise empty worker (newest last),
        #: awake (spinning: the busy case) and asleep (woken by the push)
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIP_SAMPLES)
        self._woken_trips: deque[float] = deque(maxlen=ROUND_TRIP_SAMPLES)
        self._popped_at = 0.0  # perf_counter() when the result batch being handled was popped
        #: Longest message a worker may send (a result of max_result_bytes and its envelope).
        self._max_message = self.settings.max_result_bytes + MESSAGE_ENVELOPE

    # -- Executor protocol -------------------------------------------------------------------------

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

    def _depth(self, mean: float | None) -> int:
        """How many sync attempts of a function with this mean run time a worker may hold."""
        s = self.settings
        if mean is None or mean >= s.prefetch_below or s.prefetch <= 1:
            return 1
        return max(2, min(s.prefetch, int(s.prefetch_budget / max(mean, 1e-7))))

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

    def stop_attempt(self, attempt_id: str, reason: StopReason) -> None:
        """Interrupt the attempt; SIGKILL its worker if it has not ended ``kill_grace`` later."""
        status = STOP_STATUS[reason]
        for spec in self._pending:
            if spec.attempt_id == attempt_id:
                self._pending.remove(spec)
                self._later_finish(Outcome(attempt_id, status, error=TaskError(
                    NOT_STARTED, f"stopped ({reason}) before it started")))
                return
        w = self._where.get(attempt_id)
        if w is None:
            return  # already ended (its outcome was or will be reported)
        run = w.running[attempt_id]
        if run.stop is not None:
            return
        if not run.is_async and self._head(w) is not run:
            # Prefetched, not started: the worker drops it when it sees the cancel.
            self._detach(w, attempt_id)
            self._send(w, [_packb([CANCEL, attempt_id])])
            self._later_finish(Outcome(attempt_id, STOP_STATUS[reason], error=TaskError(
                NOT_STARTED, f"stopped ({reason}) before it started")))
            self._schedule_dispatch()
            return
        run.stop = reason
        self._send(w, [_packb([CANCEL, attempt_id])])
        if not run.is_async and w.pid is not None and self._zygote is not None:
            self._zygote.kill(w.pid, INTERRUPT_SIGNAL)
        assert self._loop is not None
        run.kill_timer = self._loop.call_later(
            self.settings.kill_grace, lambda: self._kill_stopped(w, attempt_id))

    def shutdown(self, grace: float) -> None:
        """Let running attempts finish for ``grace`` s, interrupt the rest, stop and reap everything."""
        if self._closing and self._zygote is None:
            return
        self._closing = True
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

    def info(self) -> dict[str, Any]:
        """Summary for ``procctl status``."""
        states: dict[str, int] = {}
        for w in self._slots.values():
            key = w.state.value if w is not None else "refilling"
            states[key] = states.get(key, 0) + 1
        return {
            "executor": self.name,
            "workers": self._target,
            "states": states,
            "running": len(self._where),
            "queued": len(self._pending),
            "free_slots": self.free_slots(),
            "broken": self._broken,
            **self._stats,
            "round_trip": _percentiles(self._round_trips),
            "round_trip_woken": _percentiles(self._woken_trips),
        }

    # -- extra API ---------------------------------------------------------------------------------

    def workers_info(self) -> list[dict[str, Any]]:
        """One map per worker process (slotted or leaving): slot, pid, state, attempts, memory, age."""
        now = time.monotonic()
        out = []
        for w in sorted(self._all, key=lambda w: (w.slot, w.gen)):
            uid = os.geteuid() if w.user is None else w.user.uid
            out.append({
                "slot": w.slot,
                "pid": w.pid,
                "uid": uid,
                "user": user_name(uid) if w.user is None else w.user.name,
                "job_id": w.job,
                "state": w.state.value,
                "attempts": [{"attempt_id": aid, "task_name": r.spec.task_name}
                             for aid, r in w.running.items()],
                "tasks_done": w.tasks_done,
                "age": now - w.spawned_at,
                "retiring": w.retire or self._slots.get(w.slot) is not w,
                "log_paused": w.log_paused,
                **memory_info(w.pid),
            })
        return out

    def resize(self, workers: int) -> None:
        """Change the number of workers at run time; shrinking retires idle workers first."""
        if workers < 0:
            raise ValueError("workers must be >= 0")
        self._target = workers
        if self._closing or self._loop is None:
            self.settings.workers = workers
            return
        excess = len(self._slots) - workers
        if excess > 0:
            def cost(item: tuple[int, WorkerSlot | None]) -> tuple[int, int]:
                w = item[1]
                rank = 0 if w is None else {_STARTING: 1, _IDLE: 1, _BUSY: 2}.get(w.state, 0)
                return rank, -item[0]

            for slot, w in sorted(self._slots.items(), key=cost)[:excess]:
                del self._slots[slot]
                self._slot_user.pop(slot, None)
                if w is not None:
                    self._retire(w)
        else:
            free = (s for s in range(10**9) if s not in self._slots)
            for _ in range(-excess):
                slot = next(free)
                self._slots[slot] = None
                self._spawn(slot)
        self._schedule_dispatch()

    # -- spawning and retiring ---------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        if self._closing or self._broken or self._zygote is None or slot not in self._slots:
            return
        if self._slots[slot] is not None:
            return
        self._gen += 1
        user = self._slot_user.get(slot)
        try:
            w = WorkerSlot(slot, self._gen, self.settings.ring_capacity, user)
        except OSError as exc:
            log.error("cannot create the segment for pool slot %d: %s", slot, exc)
            self._refill(slot, crashed=True)
            return
        self._slots[slot] = w
        self._all.add(w)
        w.res.spill_limit = self._max_message
        cfg = {"tick": self.settings.tick, "spin_ns": int(self.settings.worker_spin_us * 1000),
               "max_result_bytes": self.settings.max_result_bytes}
        try:
            self._zygote.spawn(slot, w.gen, cfg, [w.segment.fd, w.res_efd, w.req_efd], user)
        except OSError as exc:
            self._zygote_gone(f"cannot talk to the zygote: {exc}")
            return
        assert self._loop is not None
        self._loop.add_reader(w.res_efd, lambda: self._on_doorbell(w))
        w.res.arm()

    def _on_spawned(self, msg: dict[str, Any]) -> None:
        w = next((w for w in self._all if w.gen == msg["gen"]), None)
        pid = int(msg["pid"])
        if w is None:  # pragma: no cover - we never forget a worker before it starts
            assert self._zygote is not None
            self._zygote.kill(pid, signal.SIGKILL)
            return
        w.pid = pid
        w.res.spill_from = shm.spill_prefix(pid)  # the only spill objects it may hand over
        self._by_pid[pid] = w
        if w.state is not _STARTING:
            # Retired before it started (the exit message waits in its ring), or killed.
            if w.kill_reason is not None and self._zygote is not None:
                self._zygote.kill(pid, signal.SIGKILL)
            return
        w.state = _IDLE  # STARTING -> IDLE
        fields = {"MESSAGE_ID": MessageId.WORKER_SPAWNED, "PROCPOOL_WORKER_PID": str(pid)}
        if w.user is not None:
            fields.update(PROCPOOL_USER=w.user.name, PROCPOOL_UID=str(w.user.uid))
        log.info("%s started%s", w.describe(), "" if w.user is None else f" as {w.user.name}",
                 extra={"journal_fields": fields})
        age = self.settings.max_worker_age
        if age is not None:
            assert self._loop is not None
            w.timers.append(self._loop.call_later(age, lambda: self._age_out(w)))
        self._schedule_dispatch()

    def _retire(self, w: WorkerSlot) -> None:
        """Take ``w`` out of service: now if idle, else when its attempts end."""
        if self._slots.get(w.slot) is w:
            self._slots[w.slot] = None
            self._spawn(w.slot)
        w.retire = True
        if w.running or w.state is _STOPPING:
            return
        w.state = _STOPPING  # IDLE/STARTING -> STOPPING
        self._stats["recycled"] += 1
        self._send(w, [EXIT_MESSAGE])
        # An exit message is obeyed at once by an idle worker; kill_grace bounds a broken one.
        assert self._loop is not None
        w.timers.append(self._loop.call_later(max(self.settings.kill_grace, 1.0), lambda: self._kill(w)))

    def _age_out(self, w: WorkerSlot) -> None:
        if not w.closed:
            self._retire(w)

    def _kill(self, w: WorkerSlot, reason: tuple[str, str] | None = None) -> None:
        """SIGKILL ``w`` (its attempts are reported when the zygote reports the exit)."""
        if w.closed:
            return
        if reason is not None and w.kill_reason is None:
            w.kill_reason = reason
        w.state = _STOPPING  # any -> STOPPING
        if self._slots.get(w.slot) is w:
            self._slots[w.slot] = None
            self._spawn(w.slot)
        if w.pid is not None and self._zygote is not None:
            self._zygote.kill(w.pid, signal.SIGKILL)

    def _kill_stopped(self, w: WorkerSlot, aid: str) -> None:
        run = w.running.get(aid)
        if run is None or w.closed:
            return
        self._kill(w, ("WorkerKilled", f"task {run.spec.task_name!r} did not stop within "
                                       f"{self.settings.kill_grace:g} s of the {run.stop} request; "
                                       f"{w.describe()} was killed"))

    def _interrupt_for_shutdown(self, aid: str) -> None:
        w = self._where.get(aid)
        if w is None:
            return
        run = w.running[aid]
        if run.stop is None:
            run.stop = "shutdown"
            self._send(w, [_packb([CANCEL, aid])])
            if w.pid is not None and self._zygote is not None:
                self._zygote.kill(w.pid, INTERRUPT_SIGNAL)

    # -- zygote reports ----------------------------------------------------------------------------

    def _on_zygote(self) -> None:
        assert self._zygote is not None
        reports = self._zygote.read()
        for msg in reports or []:
            ev = msg.get("ev")
            if ev == "spawned":
                self._on_spawned(msg)
            elif ev == "exited":
                self._on_exit(int(msg["pid"]), msg.get("code"), msg.get("signal"))
            elif ev == "failed":
                log.error("the zygote could not start a worker for slot %s: %s", msg.get("slot"),
                          msg.get("message"))
                w = next((w for w in self._all if w.gen == msg.get("gen")), None)
                if w is not None:
                    self._bury(w, crashed=True)
        if reports is None:
            self._zygote_gone("the zygote exited unexpectedly")

    def _zygote_gone(self, why: str) -> None:
        # Workers die with the zygote (PR_SET_PDEATHSIG), and a new zygote cannot be forked from
        # a daemon that has threads: the pool is broken until the daemon restarts.
        if self._zygote is None:
            return
        log.error("%s; every pool worker died with it and the pool takes no more work", why)
        self._broken = why
        assert self._loop is not None
        self._loop.remove_reader(self._zygote.fileno())
        self._zygote.stop(timeout=1.0)
        self._zygote = None
        for w in list(self._all):
            self._drain_worker(w, force=True)
            for aid, run in list(w.running.items()):
                # Not the task's doing: "interrupted" runs it again without using its retries.
                self._end(w, aid, Outcome(aid, "interrupted", error=TaskError(
                    "WorkerDied", f"{w.describe()} died with the zygote while running task "
                                  f"{run.spec.task_name!r}")))
            self._release(w)
        while self._pending:
            spec = self._pending.popleft()
            self._finish(Outcome(spec.attempt_id, "interrupted", error=TaskError("PoolUnavailable", why)))

    def _on_exit(self, pid: int, code: int | None, sig: int | None) -> None:
        w = self._by_pid.get(pid)
        if w is None:
            return
        if code == zygote.EXIT_NO_USER and w.user is not None and self._slots.get(w.slot) is w:
            # It could not become its user: the slot goes back to the daemon's own user rather
            # than trying again and again (an attempt of that user asks for a worker again).
            self._slot_user.pop(w.slot, None)
        # Its last words count: results posted before it died are real results.
        self._drain_worker(w, force=True)
        self._requeue_unstarted(w)
        crashed = w.kill_reason is None and w.state is not _STOPPING and not self._closing
        # Named before the attempts end (that empties w.running): the log record says what it ran.
        task = next(iter(w.running.values())).spec.task_name if w.running else None
        # Asked for every SIGKILL we did not send, so that each counted kill is taken once.
        oom = oom_kills.shared().consume() if sig == signal.SIGKILL and w.kill_reason is None else None
        for aid, run in list(w.running.items()):
            if w.kill_reason is not None:  # we killed it, and know why
                etype, sentence = w.kill_reason
            elif code == zygote.EXIT_NO_USER and w.user is not None:
                etype, sentence = "WorkerDied", (
                    f"{w.describe()} could not become user {w.user.name} (uid {w.user.uid}) and exited "
                    f"before running task {run.spec.task_name!r}; see the daemon's log")
            else:
                etype, sentence = "WorkerDied", death_sentence(w, code, sig, run.spec.task_name, oom)
            status = STOP_STATUS[run.stop] if run.stop else "failed"
            self._end(w, aid, Outcome(aid, status, error=TaskError(etype, sentence)))
        if crashed:
            self._stats["deaths"] += 1
            why = (death_sentence(w, code, sig, task, oom) if task is not None else
                   death_sentence(w, code, sig, "", oom).replace(" while running task ''", " while idle"))
            log.warning("%s", why, extra={"journal_fields": {
                "MESSAGE_ID": MessageId.WORKER_DIED, "PROCPOOL_WORKER_PID": str(pid)}})
        self._bury(w, crashed=crashed)

    def _bury(self, w: WorkerSlot, crashed: bool) -> None:
        """The process is gone: release everything, refill its slot."""
        slotted = self._slots.get(w.slot) is w
        self._release(w)
        if w.pid is not None:
            with contextlib.suppress(OSError):
                shm.cleanup_leftovers(shm.SPILL_PREFIX, owners={w.pid})
        if slotted:
            self._slots[w.slot] = None
            self._refill(w.slot, crashed)
        self._schedule_dispatch()

    def _release(self, w: WorkerSlot) -> None:
        if w.closed:
            return
        w.state = WorkerState.DEAD  # STOPPING/any -> DEAD
        if self._loop is not None:
            self._loop.remove_reader(w.res_efd)
        if w.pid is not None:
            self._by_pid.pop(w.pid, None)
        self._all.discard(w)
        if self._last_dispatched is w:
            self._last_dispatched = None
        try:
            w.close()
        except RingError as exc:  # pragma: no cover - a worker scribbled over its segment
            log.warning("while releasing %s: %s", w.describe(), exc)

    def _refill(self, slot: int, crashed: bool) -> None:
        if self._closing or slot not in self._slots:
            return
        delay = 0.0
        if crashed:
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - DEATH_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) >= DEATH_BURST:
                delay = min(self._backoff, self.settings.respawn_backoff_max)
                self._backoff = min(self._backoff * 2, self.settings.respawn_backoff_max)
                log.warning("workers keep dying (%d in %g s): refilling slot %d in %g s",
                            len(self._deaths), DEATH_WINDOW, slot, delay)
            else:
                self._backoff = BACKOFF_START
        if crashed:
            log.info("replacing the worker of slot %d%s", slot, f" in {delay:g}s" if delay else "",
                     extra={"journal_fields": {"MESSAGE_ID": MessageId.WORKER_REPLACED}})
        if delay and self._loop is not None:
            self._loop.call_later(delay, lambda: self._spawn(slot))
        else:
            self._spawn(slot)

    # -- dispatch ----------------------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_soon and self._pending and self._loop is not None:
            self._dispatch_soon = True
            self._loop.call_soon(self._dispatch)

    def _pick(self, spec: AttemptSpec, is_async: bool, depth: int) -> WorkerSlot | None:
        """The worker for an attempt: an async one joins a worker running only async attempts;
        a sync one takes an idle worker, or queues behind short attempts (``depth``: how many
        attempts of its function a worker may hold). Only a worker of the attempt's identity;
        a busy one only if it holds the attempt's job, an idle one of that job first."""
        best: WorkerSlot | None = None
        job = spec.job_id
        user = spec.user
        if is_async:
            limit = self.settings.async_per_worker
            for w in self._slots.values():
                if w is None or w.retire or w.job != job or not (w.user is user or w.serves(user)):
                    continue
                n = len(w.running)
                if w.state is _BUSY and w.sync_running == 0 and n < limit and (
                        best is None or n < len(best.running)):
                    best = w
            if best is not None:
                return best
        cap = self.settings.max_tasks_per_worker
        idle: WorkerSlot | None = None  # an idle worker of another job (it restores first)
        for w in self._slots.values():
            if w is None or w.retire or not (w.user is user or w.serves(user)):
                continue  # (each attempt looks its identity up again: the groups may have changed)
            if w.state is _IDLE:
                if w.job == job:
                    return w
                if idle is None and not w.unclean:
                    idle = w
                continue
            n = w.sync_running
            if (depth > n and w.state is _BUSY and w.unshort == 0 and n and n == len(w.running)
                    and w.job == job and (cap is None or w.tasks_done + n < cap)
                    and (best is None or n < best.sync_running)):
                best = w  # a worker busy with short attempts of this job only: queue behind them
        return idle if idle is not None else best

    def _make_room(self, spec: AttemptSpec, kept: dict[int | None, int],
                   queued: set[int | None] | None) -> set[int | None] | None:
        """No worker can take ``spec`` now: retire an idle worker that cannot serve it, and refill
        its slot with a worker of the attempt's identity (see the module docstring).

        ``kept``: attempts of each uid this dispatch pass left queued (a worker is started per
        attempt at most); ``queued``: the uids with attempts queued (computed here on first need,
        then passed back in). Returns ``queued``.
        """
        user = spec.user
        uid = None if user is None else user.uid
        kept[uid] = kept.get(uid, 0) + 1
        mine = starting = 0
        victims: list[WorkerSlot] = []
        for w in self._slots.values():
            if w is None or w.retire:
                continue
            if (w.user is user or w.serves(user)) and not (w.unclean and w.job != spec.job_id):
                mine += 1
                starting += w.state is _STARTING
            elif w.state is _IDLE:
                victims.append(w)
        if not victims or starting >= kept[uid]:
            return queued
        if queued is None:
            queued = {None if s.user is None else s.user.uid for s in self._pending}
        # Workers of identities with nothing queued go first (an unclean one of this identity is
        # of no use to it either); any idle worker only when this identity has no worker at all.
        spare = [w for w in victims if w.user is user or w.serves(user) or
                 (None if w.user is None else w.user.uid) not in queued]
        if not spare and mine:
            return queued
        victim = min(spare or victims, key=lambda w: w.idle_since)
        self._slot_user[victim.slot] = user
        log.info("retiring idle %s to start a worker for %s", victim.describe(),
                 "the daemon's user" if user is None else user.name)
        self._retire(victim)
        return queued

    def _has_room(self) -> bool:
        limit = self.settings.async_per_worker
        prefetch = self.settings.prefetch
        for w in self._slots.values():
            if w is None or w.retire:
                continue
            if w.state is _IDLE or (w.state is _BUSY and w.sync_running == 0 and len(w.running) < limit):
                return True
            if w.state is _BUSY and w.unshort == 0 and 0 < w.sync_running < prefetch:
                return True
        return False

    def _head(self, w: WorkerSlot) -> Running | None:
        """The sync attempt the worker runs now (it runs them in dispatch order)."""
        return next((r for r in w.running.values() if not r.is_async), None)

    def _dispatch(self) -> None:
        self._dispatch_soon = False
        if self._closing or not self._pending:
            return
        events = self._events
        assert events is not None and self._loop is not None
        batches: dict[WorkerSlot, list[bytes]] = {}
        started: list[tuple[AttemptSpec, WorkerSlot]] = []
        keep: list[AttemptSpec] = []
        alone: list[tuple[WorkerSlot, Running]] = []  # sent to a worker holding nothing else
        now = time.monotonic()
        pending = self._pending
        woke = False  # some worker was idle: its result is worth spinning for
        async_calls, fn_mean = self._async_calls, self._fn_mean
        kept: dict[int | None, int] = {}
        queued: set[int | None] | None = None
        while pending:
            spec = pending.popleft()
            fn = (spec.call or "") if spec.user is None else (spec.user.uid, spec.call or "")
            is_async = fn in async_calls
            depth = self._depth(fn_mean.get(fn))
            w = self._pick(spec, is_async, depth)
            if w is None:
                keep.append(spec)
                queued = self._make_room(spec, kept, queued)
                if not self._has_room() or len(keep) >= KEEP_SCAN:
                    break  # nothing else fits either: leave the rest queued, in order
                continue
            short = not is_async and depth > 1
            run = w.running[spec.attempt_id] = Running(spec, is_async, short)
            if len(w.running) == 1:
                alone.append((w, run))
            if not is_async:
                w.sync_running += 1
                if not short:
                    w.unshort += 1
            if w.state is _IDLE:
                w.state = _BUSY  # IDLE -> BUSY
                w.last_beat = now
                woke = True
                self._last_dispatched = w
            self._where[spec.attempt_id] = w
            w.job = spec.job_id
            batches.setdefault(w, []).append(_encode_call(spec))
            started.append((spec, w))
        pending.extendleft(reversed(keep))  # O(skipped), not O(queued)
        if not batches:
            return
        wakes = {w: w.req.wake_syscalls for w, _ in alone}
        sent = time.perf_counter()
        for w, msgs in batches.items():
            self._send(w, msgs)
            self._stats["dispatched"] += len(msgs)
        for w, run in alone:
            run.sent, run.woken = sent, w.req.wake_syscalls != wakes[w]
        for spec, w in started:
            events.attempt_started(spec.attempt_id, w.pid, w.name)
        self._arm_check()
        # Spin only for a worker that was idle: one already busy posts when it gets there, and the
        # CPU a spin burns is taken from the workers.
        if woke and self.settings.spin_us > 0 and not self._spin_due:
            self._spin_due = True
            loop = self._loop
            if loop.last_tick != self._chain_tick:
                self._chain_tick, self._chain = loop.last_tick, 0
            if self._chain < INLINE_SPINS:
                # Spin in this very iteration: a zmq poll costs more than the whole round trip.
                self._chain += 1
                loop.call_soon(self._spin)
            else:
                # Enough: let the next poll run (due at once: monotonic time 0 is in the past), so
                # the control socket and timers get their turn between chained round trips.
                loop.call_at(0.0, self._spin)

    def _send(self, w: WorkerSlot, msgs: list[bytes]) -> None:
        """Push to the worker's request ring in order, queueing what does not fit yet."""
        if w.closed:
            return
        if w.backlog:
            w.backlog.extend(msgs)
            msgs, w.backlog = w.backlog, []
        if not msgs:
            return
        try:
            done = w.req.push(msgs[0]) if len(msgs) == 1 else w.req.push_many(msgs)
        except RingError as exc:
            log.error("cannot write to %s: %s", w.describe(), exc)
            self._kill(w, ("WorkerDied", f"{w.describe()} was killed: its request ring failed ({exc})"))
            return
        if done < len(msgs):
            w.backlog = msgs[int(done):]

    def _spin(self) -> None:
        self._spin_due = False
        w = self._last_dispatched
        if w is None or w.closed or not w.running:
            return
        ring = w.res
        ring.disarm()  # while we spin, the worker need not write the doorbell
        ring.spin(self.settings.spin_us * 1e-6)
        self._drain_worker(w)

    # -- results -----------------------------------------------------------------------------------

    def _on_doorbell(self, w: WorkerSlot) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_read(w.res_efd)
        self._drain_all()

    def _drain_all(self) -> None:
        for w in list(self._all):
            self._drain_worker(w)

    def _drain_worker(self, w: WorkerSlot, force: bool = False) -> None:
        """Read the worker's result ring until it is empty (then arm its doorbell), or until the log
        queue is full (log_policy block: then not again until it has room). ``force``: read it all
        anyway (the worker died; shutting down)."""
        if (w.log_paused and not force) or w.violated:
            return
        ring = w.res
        sink = None if force else self._sink
        budget = DRAIN_BATCHES
        while not w.closed:
            if budget == 0 and not force and self._loop is not None:
                # Let the loop poll (the control socket, other workers); then read on. (Due
                # now, not at 0.0: a timer due before this turn's clock would run in this turn.)
                if not w.drain_due:
                    w.drain_due = True
                    self._loop.call_at(time.monotonic(), lambda: self._drain_later(w))
                return
            budget -= 1
            try:
                raw = ring.pop_many(256)
            except RingError as exc:
                for data in exc.partial:  # the results before the damage are real results
                    self._handle(w, data)
                    if w.closed or w.violated:
                        return
                if isinstance(exc, SpillTooLarge):
                    self._violation(w, f"a message of {exc.size:,} bytes, over max_result_bytes "
                                       f"({_size(self.settings.max_result_bytes)})")
                elif isinstance(exc, SpillError):
                    self._violation(w, f"a spilled message that could not be taken ({exc})")
                else:
                    self._violation(w, f"a corrupt result ring ({exc})")
                return
            except Exception as exc:  # pragma: no cover - the ring raises RingError only
                log.exception("reading the result ring of %s failed", w.describe())
                self._violation(w, f"something its result ring could not read ({exc!r:.200})")
                return
            if raw:
                self._popped_at = time.perf_counter()
                w.last_beat = time.monotonic()
                for data in raw:
                    self._handle(w, data)
                    if w.closed or w.violated:
                        return
                if sink is not None and not sink.has_room():
                    self._pause_for_logs(w)
                    return
                continue
            if w.backlog:
                self._send(w, [])
            if ring.arm():
                return

    def _drain_later(self, w: WorkerSlot) -> None:
        w.drain_due = False
        self._drain_worker(w)

    def _pause_for_logs(self, w: WorkerSlot) -> None:
        """Leave the ring unread (and its doorbell unarmed) until the log queue has room."""
        assert self._sink is not None
        w.log_paused = True
        self._sink.when_room(lambda: self._resume_logs(w))

    def _resume_logs(self, w: WorkerSlot) -> None:
        if w.closed or not w.log_paused:
            return
        w.log_paused = False
        w.last_beat = time.monotonic()  # its heartbeats waited in the ring meanwhile
        self._drain_worker(w)

    def _handle(self, w: WorkerSlot, data: bytes) -> None:
        """One message from ``w``'s result ring (loop thread).

        The worker runs untrusted code that can write anything into its ring: a message that is
        too large, not msgpack, of the wrong shape or with a field of the wrong type, or that
        names an attempt the pool did not give this worker (or that has left it long ago) is a
        protocol violation, and the worker is killed (see :meth:`_violation`): only its own
        attempts fail. Whatever else goes wrong in handling a message kills it too, logged with
        the traceback; nothing escapes to the loop.
        """
        try:
            if len(data) > self._max_message:
                problem: str | None = (f"a message of {len(data):,} bytes, over max_result_bytes "
                                       f"({_size(self.settings.max_result_bytes)})")
            else:
                try:
                    msg = _unpackb(data, ext_hook=_refuse_ext)
                except ValueError as exc:  # off the hot path
                    msg = _unusual_result(data, exc)
                problem = result_problem(msg)
                if problem is not None:
                    problem = f"a malformed message ({problem})"
                elif len(msg) > 1 and msg[1] not in w.running:
                    if msg[1] in w.ended:
                        return  # a late word about an attempt that has just left it (stopped)
                    problem = (f"a {RESULT_NAMES[msg[0]]} message for attempt {msg[1][:80]!r}, "
                               "which is not one of its attempts")
        except Exception as exc:
            problem = f"a malformed message ({str(exc)[:200]})"
        if problem is not None:
            self._violation(w, problem)
            return
        try:
            self._on_message(w, msg)
        except Exception as exc:
            log.exception("a message from %s could not be handled", w.describe())
            self._violation(w, f"a message that could not be handled ({type(exc).__name__}: "
                               f"{str(exc)[:200]})")

    def _violation(self, w: WorkerSlot, what: str) -> None:
        """``w`` broke the protocol by sending ``what``: say so, kill it (through the zygote),
        read nothing more from it. Its attempts fail (or are retried) as for any worker death."""
        if w.violated or w.closed:
            return
        w.violated = True
        tasks = ", ".join(repr(r.spec.task_name) for r in w.running.values())
        sentence = f"{w.describe()} was killed: it sent {what}"
        log.error("%s%s", sentence, f" (running task {tasks})" if tasks else " (idle)",
                  extra={"journal_fields": {"PROCPOOL_WORKER_PID": str(w.pid)}})
        self._kill(w, ("WorkerDied", sentence))

    def _on_message(self, w: WorkerSlot, msg: list[Any]) -> None:
        """A well-formed message about one of ``w``'s attempts (checked by :meth:`_handle`)."""
        kind = msg[0]
        events = self._events
        assert events is not None
        if kind == DONE:
            self._on_done(w, msg)
        elif kind == LOG:
            events.attempt_log(msg[1], msg[2], msg[3], msg[4], msg[5])
        elif kind == PROGRESS:
            events.attempt_progress(msg[1], msg[2])
        elif kind == REQUEST:
            self._on_request(w, msg)
        # HEARTBEAT: its arrival already refreshed last_beat.

    def _on_done(self, w: WorkerSlot, msg: list[Any]) -> None:
        _, aid, ok, value, flags, took = msg
        run = w.running.get(aid)
        if run is None:
            return
        if run.sent:
            (self._woken_trips if run.woken else self._round_trips).append(self._popped_at - run.sent)
        call = run.spec.call
        user = run.spec.user
        fn = call if call is None or user is None else (user.uid, call)
        if flags & F_ASYNC and fn is not None:
            self._async_calls.add(fn)
        if flags & F_UNCLEAN:
            w.unclean = True
        if took is not None and fn is not None:
            mean = self._fn_mean.get(fn)
            self._fn_mean[fn] = took if mean is None else mean + (took - mean) * 0.25
            recent = self._recent_mean
            self._recent_mean = took if recent is None else recent + (took - recent) * 0.25
        if ok:
            outcome = Outcome(aid, "completed", result=value)
        else:
            err = value if isinstance(value, dict) else {}
            error = TaskError(str(err.get("type", "Error")), str(err.get("message", "")),
                              str(err.get("traceback", "")))
            outcome = Outcome(aid, STOP_STATUS[run.stop] if run.stop else "failed", error=error)
        w.tasks_done += 1
        self._end(w, aid, outcome, recycle=True)

    def _end(self, w: WorkerSlot, aid: str, outcome: Outcome, recycle: bool = False) -> None:
        """The attempt left ``w``: update the worker's state first, so that the scheduler sees
        the freed capacity in ``free_slots()`` when it hears of the outcome."""
        was_busy = w.state is _BUSY
        run = self._detach(w, aid)
        if run.kill_timer is not None:
            run.kill_timer.cancel()
        if was_busy and w.state is _IDLE and recycle:
            self._maybe_recycle(w)
        if w.retire and not w.running and w.state is not _STOPPING and not w.closed:
            self._retire(w)
        self._finish(outcome)
        self._schedule_dispatch()

    def _detach(self, w: WorkerSlot, aid: str) -> Running:
        """Take the attempt off the worker's books (not reported)."""
        run = w.running.pop(aid)
        self._where.pop(aid, None)
        w.ended.append(aid)
        if not run.is_async:
            w.sync_running -= 1
            if not run.short:
                w.unshort -= 1
        if not w.running and w.state is _BUSY:
            w.state = _IDLE  # BUSY -> IDLE
            self._idle_seq += 1
            w.idle_since = self._idle_seq
        return run

    def _requeue_unstarted(self, w: WorkerSlot) -> None:
        """The worker died: prefetched attempts it never started go back to the front of the queue."""
        if self._closing or self._broken:
            return
        head = self._head(w)
        again = [r.spec for r in list(w.running.values())
                 if not r.is_async and r is not head and r.stop is None]
        for spec in again:
            self._detach(w, spec.attempt_id)
        self._pending.extendleft(reversed(again))

    def _maybe_recycle(self, w: WorkerSlot) -> None:
        s = self.settings
        too_many = s.max_tasks_per_worker is not None and w.tasks_done >= s.max_tasks_per_worker
        too_old = s.max_worker_age is not None and time.monotonic() - w.spawned_at >= s.max_worker_age
        if too_many or too_old:
            w.retire = True
        elif s.max_memory_per_worker is not None and w.pid is not None:
            rss = read_rss(w.pid)
            if rss is not None and rss > s.max_memory_per_worker:
                w.retire = True

    def _finish(self, outcome: Outcome) -> None:
        assert self._events is not None
        self._stats["completed" if outcome.status == "completed" else "failed"] += 1
        self._events.attempt_finished(outcome)

    def _later_finish(self, outcome: Outcome) -> None:
        # Never report from inside submit()/stop_attempt(): the caller may not expect re-entry.
        if self._loop is None:
            raise RuntimeError("PoolExecutor.start() has not run")
        self._loop.call_soon(lambda: self._finish(outcome))

    def _on_request(self, w: WorkerSlot, msg: list[Any]) -> None:
        assert self._events is not None
        _, aid, rid, op, args = msg
        if not w.backlog and not w.req.used:
            w.unread_replies = 0  # it has read everything sent to it
        elif w.unread_replies >= MAX_UNREAD_REPLIES:
            # The replies would pile up in this process (or in spill objects) for ever.
            self._violation(w, f"requests without reading the replies ({w.unread_replies} unread)")
            return
        w.unread_replies += 1
        try:
            if op != "ns":
                raise ProcpoolError(ErrorCode.UNKNOWN_OPERATION, f"unknown task request {op!r}")
            args = dict(args or {})
            ns_op = str(args.pop("op", ""))
            data = _packb([REPLY, rid, True, self._events.namespace_op(aid, ns_op, args)])
        except ProcpoolError as exc:
            data = _packb([REPLY, rid, False, exc.to_wire()])
        except Exception as exc:
            log.exception("namespace operation of %s failed", aid)
            err = ProcpoolError(ErrorCode.INTERNAL, f"namespace operation failed: {exc}")
            data = _packb([REPLY, rid, False, err.to_wire()])
        self._send(w, [data])

    # -- supervision -------------------------------------------------------------------------------

    def _arm_check(self) -> None:
        if self._check_timer is None and self._loop is not None:
            self._check_timer = self._loop.call_later(self.settings.check_interval, self._check)

    def _check(self) -> None:
        """Heartbeat and memory check of busy workers; re-armed only while some worker is busy."""
        self._check_timer = None
        self._drain_all()
        now = time.monotonic()
        s = self.settings
        busy = False
        for w in list(self._all):
            if w.closed or not w.running or w.state is _STOPPING:
                continue
            busy = True
            names = ", ".join(repr(r.spec.task_name) for r in w.running.values())
            if now - w.last_beat > s.heartbeat_timeout and not w.log_paused:
                self._kill(w, ("WorkerHung", f"{w.describe()} sent no heartbeat for "
                                             f"{s.heartbeat_timeout:g} s while running task {names} "
                                             "and was killed (hung, or stuck in native code holding "
                                             "the GIL?)"))
                continue
            if s.max_memory_per_worker is not None and w.pid is not None:
                rss = read_rss(w.pid)
                if rss is not None and rss > s.max_memory_per_worker:
                    self._kill(w, ("MemoryLimitExceeded", f"{w.describe()} used {rss / 2**20:.0f} MiB "
                                   f"while running task {names}, over max_memory_per_worker "
                                   f"({s.max_memory_per_worker / 2**20:.0f} MiB), and was killed"))
        if busy:
            self._arm_check()

    # -- blocking poll for shutdown ----------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        poller = select.poll()
        if self._zygote is not None:
            poller.register(self._zygote.fileno(), select.POLLIN)
        ready = False
        for w in self._all:
            if not w.closed:
                ready = not w.res.arm() or ready
                poller.register(w.res_efd, select.POLLIN)
        poller.poll(0 if ready else max(0, int(timeout * 1000)) + 1)
        if self._zygote is not None:
            self._on_zygote()
        for w in list(self._all):
            if not w.closed:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.eventfd_read(w.res_efd)
                self._drain_worker(w, force=True)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unusual_result(data: bytes, error: ValueError) -> Any:
    """A result message the strict decoder refused: a task's return value with a map key that is
    not a string (a worker packs any dict) or a msgpack extension type fails its attempt, as a
    value that cannot be packed does in the worker; the control protocol carries string keys and
    no extension types. Anything else raises."""
    msg = msgpack.unpackb(data, strict_map_key=False)  # raises for what is not msgpack at all
    if type(msg) is list and len(msg) == RESULT_SIZES[DONE] and msg[0] == DONE and msg[2] is True:
        what = "an extension type" if "extension" in str(error) else "a map key that is not a string"
        message = (f"the return value has {what} ({str(error)[:200]}); results travel to clients as "
                   "msgpack maps with string keys and no extension types")
        return [DONE, msg[1], False, {"type": "ResultNotSerializable", "message": message, "traceback": ""},
                msg[4], msg[5]]
    raise error


def _size(n: int) -> str:
    """``64 MiB``, ``1,500 bytes``: a limit as the config would say it."""
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n:,} bytes"


def _percentiles(seconds: deque[float]) -> dict[str, float | int | None]:
    samples = sorted(seconds)
    n = len(samples)
    if not n:
        return {"samples": 0, "p50_us": None, "p99_us": None}
    return {
        "samples": n,
        "p50_us": round(samples[n // 2] * 1e6, 1),
        "p99_us": round(samples[min(n - 1, n * 99 // 100)] * 1e6, 1),
    }


def _encode_call(spec: AttemptSpec) -> bytes:
    return _packb([  # type: ignore[no-any-return]
        CALL, spec.attempt_id, spec.call,
        [spec.job_id, spec.job_name, spec.task_id, spec.task_name, spec.attempt, spec.run],
        spec.args or None, spec.kwargs or None, spec.env or None, spec.cwd or None, spec.python_path or None,
    ])

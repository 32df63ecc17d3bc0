"""Dispatch of the pool: pick a worker for each queued attempt, make room, send, spin.

Part of :class:`procpoold.pool.pool.PoolExecutor` (a mixin: its methods run on the executor's
state, in the daemon's event-loop thread). ``submit`` only queues; one ``call_soon`` pass
(:meth:`Dispatch._dispatch`) assigns everything queued in the loop iteration and pushes each
worker's share with one ``push_many`` (one wakeup per worker), then spins on the result ring of a
worker it woke for at most ``spin_us`` (a round trip to an awake worker is far cheaper than a
wakeup).
"""

from __future__ import annotations

import logging
import os
import time

import msgpack

from procpoold.engines import AttemptSpec
from procpoold.identity import run_as_uid
from procpoold.pool.protocol import CANCEL, WAKE, encode_call
from procpoold.pool.ring import RingError
from procpoold.pool.slot import Running, WorkerSlot, WorkerState
from procpoold.pool.state import PoolState

log = logging.getLogger("procpoold.pool")

_packb = msgpack.Packer(use_bin_type=True).pack
_IDLE, _BUSY = WorkerState.IDLE, WorkerState.BUSY
_STARTING = WorkerState.STARTING

#: Dispatch/spin round trips chained within one loop iteration before the loop polls again.
INLINE_SPINS = 16
#: Wakes for an expected attempt (``expect_work``) that no attempt followed, per second, beyond
#: which no more are sent: a client's submits that come to nothing cost at most this many
#: restores and spins a second (with ``prewake_spin_us`` = 1 ms: 2 % of a CPU spun in vain).
PREWAKE_WASTE_MAX = 20
#: A wake counts as used if an attempt reaches the worker within this many seconds (or within
#: its spin, if longer).
PREWAKE_WINDOW = 0.005
#: Attempts one dispatch pass leaves queued before it stops looking further (with several users
#: the queue may hold many attempts that no worker can take yet).
KEEP_SCAN = 4096
#: A worker left idle with nothing queued in the pool takes the last attempt queued on a busy
#: worker when the attempts ahead of it there are expected to take at least this long (s): the
#: end of a job is not held up by one worker's queue while another waits (see ``_rebalance``).
STEAL_AHEAD = 0.001


class Dispatch(PoolState):
    """Choosing workers for queued attempts and pushing them to the request rings."""

    def _depth(self, mean: float | None) -> int:
        """How many sync attempts of a function with this mean run time a worker may hold."""
        s = self.settings
        if mean is None or mean >= s.prefetch_below or s.prefetch <= 1:
            return 1
        return max(2, min(s.prefetch, int(s.prefetch_budget / max(mean, 1e-7))))

    def expect_work(self, uid: int | None) -> None:
        """A client (``uid``, from the connection's credentials) is submitting: wake one idle
        worker of the identity its job will run as, so that the attempt does not find it asleep
        (a wakeup costs about 60 us on this
        kind of VM) or restoring its imports after the attempt has reached it: it leaves its last
        job now, while the daemon reads and commits the job, then spins for ``prewake_spin_us``
        (0: sleeps again at once). See :data:`PREWAKE_WASTE_MAX` for the bound.

        A hint only: called before the request is parsed; nothing happens when work is queued
        (no worker is idle for long then), when no idle worker of the identity is clean, or when
        too many recent wakes were in vain (a client sending submits that come to nothing cannot
        keep a worker spinning: at most PREWAKE_WASTE_MAX spins of ``prewake_spin_us`` a second).
        """
        spin_us = self.settings.prewake_spin_us
        if not self.settings.prewake or self._closing or self._broken or self._pending or self._loop is None:
            return
        now = time.monotonic()
        window = max(spin_us * 1e-6, PREWAKE_WINDOW)
        waste = self._prewake_waste
        for w in self._all:
            if w.prewoken and now - w.prewoken > window:
                w.prewoken = 0.0  # it spun in vain
                waste.append(now)
        while waste and waste[0] < now - 1.0:
            waste.popleft()
        if len(waste) >= PREWAKE_WASTE_MAX:
            return
        run_as = run_as_uid(uid)
        if run_as == os.geteuid():
            run_as = None
        best: WorkerSlot | None = None
        for c in self._slots.values():
            if (c is None or c.state is not _IDLE or c.retire or c.unclean or c.log_paused
                    or c.backlog or (c.user is None) != (run_as is None)
                    or (c.user is not None and c.user.uid != run_as)):
                continue
            if c.prewoken:
                continue  # already spinning for a request before this one
            if best is None or (c.job is None) > (best.job is None) or (
                    (c.job is None) == (best.job is None) and c.idle_since < best.idle_since):
                best = c  # one that holds no job, else the least recently used
        if best is None:
            return
        restore = best.job is not None
        self._send(best, [_packb([WAKE, spin_us, restore])])
        if restore:
            best.job = None  # it forgets the job's imports now
        best.prewoken = now
        self._stats["prewakes"] += 1

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_soon and self._pending and self._loop is not None:
            self._dispatch_soon = True
            self._loop.call_soon(self._dispatch)

    def _pick(self, spec: AttemptSpec, is_async: bool, depth: int) -> WorkerSlot | None:
        """The worker for an attempt: an I/O-bound one (``io``: async def, sharing an event loop)
        joins a worker running only such attempts, up to ``async_per_worker``;
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
                if not w.unclean and (idle is None or (w.prewoken and not idle.prewoken)):
                    idle = w  # (one woken for this attempt first: it is spinning for it)
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
        fn_mean = self._fn_mean
        kept: dict[int | None, int] = {}
        queued: set[int | None] | None = None
        due = self._due_on_start
        while pending:
            spec = pending.popleft()
            fn = (spec.call or "") if spec.user is None else (spec.user.uid, spec.call or "")
            is_async = spec.io  # (the worker fails an io attempt whose function is not async def)
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
            head = is_async or w.sync_running == 0  # it starts now (else when those ahead end)
            if is_async:
                run.started = now
                if len(w.running) > self._stats["io_peak"]:
                    self._stats["io_peak"] = len(w.running)  # most on one worker's loop at once
            elif head:
                w.head_since = now
            if due and spec.attempt_id in due:
                due.discard(spec.attempt_id)
                run.timeout_due = True
                w.timeouts_due += 1
                if head:
                    self._timeout_from_start(w, run)
            if not is_async:
                w.sync_running += 1
                if not short:
                    w.unshort += 1
            if w.state is _IDLE:
                w.state = _BUSY  # IDLE -> BUSY
                w.last_beat = now
                woke = True
                self._last_dispatched = w
            if w.prewoken:
                w.prewoken = 0.0
                self._stats["prewakes_used"] += 1
            self._where[spec.attempt_id] = w
            w.job = spec.job_id
            batches.setdefault(w, []).append(encode_call(spec))
            started.append((spec, w))
        pending.extendleft(reversed(keep))  # O(skipped), not O(queued)
        if not batches:
            return
        self._recent_io = is_async  # (what free_slots() expects of the next attempts)
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

    def _rebalance_soon(self) -> None:
        """A worker went idle: look for queued work to move to it once the scheduler has had its
        turn (in the next loop iteration: new attempts, if any, go to it first)."""
        if self._rebalance_due or self._loop is None or self._closing:
            return
        for d in self._slots.values():  # (no loop iteration spent when there is nothing to take)
            if d is not None and d.state is _BUSY and self._worth_taking(d):
                self._rebalance_due = True
                self._loop.call_at(0.0, self._rebalance)
                return

    def _rebalance(self) -> None:
        """An idle worker and nothing queued in the pool: take from a busy worker of its
        identity the last attempt queued there behind at least two others (expected to take
        :data:`STEAL_AHEAD` or more), so that the tail of a job is shared. The busy worker is
        sent a ``CANCEL`` for it first, then its result ring is read (results it pushed without
        a wakeup): if the attempt is still two calls or more behind the one the worker runs, the
        worker reads the cancel before it can get to it (it reads its ring before each queued
        call) and drops it, so the attempt goes back to the front of the pool's queue at once.
        Otherwise it moves only when the worker says it dropped it (``_on_done``); had it
        started there after all, it ends there as any attempt. It never runs twice. One attempt
        moves at a time."""
        self._rebalance_due = False
        if self._pending or self._closing or self._broken:
            return
        for w in list(self._slots.values()):
            if (w is None or w.state is not _IDLE or w.retire or w.closed or w.log_paused
                    or w.backlog):
                continue
            donor: WorkerSlot | None = None
            for d in self._slots.values():
                if (d is None or d is w or d.state is not _BUSY or d.closed or d.violated
                        or d.log_paused  # (its ring is not read: its books may lag any amount)
                        or d.backlog  # (a cancel would wait outside its ring)
                        or d.unshort or d.sync_running < 3 or d.sync_running != len(d.running)
                        or not (d.user is w.user or w.serves(d.user))
                        or (w.unclean and w.job != d.job)
                        or (donor is not None and d.sync_running <= donor.sync_running)):
                    continue
                donor = d
            if donor is None or not self._worth_taking(donor):
                continue
            run = next(reversed(donor.running.values()))
            aid = run.spec.attempt_id
            # The cancel first: it is in the worker's ring before its results are read below.
            self._send(donor, [_packb([CANCEL, aid])])
            self._stats["rebalanced"] += 1
            self._catch_up(donor)  # (results it pushed without a wakeup: its books are current)
            if self._where.get(aid) is not donor:
                return
            if not donor.closed and donor.sync_running >= 3:
                # Two calls or more from starting there: the worker reads the cancel before it
                # gets to it, and drops it (its late "stopped" word is dropped here).
                self._detach(donor, aid)
                if run.timeout_due:
                    self._due_on_start.add(aid)
                self._pending.appendleft(run.spec)
                self._schedule_dispatch()
            else:
                run.moving = True  # moves when the worker says it dropped it (_on_done)
            return  # one at a time: the next idle worker looks again once this one is busy

    def _worth_taking(self, donor: WorkerSlot) -> bool:
        """Whether the last attempt queued on ``donor`` is two or more behind its head, and those
        ahead of it are expected to take :data:`STEAL_AHEAD` or more."""
        n = donor.sync_running
        if n < 3 or n != len(donor.running):
            return False
        run = next(reversed(donor.running.values()))
        spec = run.spec
        fn = (spec.call or "") if spec.user is None else (spec.user.uid, spec.call or "")
        return (not run.is_async and run.stop is None and not run.moving
                and self._fn_mean.get(fn, 0.0) * (n - 1) >= STEAL_AHEAD)

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


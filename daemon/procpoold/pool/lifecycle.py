"""Worker lifecycle of the pool: spawn (through the zygote), start, retire, kill, reap, refill.

Part of :class:`procpoold.pool.pool.PoolExecutor` (a mixin: its methods run on the executor's
state, in the daemon's event-loop thread). The zygote's reports (``spawned``, ``exited``,
``failed``) arrive here; a dead worker's last results are drained first, its unstarted attempts go
back to the queue, the one it ran fails with a sentence, and its slot is refilled (with a backoff
while workers keep dying). Also the periodic heartbeat and memory check of busy workers, the
recycling policy, and the blocking poll that ``shutdown`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from typing import Any

import msgpack

from procpoold import oom as oom_kills
from procpoold.engines import STOP_STATUS, Outcome, TaskError
from procpoold.journal import MessageId
from procpoold.pool import shm, zygote
from procpoold.pool.protocol import CANCEL, EXIT_MESSAGE
from procpoold.pool.ring import RingError
from procpoold.pool.slot import WorkerSlot, WorkerState, death_sentence, read_rss
from procpoold.pool.state import BACKOFF_START, PoolState
from procpoold.pool.worker import INTERRUPT_SIGNAL

log = logging.getLogger("procpoold.pool")

_packb = msgpack.Packer(use_bin_type=True).pack
_IDLE, _BUSY = WorkerState.IDLE, WorkerState.BUSY
_STARTING, _STOPPING = WorkerState.STARTING, WorkerState.STOPPING

#: Deaths within DEATH_WINDOW seconds that trigger backoff before refilling a slot.
DEATH_BURST = 3
DEATH_WINDOW = 10.0


class WorkerLifecycle(PoolState):
    """Spawning, retiring, killing and reaping workers; refilling their slots."""

    def resize(self, workers: int) -> bool:
        """Change the number of workers at run time; shrinking retires idle workers first."""
        if workers < 0:
            raise ValueError("workers must be >= 0")
        self._target = workers
        if self._closing or self._loop is None:
            self.settings.workers = workers
            return True
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
        return True

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

    def _kill_stopped(self, w: WorkerSlot, aid: str, grace: float | None) -> None:
        """SIGKILL the worker of stopped attempt ``aid``: its ``grace`` ran out, or (None) the stop
        asked for SIGKILL."""
        run = w.running.get(aid)
        if run is None or w.closed:
            return
        why = ("was stopped with SIGKILL" if grace is None
               else f"did not stop within {grace:g} s of the {run.stop} request")
        self._kill(w, ("WorkerKilled", f"task {run.spec.task_name!r} {why}; {w.describe()} was killed"))

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

    def _requeue_unstarted(self, w: WorkerSlot) -> None:
        """The worker died: prefetched attempts it never started go back to the front of the queue."""
        if self._closing or self._broken:
            return
        head = self._head(w)
        again = [r.spec for r in list(w.running.values())
                 if not r.is_async and r is not head and r.stop is None]
        for spec in again:
            if self._detach(w, spec.attempt_id).timeout_due:
                self._due_on_start.add(spec.attempt_id)  # still counted from its start
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

"""Message handling of the pool: drain the result rings, decode and check every message, act on it.

Part of :class:`procpoold.pool.pool.PoolExecutor` (a mixin: its methods run on the executor's
state, in the daemon's event-loop thread). A worker runs untrusted code and can write anything
into its result ring: every message is checked (:func:`procpoold.pool.protocol.result_problem`,
and that it names one of that worker's attempts) before it is looked at, and a violation kills
that worker only (see docs/pool.md, Trust). Outcomes are reported to the scheduler as they end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import msgpack

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpoold.engines import NOT_STARTED, STOP_STATUS, Outcome, TaskError
from procpoold.pool.protocol import (
    DONE,
    F_ASYNC,
    F_STOPPED,
    F_UNCLEAN,
    LOG,
    PROGRESS,
    REPLY,
    REQUEST,
    RESULT_NAMES,
    RESULT_SIZES,
    result_problem,
)
from procpoold.pool.ring import RingError, SpillError, SpillTooLarge
from procpoold.pool.slot import Running, WorkerSlot, WorkerState
from procpoold.pool.state import PoolState

log = logging.getLogger("procpoold.pool")

_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_IDLE, _BUSY = WorkerState.IDLE, WorkerState.BUSY
_STOPPING = WorkerState.STOPPING

#: Batches (of up to 256 messages) read from one worker's result ring before the loop polls
#: again: a task that writes into its ring as fast as the daemon reads cannot keep it there.
DRAIN_BATCHES = 32
#: Replies a worker may leave unread (in its request ring, or waiting for room there) when it sends
#: another request: one waits for each reply, but may leave one behind (its request was stopped).
MAX_UNREAD_REPLIES = 16


class MessageHandling(PoolState):
    """Reading the result rings and acting on what the workers say."""

    def _on_doorbell(self, w: WorkerSlot) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_read(w.res_efd)
        self._drain_all()

    def _drain_all(self) -> None:
        outer = self._batch is None
        if outer:
            self._batch = []
        try:
            for w in list(self._all):
                self._drain_worker(w)
        finally:
            if outer:
                self._report_batch()

    def _drain_worker(self, w: WorkerSlot, force: bool = False) -> None:
        """Read the worker's result ring until it is empty (then arm its doorbell), or until the log
        queue is full (log_policy block: then not again until it has room). ``force``: read it all
        anyway (the worker died; shutting down).

        The outcomes of everything read are reported together at the end, in one
        ``attempts_finished`` call (one per :meth:`_drain_all` when it drains every worker); each
        worker's state is updated as each message is handled, so ``free_slots()`` counts them all
        by then."""
        if (w.log_paused and not force) or w.violated:
            return
        outer = self._batch is None
        if outer:
            self._batch = []
        try:
            self._read_worker(w, force)
        finally:
            if outer:
                self._report_batch()

    def _report_batch(self) -> None:
        """Report the outcomes collected by the drain that ends now, in one call."""
        batch, self._batch = self._batch, None
        if batch:
            self._report(batch)

    def _catch_up(self, w: WorkerSlot) -> None:
        """Read what waits in the worker's result ring, so that its books are current: a worker
        pushes a result without a wakeup while calls are queued behind it (see
        ``worker.QUIET_LEAD``), so it may have gone further down its queue than the books say.
        The outcomes found are reported in a later callback (the caller, the scheduler stopping
        an attempt, does not expect re-entry), or with the drain under way."""
        if w.closed or w.violated or w.log_paused:
            return
        outer, self._batch = self._batch, []
        try:
            self._read_worker(w, False)
        finally:
            found, self._batch = self._batch, outer
        if not found:
            return
        if outer is not None:
            outer.extend(found)
        elif self._loop is not None:
            self._loop.call_soon(lambda: self._report(found))

    def _report(self, batch: list[Outcome]) -> None:
        assert self._events is not None
        report = getattr(self._events, "attempts_finished", None)
        try:
            if report is not None:
                report(batch)
            else:  # an ExecutorEvents written before attempts_finished existed
                for outcome in batch:
                    self._events.attempt_finished(outcome)
        except Exception:
            # A bug of the receiver, not the workers' doing: logged; the loop goes on.
            log.exception("reporting %d outcomes failed", len(batch))

    def _read_worker(self, w: WorkerSlot, force: bool) -> None:
        """The body of :meth:`_drain_worker` (outcomes go to the batch)."""
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
            _, attempt_id, stream, level, message, fields = msg  # (layout: pool.protocol)
            events.attempt_log(attempt_id, stream, level, message, fields)
        elif kind == PROGRESS:
            _, attempt_id, report = msg
            events.attempt_progress(attempt_id, report)
        elif kind == REQUEST:
            self._on_request(w, msg)

    def _on_done(self, w: WorkerSlot, msg: list[Any]) -> None:
        _, aid, ok, value, flags, took = msg
        run = w.running.get(aid)
        if run is None:
            return
        if run.moving and not ok and flags & F_STOPPED and type(value) is dict \
                and value.get("type") == NOT_STARTED:
            # Asked back for an idle worker (rebalance), and dropped before it started: it goes
            # to the front of the pool's queue (not reported: it has not run).
            self._detach(w, aid)
            if run.timeout_due:
                self._due_on_start.add(aid)
            self._pending.appendleft(run.spec)
            self._schedule_dispatch()
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
        if took is not None:
            w.busy_time += took
        if not run.is_async:
            # The worker went on to the next call queued here when it pushed this result (a
            # while ago if it pushed without a wakeup: see _catch_up); last_beat: when it was read.
            w.head_since = w.last_beat
        self._end(w, aid, outcome, recycle=True)

    def _end(self, w: WorkerSlot, aid: str, outcome: Outcome, recycle: bool = False) -> None:
        """The attempt left ``w``: update the worker's state first, so that the scheduler sees
        the freed capacity in ``free_slots()`` when it hears of the outcome."""
        was_busy = w.state is _BUSY
        run = self._detach(w, aid)
        if run.kill_timer is not None:
            run.kill_timer.cancel()
        if run.timeout_timer is not None:
            run.timeout_timer.cancel()
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
        if run.timeout_due:
            w.timeouts_due -= 1
        if w.timeouts_due:
            head = self._head(w)
            if head is not None and head.timeout_due and head.timeout_timer is None:
                self._timeout_from_start(w, head)
        if not w.running and w.state is _BUSY:
            w.state = _IDLE  # BUSY -> IDLE
            self._idle_seq += 1
            w.idle_since = self._idle_seq
            if not self._pending:
                self._rebalance_soon()
        return run

    def _finish(self, outcome: Outcome) -> None:
        assert self._events is not None
        self._stats["completed" if outcome.status == "completed" else "failed"] += 1
        if self._batch is not None:
            self._batch.append(outcome)  # reported when the drain that found it ends
        else:
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

"""The Dask engine: attempts of ``call`` and ``cmd`` tasks run on a Dask cluster.

procpoold stays the scheduler of the tree: order, dependencies, priorities, retries, repeat,
cancellation, timeouts and the namespace are the daemon's, exactly as with the local engines.
Only the attempts go to Dask, at most as many at a time as the cluster has worker threads (so
that the daemon's priorities decide what runs next), each as one Dask task with Dask's
``priority=`` set from the task's priority.

On the Dask worker an attempt runs in a subprocess of its own session
(:mod:`procpoold.remote.runner`, :mod:`procpoold.remote.harness`), so that a timeout or a cancel
can stop it (a function in a Dask worker's thread cannot be interrupted) and a Dask worker that
dies takes its attempts' processes with it. What the attempt logs or prints comes home as Dask
events on the daemon's topic and goes to the daemon's root logger with the usual fields plus
``PROCPOOL_HOST``; its namespace operations come home the same way and are answered on its
worker; its result is msgpack bytes. The daemon never unpickles anything an attempt produced:
Dask's own serialization stays between the daemon's Dask client and the cluster.

Failures: a Dask worker lost mid-attempt gives an ``interrupted`` attempt (the scheduler runs it
again without using a retry, within ``max_interruptions``); a scheduler that cannot be reached
makes the engine *down* (``procctl status``, ``procctl health``) with no free slots, so accepted
work waits, and it resumes when the scheduler returns; a daemon restarted on the same state
kills what its previous run left on the workers (:meth:`DaskExecutor.recover`) and the
scheduler settles those attempts by the job's ``on_interrupt``. See docs/engines.md.

Everything here runs on the daemon's loop thread except :mod:`.bridge`, the engine's own thread.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
import uuid
from typing import Any

import msgpack

from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.signals import signal_label
from procpoold.engines import (
    NOT_STARTED,
    STOP_STATUS,
    AttemptSpec,
    EngineUnavailable,
    ExecutorEvents,
    Health,
    LeftAttempt,
    Outcome,
    StopReason,
    TaskError,
)
from procpoold.engines.dask.bridge import Bridge, Event, make_wakeup
from procpoold.loop import EventLoop, Timer
from procpoold.pool.protocol import LOG, PROGRESS, REQUEST, result_problem

log = logging.getLogger("procpoold.engines.dask")

#: Dask's ``priority=`` for each of the tree's priorities (higher runs first in Dask).
DASK_PRIORITY = {"critical": 40, "high": 30, "normal": 20, "low": 10, "batch": 0}
#: While attempts run shorter than this on average (seconds), each worker thread gets a second one
#: waiting behind the running one (docs/engines.md): a priority can then be passed over by at most
#: one such short attempt per thread.
PREFETCH_BELOW = 0.05
#: A timeout that runs out this close to the attempt's own is not put off (seconds).
TIMEOUT_SLACK = 0.05
#: A stopped attempt whose worker does not answer is reported this long after its grace.
STOP_SLACK = 10.0
#: Largest result or event body accepted from a worker (bytes of msgpack) when the daemon sets no
#: ``max_result_bytes`` of its own (the composition root passes the config's).
MAX_RESULT = 64 * 1024 * 1024
#: Lines of one log event accepted at most (the runner sends up to 500).
MAX_LINES = 1000


#: The fields of a task's error map (each a string).
_ERROR_KEYS = ("type", "message", "traceback")


class _Attempt:
    __slots__ = ("host", "key", "spec", "started", "started_at", "stop_reason", "stop_timer",
                 "target", "timeout_timer", "worker")

    def __init__(self, spec: AttemptSpec, key: str, target: str) -> None:
        self.spec = spec
        self.key = key
        #: the Dask worker it was sent to (and only to: see DaskExecutor.submit)
        self.target = target
        self.started = False
        self.started_at = 0.0  # monotonic, when the daemon heard of the start
        #: the timeout counted from the start (armed at the start when it ran out before it)
        self.timeout_timer: Timer | None = None
        self.worker: str | None = None
        self.host: str | None = None
        self.stop_reason: StopReason | None = None
        self.stop_timer: Timer | None = None


class DaskExecutor:
    """An engine whose attempts run on the Dask cluster at ``scheduler`` (``tcp://host:8786``)."""

    name = "dask"
    kinds = frozenset({"call", "cmd"})
    #: the attempts run on other hosts, whatever happens to the daemon
    outlives_daemon = True

    def __init__(self, scheduler: str, *, kill_grace: float = 5.0, connect_timeout: float = 10.0,
                 max_result_bytes: int = MAX_RESULT) -> None:
        self.scheduler = scheduler
        self.kill_grace = kill_grace
        #: what an attempt may send in one result or event, as a pool worker in one message
        self.max_result_bytes = max_result_bytes
        self.connect_timeout = connect_timeout
        self._daemon_id = uuid.uuid4().hex  # replaced by set_daemon_id when there is a store
        self._nonce = uuid.uuid4().hex[:8]  # Dask keys of this process (a restart reuses ids)
        self._loop: EventLoop | None = None
        self._events: ExecutorEvents | None = None
        self._bridge: Bridge | None = None
        self._running: dict[str, _Attempt] = {}
        self._up = False
        self._reason: str | None = "connecting to the Dask scheduler"
        self._workers: list[dict[str, Any]] = []
        #: attempts sent to each worker and not ended (its capacity: its threads, see _per_thread)
        self._load: collections.Counter[str] = collections.Counter()
        #: moving mean of how long completed attempts ran, from their start as heard here (s);
        #: unknown at first, so counted long (no attempt waits behind another until it is known)
        self._mean_run = PREFETCH_BELOW
        self._inbox: collections.deque[list[Event]] = collections.deque()
        self._wake_r = self._wake_w = -1
        self._lock = threading.Lock()
        self._signalled = False
        self._stats = {"submitted": 0, "completed": 0, "failed": 0, "interrupted": 0}

    # -- Executor --------------------------------------------------------------------------------

    def prefork(self) -> None:
        # No process of its own (the cluster's workers are Dask's). 'distributed' is imported here,
        # after the pool's zygote has forked (engines are preforked in registration order, and this
        # one comes after the local ones), so the pool's workers never carry it.
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable("the dask engine needs the 'distributed' package",
                                    "pip install 'procpool[dask]'") from exc
        except Exception as exc:  # it imports, but fails here (a sandbox that hides /proc/meminfo)
            raise EngineUnavailable(f"the dask engine cannot load 'distributed': {type(exc).__name__}: "
                                    f"{str(exc)[:200]}", "run with --debug for the traceback") from exc

    def set_daemon_id(self, daemon_id: str) -> None:
        self._daemon_id = daemon_id

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        self._loop, self._events = loop, events
        self._wake_r, self._wake_w = make_wakeup()
        loop.add_reader(self._wake_r, self._on_wake)
        self._bridge = Bridge(self.scheduler, f"procpool-{self._daemon_id}", self._post,
                              self.connect_timeout, run=self._nonce)
        self._bridge.start()

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        if not attempts:
            return 0
        assert self._bridge is not None
        # Sent once the scheduler is reached; the number killed is logged when the workers answer.
        self._bridge.command("stop_daemon", daemon_id)
        return len(attempts)

    def free_slots(self) -> int:
        if not self._up:
            return 0
        load, per = self._load, self._per_thread()
        return sum(max(0, w["threads"] * per - load[w["worker"]]) for w in self._workers)

    def _thread_count(self) -> int:
        return sum(w["threads"] for w in self._workers)

    def _per_thread(self) -> int:
        """Attempts sent per worker thread: 2 while attempts are short (the next one waits on its
        worker, so that the thread does not idle for a round trip through the daemon), else 1 (a
        long attempt queued behind another would start after a more urgent one sent later)."""
        return 2 if self._mean_run < PREFETCH_BELOW else 1

    def expect_work(self, uid: int | None) -> None:
        pass

    def submit(self, spec: AttemptSpec) -> None:
        """Send the attempt to the Dask worker with the most free threads, and to it only
        (``allow_other_workers=False``): the daemon places attempts, one per worker thread, so
        that its priorities decide what runs next, and so that Dask never runs an attempt again on
        another worker when its worker dies (the daemon decides what an interruption means)."""
        assert self._bridge is not None
        key = f"procpool-{self._nonce}-{spec.attempt_id}"
        load = self._load
        per = self._per_thread()
        target = max(self._workers, key=lambda w: w["threads"] * per - load[w["worker"]])["worker"] \
            if self._workers else ""
        load[target] += 1
        run = self._running[spec.attempt_id] = _Attempt(spec, key, target)
        self._stats["submitted"] += 1
        payload = {
            "attempt_id": spec.attempt_id, "kind": spec.kind, "call": spec.call, "args": spec.args,
            "kwargs": spec.kwargs, "cmd": spec.cmd, "shell": spec.shell, "env": spec.env,
            "cwd": spec.cwd, "python_path": spec.python_path, "context": spec.context(),
            "user": spec.user.name if spec.user is not None else None, "daemon": self._daemon_id,
            "run": self._nonce,
            "tags": spec.identity_env(),
            "log_level": spec.log_level,
        }
        try:
            data = msgpack.packb(payload, use_bin_type=True)
        except Exception as exc:  # the tree's values were checked at submit: not expected
            self._later(Outcome(spec.attempt_id, "failed", error=TaskError(
                "ArgumentsNotSerializable", f"cannot pack the attempt: {exc}")))
            return
        priority = DASK_PRIORITY.get(spec.priority, 20)
        self._bridge.command("submit", spec.attempt_id, run.key, data, priority, target)

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        """Stop it (see :class:`Executor`): its worker sends ``signum`` (SIGTERM) to the attempt's
        session, SIGKILL ``grace`` seconds later (the attempt's ``kill_grace``, else the engine's).
        A timeout counts from the attempt's start, as in the pool: the scheduler's runs from the
        hand-over, so one that runs out while the attempt waits in Dask's queue (or before it has
        run that long) is put off until then. A second stop sends its signal too."""
        run = self._running.get(attempt_id)
        if run is None:
            return
        signum = signal.SIGTERM if signum is None else signum
        if grace is None:
            grace = self.kill_grace if run.spec.kill_grace is None else run.spec.kill_grace
        # (the signal travels only when it is not the default: the runner's own is SIGTERM)
        how = (grace,) if signum == signal.SIGTERM else (grace, signum)
        if run.stop_reason is not None:
            if self._bridge is not None:  # (a SIGKILL ends the first one's grace: the worker's timer)
                self._bridge.command("stop", [attempt_id], run.worker or run.target or None, *how)
            return
        assert self._bridge is not None and self._loop is not None
        if reason == "timeout" and run.spec.timeout is not None:
            if not run.started:
                run.timeout_timer = _ON_START
                return
            left = run.spec.timeout - (time.monotonic() - run.started_at)
            if left > TIMEOUT_SLACK:
                self._arm_timeout(run, left)
                return
        run.stop_reason = reason
        # Not started as far as the daemon knows, its start may be on its way: its worker stops it
        # if it runs, or marks it so that it ends at once, unstarted, when Dask starts it (it
        # does at once: one attempt per thread). The outcome says which it was.
        self._bridge.command("stop", [attempt_id], run.worker or run.target or None, *how)
        run.stop_timer = self._loop.call_later(
            grace + STOP_SLACK, lambda: self._stop_unanswered(attempt_id))

    def shutdown(self, grace: float) -> None:
        bridge = self._bridge
        if bridge is None:
            return
        by_worker: dict[str | None, list[str]] = collections.defaultdict(list)
        for aid, run in self._running.items():
            by_worker[run.worker if run.started else None].append(aid)
        for worker, aids in by_worker.items():
            bridge.command("stop" if worker else "cancel", aids, *([worker] if worker else []),
                           min(grace, self.kill_grace))
        for aid in list(self._running):
            run = self._running.pop(aid)
            self._report(Outcome(aid, "interrupted", error=TaskError(
                "DaemonStopped", "the daemon stopped while the attempt ran on Dask")))
        bridge.command("shutdown")
        bridge.join(max(grace, 1.0) + 5.0)
        self._bridge = None
        if self._loop is not None and self._wake_r >= 0:
            self._loop.remove_reader(self._wake_r)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def resize(self, workers: int) -> bool:
        return False  # the cluster's size is Dask's (its deployment's) to set

    def health(self) -> Health:
        return Health(up=self._up, reason=None if self._up else self._reason, starting=0,
                      busy=len(self._running))

    def workers(self) -> list[dict[str, Any]]:
        busy = self._load
        return [{"engine": self.name, "worker": w["worker"], "host": w["host"],
                 "threads": w["threads"], "state": "busy" if busy[w["worker"]] else "idle",
                 "busy": busy[w["worker"]]} for w in self._workers]

    def info(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "up": self._up, "reason": None if self._up else self._reason,
                "workers": len(self._workers), "threads": self._thread_count(),
                "running": len(self._running), **self._stats}

    # -- from the bridge ----------------------------------------------------------------------------

    def _post(self, events: list[Event]) -> None:
        """Bridge thread: queue events and wake the daemon's loop (once per batch)."""
        with self._lock:
            self._inbox.append(events)
            if self._signalled:
                return
            self._signalled = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            self._signalled = False
            batches = list(self._inbox)
            self._inbox.clear()
        for events in batches:
            for event in events:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("an event of the Dask engine could not be handled: %s", event[0])

    def _on_event(self, event: Event) -> None:
        kind = event[0]
        events = self._events
        assert events is not None
        if kind == "remote":
            self._on_remote(event[1])
        elif kind == "done":
            self._on_done(event[1], event[2])
        elif kind == "lost":
            self._on_lost(event[1], event[2])
        elif kind == "worker-lost":
            self._on_worker_lost(event[1], event[2])
        elif kind == "capacity":
            before = self.free_slots()
            self._workers = event[1]
            # Attempts sent to a worker that is gone, if its going was not heard of (a reconnection
            # in between): they cannot run anywhere else (pinned), so they end here.
            present = {w["worker"] for w in self._workers}
            for gone in {run.target for run in self._running.values()} - present:
                self._on_worker_lost(gone, [])
            if self.free_slots() > before:
                events.capacity_changed()
        elif kind == "up":
            if not self._up:
                log.info("the Dask engine is up: scheduler %s, %d workers, %d threads",
                         self.scheduler, len(self._workers), self._thread_count())
            self._up, self._reason = True, None
            events.capacity_changed()
        elif kind == "down":
            if self._up or self._reason != event[1]:
                log.warning("the Dask engine is down: %s", event[1])
            self._up, self._reason = False, event[1]
        elif kind == "recovered":
            log.info("the Dask workers killed %d attempts left by the previous run of this daemon",
                     event[1])

    def _on_remote(self, msg: dict[str, Any]) -> None:
        """An event an attempt's runner sent: checked (anyone on the cluster may send to the topic)."""
        aid = msg.get("aid")
        if type(aid) is not str:
            return
        run = self._running.get(aid)
        t = msg.get("t")
        events = self._events
        assert events is not None and self._bridge is not None
        if run is None:
            if t == "started" and type(msg.get("worker")) is str:
                # A late start of an attempt that has already ended here (a worker was lost and
                # Dask ran it again elsewhere before the cancel arrived): stop it.
                self._bridge.command("stop", [aid], msg["worker"], 0.0)
            return
        if t == "started":
            worker, host, pid = msg.get("worker"), msg.get("host"), msg.get("pid")
            if type(worker) is not str or type(host) is not str:
                return
            if run.started and run.worker != worker:
                self._bridge.command("stop", [aid], worker, 0.0)  # a second run: only one counts
                return
            run.started, run.worker, run.host = True, worker, host
            run.started_at = time.monotonic()
            if run.timeout_timer is _ON_START and run.spec.timeout is not None:
                self._arm_timeout(run, run.spec.timeout)
            events.attempt_started(aid, pid if type(pid) is int else None, f"dask:{worker}")
        elif t == "done":
            if type(msg.get("b")) is bytes:
                self._on_done(aid, msg["b"])
        elif t in ("logs", "progress", "req"):
            data = msg.get("b")
            if type(data) is not bytes:
                return
            if len(data) > self.max_result_bytes:
                self._violation(run, f"a message of {len(data):,} bytes, over max_result_bytes")
                return
            try:
                body = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                                       timestamp=0)
            except Exception as exc:
                self._violation(run, f"a message that is not msgpack ({str(exc)[:80]})")
                return
            if t == "logs":
                self._on_lines(run, body)
                return
            # Checked as a pool worker's are (the same message, the same rules): task code wrote it.
            wire = [PROGRESS, aid, body] if t == "progress" else [REQUEST, aid, *body] \
                if type(body) is list and len(body) == 3 else None
            problem = result_problem(wire) if wire is not None else "a malformed request"
            if problem is not None:
                self._violation(run, problem)
            elif t == "progress":
                events.attempt_progress(aid, body)
            else:
                self._on_request(run, *body)

    def _on_lines(self, run: _Attempt, lines: Any) -> None:
        """A batch of the attempt's log records and output lines, each checked as a pool worker's
        ``LOG`` message (its fields only the code site's and the logger's: a task never names its
        job, task or user in the journal), then given the worker's host."""
        events = self._events
        assert events is not None
        aid = run.spec.attempt_id
        if type(lines) is not list or len(lines) > MAX_LINES:
            self._violation(run, "a batch of lines that is not a list of at most "
                                 f"{MAX_LINES:,}")
            return
        for line in lines:
            wire = [LOG, aid, *line] if type(line) is list and len(line) == 4 else None
            problem = result_problem(wire) if wire is not None else f"a log line {line!r:.80}"
            if problem is not None:
                self._violation(run, problem)
                return
        host = {"PROCPOOL_HOST": run.host or ""}
        for stream, level, text, fields in lines:
            events.attempt_log(aid, stream, level, text, {**fields, **host} if fields else host)

    def _on_request(self, run: _Attempt, rid: Any, op: Any, args: Any) -> None:
        """A namespace operation of the attempt: applied here, answered on its worker."""
        events = self._events
        assert events is not None and self._bridge is not None
        aid = run.spec.attempt_id
        if args is None:  # (the shape is checked already: result_problem)
            args = {}
        if not run.worker:
            return  # no start heard of yet: there is no worker to answer on
        try:
            if op != "ns":
                raise ProcpoolError(ErrorCode.UNKNOWN_OPERATION, f"unknown task request {op!r}")
            args = dict(args)
            ns_op = str(args.pop("op", ""))
            reply: tuple[bool, Any] = (True, events.namespace_op(aid, ns_op, args))
        except ProcpoolError as exc:
            reply = (False, exc.to_wire())
        except Exception as exc:
            log.exception("namespace operation of %s failed", aid)
            reply = (False, ProcpoolError(ErrorCode.INTERNAL, f"namespace operation failed: {exc}").to_wire())
        self._bridge.command("reply", run.worker, aid, rid, *reply)

    def _on_done(self, aid: str, data: Any) -> None:
        run = self._running.get(aid)
        if run is None:
            return
        if type(data) is not bytes:
            self._end(run, Outcome(aid, "failed", error=TaskError(
                "ProtocolViolation", "the Dask worker returned something that is not an attempt's result")))
            return
        if len(data) > self.max_result_bytes:
            self._violation(run, f"a result of {len(data):,} bytes, over max_result_bytes")
            return
        try:
            info = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext, timestamp=0)
        except Exception as exc:
            info = None
            why = str(exc)[:200]
        else:
            why = "not a map"
        if type(info) is not dict or type(info.get("ok")) is not bool:
            self._end(run, Outcome(aid, "failed", error=TaskError(
                "ProtocolViolation", f"the attempt's result could not be read ({why})")))
            return
        exit_code = info.get("exit_code")
        exit_code = exit_code if type(exit_code) is int else None
        if run.stop_reason is not None:
            value = info.get("value")
            if info.get("not_started"):
                error: TaskError | None = TaskError(NOT_STARTED, "stopped before it started")
            elif type(value) is dict and all(type(value.get(k, "")) is str for k in _ERROR_KEYS):
                # what the stop raised in a call (its signal, its frames); the scheduler bounds it
                error = TaskError(value.get("type", ""), value.get("message", ""), value.get("traceback", ""))
            else:
                error = None
            self._end(run, Outcome(aid, STOP_STATUS[run.stop_reason], exit_code=exit_code, error=error))
            return
        if info.get("stopped"):
            self._end(run, Outcome(aid, "interrupted", exit_code=exit_code, error=TaskError(
                "WorkerDied", f"the attempt was stopped on the Dask worker {run.worker}")))
            return
        value = info.get("value")
        if info["ok"]:
            if run.spec.kind == "cmd":
                if exit_code == 0:
                    self._end(run, Outcome(aid, "completed", exit_code=0))
                else:
                    what = (f"killed by {signal_label(-exit_code)}"
                            if exit_code is not None and exit_code < 0 else f"exited with status {exit_code}")
                    self._end(run, Outcome(aid, "failed", exit_code=exit_code,
                                           error=TaskError("CommandFailed", f"command {what}")))
            else:
                self._end(run, Outcome(aid, "completed", result=value))
            return
        error = _task_error(value)
        self._end(run, Outcome(aid, "failed", exit_code=exit_code, error=error))

    def _on_lost(self, aid: str, why: str) -> None:
        run = self._running.get(aid)
        if run is None:
            return
        if run.stop_reason is not None:
            # Stopped: a Dask task cancelled before it started never ran, and does not count.
            error = None if run.started else TaskError(NOT_STARTED, "stopped before it started")
            self._end(run, Outcome(aid, STOP_STATUS[run.stop_reason], error=error))
            return
        self._end(run, Outcome(aid, "interrupted", error=TaskError("WorkerDied", why)))

    def _on_worker_lost(self, worker: str, keys: list[str]) -> None:
        """A Dask worker left the cluster (it died, or was retired): what it ran is interrupted,
        and what was sent to it and had not started goes back to the daemon's queue unstarted."""
        assert self._bridge is not None
        # No more attempts for it (before the outcomes below make the scheduler look for room).
        self._workers = [w for w in self._workers if w["worker"] != worker]
        lost = [run for run in self._running.values() if run.target == worker or run.worker == worker]
        if not lost:
            return
        self._bridge.command("cancel", [run.spec.attempt_id for run in lost], 0.0)
        for run in lost:
            aid = run.spec.attempt_id
            if run.stop_reason is not None:
                self._end(run, Outcome(aid, STOP_STATUS[run.stop_reason]))
            elif run.started:
                self._end(run, Outcome(aid, "interrupted", error=TaskError(
                    "WorkerDied", f"the Dask worker {worker} was lost while running task "
                    f"{run.spec.task_name!r}")))
            else:
                self._end(run, Outcome(aid, "interrupted", error=TaskError(
                    NOT_STARTED, f"the Dask worker {worker} it was sent to was lost")))

    def _violation(self, run: _Attempt, what: str) -> None:
        """The attempt (task code, on its worker) sent ``what``, which breaks the protocol: it is
        stopped there at once and fails, as a pool worker's attempts do; the engine goes on."""
        assert self._bridge is not None
        aid = run.spec.attempt_id
        log.error("attempt %s of task %r on the Dask worker %s was stopped: it sent %s", aid,
                  run.spec.task_name, run.worker or run.target, what)
        self._bridge.command("stop", [aid], run.worker or run.target or None, 0.0)
        self._end(run, Outcome(aid, "failed", error=TaskError(
            "ProtocolViolation", f"the attempt was stopped: it sent {what}")))

    def _arm_timeout(self, run: _Attempt, delay: float) -> None:
        assert self._loop is not None
        aid = run.spec.attempt_id

        def due() -> None:
            run.timeout_timer = None
            if self._running.get(aid) is run:
                self.stop_attempt(aid, "timeout")

        run.timeout_timer = self._loop.call_later(delay, due)

    def _stop_unanswered(self, aid: str) -> None:
        run = self._running.get(aid)
        if run is None or run.stop_reason is None:
            return
        log.warning("the Dask worker %s did not answer the stop of %s: reported as stopped", run.worker, aid)
        assert self._bridge is not None
        self._bridge.command("cancel", [aid], 0.0)
        self._end(run, Outcome(aid, STOP_STATUS[run.stop_reason]))

    # -- endings ------------------------------------------------------------------------------------

    def _end(self, run: _Attempt, outcome: Outcome) -> None:
        if run.started and outcome.status == "completed":
            took = time.monotonic() - run.started_at
            self._mean_run += (took - self._mean_run) * 0.25
        if self._running.pop(run.spec.attempt_id, None) is not None:
            load = self._load
            load[run.target] -= 1
            if load[run.target] <= 0:
                del load[run.target]
        for timer in (run.stop_timer, run.timeout_timer):
            if timer is not None:
                timer.cancel()
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        assert self._events is not None
        status = outcome.status
        self._stats["completed" if status == "completed" else
                    "interrupted" if status == "interrupted" else "failed"] += 1
        self._events.attempt_finished(outcome)

    def _later(self, outcome: Outcome) -> None:
        """Report after the caller returns (never from inside submit or stop_attempt)."""
        assert self._loop is not None

        def finish() -> None:
            run = self._running.get(outcome.attempt_id)
            if run is not None:
                self._end(run, outcome)

        self._loop.call_soon(finish)


#: ``_Attempt.timeout_timer`` of an attempt whose timeout is armed when it starts.
_ON_START = Timer(0.0, -1, lambda: None, cancelled=True)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _task_error(value: Any) -> TaskError:
    if type(value) is dict:
        return TaskError(str(value.get("type", "Error"))[:200], str(value.get("message", ""))[:4000],
                         str(value.get("traceback", ""))[:64_000])
    return TaskError("Error", "the attempt failed without saying why")


__all__ = ["DaskExecutor"]

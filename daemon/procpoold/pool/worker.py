"""The worker's main loop: take messages off the request ring, run tasks, post results.

Runs in a **worker process** forked by the zygote (:mod:`procpoold.pool.zygote`). The main thread
owns the request ring (the only consumer) and runs task code: sync functions directly, ``async def``
functions on the worker's own asyncio loop, several at once (the daemon enforces the limit). One
small **heartbeat thread** runs only while an attempt is running: every ``tick`` it posts a
heartbeat and flushes buffered log lines; while the worker is idle it blocks on an event, so an idle
worker makes no system call at all (the main thread sleeps on the ring's futex).

The result ring has one producer *handle*, shared by the two threads under :attr:`Worker.lock`.

Stopping an attempt: the daemon pushes ``cancel`` and then has the zygote send ``SIGUSR1``. A sync
attempt's thread is interrupted by the handler, which drains the ring and raises
:class:`TaskInterrupted` if the cancel names the attempt running right now (the message makes the
signal unambiguous: a late signal for an attempt that already ended does nothing). While the
attempt waits for a namespace reply the handler leaves the ring to that wait, which the cancel
message wakes as well. An async attempt's task is cancelled from the loop (the task sees
``asyncio.CancelledError``); the loop learns of the message through the request ring's eventfd
doorbell.

Jobs are isolated: the worker holds one job at a time. When a ``CALL`` of another job arrives (the
daemon sends one only to an idle worker), it first restores ``sys.path``, ``sys.meta_path``,
``sys.path_hooks``, the root logger's handlers and ``sys.modules`` to the snapshot taken when it
started, so nothing a job imported from its ``python_path`` (or put on ``sys.path``) is seen by
the next one. Modules of the interpreter's own folders (the standard library, site-packages, procpool
itself) stay loaded; a preloaded module a job removed (or removed and imported again) is put
back: the original is the one every other module refers to. (One replaced in place in
``sys.modules`` is not seen: looking at every preloaded entry would copy their pages into each
worker.) A module that cannot be unloaded (a C extension from a
job's folder) makes the worker *unclean*: it says so in the ``flags`` of
every ``DONE`` (``F_UNCLEAN``), and the daemon then gives it only that job's attempts.

``python_path`` entries and a ``cwd`` are checked again right before they are used
(:mod:`procpoold.pathsafety`, as the worker's user): an unsafe one fails the attempt.

Message types are defined in :mod:`procpoold.pool.protocol`. This module imports nothing from the
control plane and no ZeroMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import importlib.machinery
import inspect
import io
import logging
import os
import select
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from typing import Any

import msgpack

import procpoold
from procpool import task as task_api
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.logfields import task_fields
from procpoold.callables import resolve, use_python_path
from procpoold.pathsafety import unsafe_folder
from procpoold.pool.protocol import (
    CALL,
    CALL_ARGS,
    CALL_CTX,
    CALL_CWD,
    CALL_ENV,
    CALL_FIELDS,
    CALL_FN,
    CALL_ID,
    CALL_IO,
    CALL_KWARGS,
    CALL_LOG_LEVEL,
    CALL_PATH,
    CANCEL,
    CTX_JOB_ID,
    CTX_TASK_NAME,
    DONE,
    EXIT,
    F_ASYNC,
    F_STOPPED,
    F_UNCLEAN,
    HEARTBEAT_MESSAGE,
    LOG,
    MAX_WAKE_SPIN_US,
    MESSAGE_ENVELOPE,
    PROGRESS,
    REPLY,
    REQUEST,
    WAKE,
    context_fields,
    stopped_before_start,
)
from procpoold.pool.ring import Segment, SpillError

#: Signal the daemon (through the zygote) sends to interrupt a sync attempt.
INTERRUPT_SIGNAL = signal.SIGUSR1
#: The decoder of request messages (strict and fast; :func:`_decode_lenient` takes the rest).
_unpackb = msgpack.unpackb
#: Log messages buffered before a flush is forced (otherwise the heartbeat tick flushes them).
LOG_BATCH = 64
#: A sync attempt's ``DONE`` is pushed without waking the daemon while the calls queued behind
#: the next one are expected to take at least this long (seconds, at this worker's mean run
#: time): the daemon reads it with the next result that does wake it, still in time to refill
#: the queue before it runs dry. One wakeup then serves several results (a wakeup of the daemon
#: costs it a loop iteration, CPU taken from the workers on a small machine). Short calls (a
#: queue of no-ops holds far less than this) always wake it. See docs/pool.md, Prefetch.
QUIET_LEAD = 0.002
#: ... and below ``QUIET_LEAD / QUIET_QUEUE`` s per call, the worker does not even look.
QUIET_QUEUE = 256


def _shared_roots() -> tuple[str, ...]:
    """Folders whose modules are the same for every job: the standard library, site-packages and
    procpool's own packages (with a trailing separator, for ``startswith``)."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(os.path.dirname(p) for p in (task_api.__file__, procpoold.__file__) if p)
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)


#: Computed once in the zygote (this module is preloaded there).
_SHARED_ROOTS = _shared_roots()
_EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)
_FileFinder = importlib.machinery.FileFinder


def _origin(mod: Any) -> str | None:
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(mod, "__file__", None)
    return origin if isinstance(origin, str) else None


def _is_shared(mod: Any) -> bool:
    """Whether a module comes from the interpreter's own folders (kept across jobs)."""
    origin = _origin(mod)
    if origin in ("built-in", "frozen"):
        return True
    if origin is None:  # a namespace package (shared if all its folders are), or a made-up module
        paths = getattr(mod, "__path__", None)
        try:
            entries = [str(p) for p in paths] if paths is not None else []
        except Exception:
            return False
        return bool(entries) and all(os.path.realpath(p).startswith(_SHARED_ROOTS) for p in entries)
    return os.path.realpath(origin).startswith(_SHARED_ROOTS)


def _is_extension(mod: Any) -> bool:
    origin = _origin(mod)
    return origin is not None and origin.endswith(_EXTENSIONS)


class TaskInterrupted(BaseException):
    """Raised in a sync task when the daemon stops its attempt (timeout, cancel, shutdown).

    A ``BaseException`` so that ``except Exception`` in task code does not swallow it.
    """


def _stop_signal(msg: list[Any]) -> str | None:
    """The signal a ``[CANCEL, id, signal]`` names (None: the default stop, SIGTERM)."""
    return msg[2] if len(msg) > 2 and type(msg[2]) is str else None


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _error(exc: BaseException, skip_frames: int = 1) -> dict[str, str]:
    """An exception as the wire error map; drops the runtime's own frames from the traceback."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"type": _type_name(exc), "message": str(exc), "traceback": text}


class _Undecodable(Exception):
    """Stands for the function of a ``CALL`` whose arguments could not be decoded: resolving it
    fails the attempt with :attr:`error` (see :func:`_decode_lenient`)."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(error["message"])
        self.error = error


def _frozen(key: Any) -> Any:
    """A map key decoded as a list (msgpack packs a tuple key as an array) as a tuple."""
    return tuple(_frozen(k) for k in key) if type(key) is list else key


def _map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    try:
        return dict(pairs)
    except TypeError:
        return {_frozen(k): v for k, v in pairs}


def _decode_lenient(data: bytes) -> list[Any]:
    """A request message the fast decoder refused (off the hot path).

    Any map key is accepted (an integer, a tuple packed as an array: whatever a dict the daemon
    packed may hold). A ``CALL`` whose arguments still cannot be decoded (nested deeper than the
    decoder's stack, say) becomes a call that fails with ``ArgumentsNotDecodable``, and a ``REPLY``
    whose value cannot be decoded an error reply: only that attempt or request fails, the worker
    keeps serving. Anything else is a broken ring, and raises.
    """
    try:
        msg: list[Any] = _unpackb(data, strict_map_key=False, object_pairs_hook=_map)
        return msg
    except Exception as exc:
        error = exc
    reason = str(error) or ("nested too deeply" if isinstance(error, msgpack.StackError) else "")
    what = type(error).__name__ + (f": {reason}" if reason else "")
    head = msgpack.Unpacker(max_buffer_size=max(len(data), 1024), strict_map_key=False)
    head.feed(data)
    try:
        size = head.read_array_header()
        kind = head.unpack()
        if kind == CALL and size == len(CALL_FIELDS):
            aid, _fn, ctx = head.unpack(), head.unpack(), head.unpack()
            name = ctx[3] if isinstance(ctx, list) and len(ctx) > 3 else aid
            message = f"cannot decode the arguments of task {name!r}: {what}"
            bad = _Undecodable({"type": "ArgumentsNotDecodable", "message": message, "traceback": ""})
            return [CALL, aid, bad, ctx, None, None, None, None, None, None, None]
        if kind == REPLY and size == 4:
            rid = head.unpack()
            reply = ProcpoolError(ErrorCode.INTERNAL, f"cannot decode the daemon's reply: {what}")
            return [REPLY, rid, False, reply.to_wire()]
    except Exception:
        pass
    raise error


class _Channel:
    """The ``procpool.task`` channel of one attempt."""

    __slots__ = ("aid", "worker")

    def __init__(self, worker: Worker, aid: str) -> None:
        self.worker = worker
        self.aid = aid

    def request(self, op: str, args: dict[str, Any]) -> Any:
        return self.worker.request(self.aid, op, args)

    def send(self, op: str, args: dict[str, Any]) -> None:
        if op != "progress":
            raise ValueError(f"unknown task message {op!r}")
        data = msgpack.packb([PROGRESS, self.aid, args])
        if len(data) > self.worker.max_message:
            raise ValueError(f"progress report of {len(data):,} bytes, over max_result_bytes")
        self.worker.emit(data)


#: Longest line passed on as one message (longer lines are split, never dropped).
MAX_LINE = 16 * 1024

class _LineStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker: each complete line becomes a log message."""

    def __init__(self, worker: Worker, stream: str, level: int, original: Any) -> None:
        super().__init__()
        self._worker = worker
        self._stream = stream
        self._level = level
        self._original = original
        self._partial: dict[str, str] = {}

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        # Subprocesses started by tasks write to the inherited descriptor, as before.
        return int(self._original.fileno())

    def write(self, s: str) -> int:
        aid = self._worker.log_attempt
        if aid is None:
            return int(self._original.write(s))
        text = self._partial.pop(aid, "") + s
        *lines, rest = text.split("\n")
        for line in lines:
            self._worker.log(aid, self._stream, self._level, line)
        if rest:
            self._partial[aid] = rest
        return len(s)

    def flush(self) -> None:
        if self._worker.log_attempt is None:
            self._original.flush()

    def end(self, aid: str) -> None:
        """The attempt ended: send its unfinished line, if any."""
        rest = self._partial.pop(aid, None)
        if rest:
            self._worker.log(aid, self._stream, self._level, rest)


class _FdCapture:
    """C-level output: file descriptors 1 and 2 are pipes that this worker reads itself.

    Extension code, ``os.write(1, ...)`` and subprocesses started by a task write to the
    descriptors, not to ``sys.stdout``. A reader thread drains the pipes as data arrives (a task
    that writes a lot never blocks on a full pipe) and passes each line on as a log message of
    the attempt that is running; at the end of an attempt the main thread drains what is left
    under the same lock, so every byte written before the attempt returned is attributed to it.
    Outside an attempt the bytes go to the worker's original descriptors.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._lock = threading.Lock()
        self._fds: dict[int, tuple[str, int, int]] = {}  # read end -> (stream, level, original fd)
        self._partial: dict[int, bytes] = {}
        for fd, stream, level in ((1, "stdout", logging.INFO), (2, "stderr", logging.WARNING)):
            r, w = os.pipe()
            original = os.dup(fd)
            os.dup2(w, fd)
            os.close(w)
            os.set_blocking(r, False)
            self._fds[r] = (stream, level, original)
        self._ready = select.poll()
        for r in self._fds:
            self._ready.register(r, select.POLLIN)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="procpool-fd-capture", daemon=True).start()

    def _loop(self) -> None:
        poller = select.poll()
        for r in self._fds:
            poller.register(r, select.POLLIN)
        while True:
            for r, _ in poller.poll():
                with self._lock:
                    self._drain(r, self._worker.log_attempt)

    def drain_all(self, aid: str | None) -> None:
        """Pass on everything written so far (and the unfinished lines) as output of ``aid``."""
        # Fast path, one system call: nothing in the pipes, and the reader thread is not in the
        # middle of passing something on (it holds the lock from before its reads until its
        # last line is queued), so every byte written so far has been passed on already.
        if not self._ready.poll(0) and not self._lock.locked() and not self._partial:
            return
        with self._lock:
            for r in self._fds:
                self._drain(r, aid)
                rest = self._partial.pop(r, b"")
                if rest:
                    self._emit(r, aid, rest)

    def _drain(self, r: int, aid: str | None) -> None:
        while True:
            try:
                data = os.read(r, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            *lines, rest = (self._partial.pop(r, b"") + data).split(b"\n")
            while len(rest) > MAX_LINE:  # a line with no end in sight: pass it on in pieces
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            if rest:
                self._partial[r] = rest
            for line in lines:
                self._emit(r, aid, line)

    def _emit(self, r: int, aid: str | None, line: bytes) -> None:
        stream, level, original = self._fds[r]
        if aid is None:
            os.write(original, line + b"\n")
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        for start in range(0, max(len(text), 1), MAX_LINE):
            self._worker.log(aid, stream, level, text[start:start + MAX_LINE])


#: The attributes every ``logging.LogRecord`` has: the others of a record are its ``extra``.
_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, str] | None:
    """The ``extra={...}`` of a task's record as log context fields (``PROCPOOL_X_<NAME>``;
    renamed or dropped as :func:`procpool.contract.logfields.task_fields` does), or None."""
    attrs = record.__dict__
    if attrs.keys() <= _RECORD_KEYS:
        return None  # (the common case: no extra)
    return task_fields((k, v) for k, v in attrs.items() if k not in _RECORD_KEYS) or None


class _RingLogHandler(logging.Handler):
    """Sends log records of the running attempt to the daemon as ``log`` messages, with the
    record's ``extra={...}`` as log context fields."""

    def __init__(self, worker: Worker, fallback: Any) -> None:
        super().__init__(logging.NOTSET)
        self._worker = worker
        self._fallback = fallback
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            aid = self._worker.log_attempt
            message = self.format(record)
            if aid is None:
                self._fallback.write(f"{record.levelname} {record.name}: {message}\n")
                return
            # Strings and an int whatever the record holds (a record made by hand may carry None):
            # the daemon takes nothing else from a worker.
            fields = {"CODE_FILE": str(record.pathname), "CODE_LINE": str(record.lineno),
                      "CODE_FUNC": str(record.funcName), "LOGGER": str(record.name)}
            extra = extra_fields(record)
            if extra:
                fields.update(extra)
            self._worker.log(aid, "log", int(record.levelno), message, fields)
        except Exception:
            self.handleError(record)


class _Stepper:
    """Drives a coroutine step by step, re-installing its attempt's context before each step.

    ``procpool.task`` keeps the running task in module globals, and several async attempts
    interleave on one loop, so the globals (and the attempt that log lines belong to) are set
    each time the coroutine resumes. Cancellation and other thrown exceptions pass through.
    """

    def __init__(self, coro: Any, enter: Callable[[], None]) -> None:
        self._coro = coro
        self._enter = enter

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        thrown: BaseException | None = None
        while True:
            self._enter()
            try:
                if thrown is not None:
                    exc, thrown = thrown, None
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value
            try:
                value = yield yielded
            except BaseException as exc:  # CancelledError and friends go to the task's code
                thrown, value = exc, None


class Worker:
    """State of one worker process (main thread plus the heartbeat thread)."""

    def __init__(self, slot: int, seg_fd: int, res_efd: int, req_efd: int, cfg: dict[str, Any]) -> None:
        self.slot = slot
        self.segment = Segment(seg_fd, None)
        self.req = self.segment.request
        self.res = self.segment.result
        self.res.set_doorbell(res_efd)
        self.res_efd = res_efd
        self.req_efd = req_efd
        self.tick = float(cfg.get("tick", 0.25))
        spin_ns = int(cfg.get("spin_ns", 0))
        #: The daemon kills a worker that sends a larger message: a larger result fails its
        #: attempt here instead, a larger log line is cut, a larger request or progress raises.
        self.max_result = int(cfg.get("max_result_bytes", 0)) or 2**62
        self.max_message = self.max_result + MESSAGE_ENVELOPE
        self.max_line = self.max_result // 4  # (4: bytes of UTF-8 per character at most)
        self.spin_ns = spin_ns
        if spin_ns > 0:
            self.req.set_spin(spin_ns, spin_ns)
        #: Guards the result ring's producer handle and :attr:`outbuf` (main + heartbeat thread).
        self.lock = threading.Lock()
        self.outbuf: list[bytes] = []
        self.inbox: deque[list[Any]] = deque()
        #: Queued calls cancelled before they started (their "done" is posted when reached).
        self.stopped: set[str] = set()
        self.funcs: dict[str, tuple[Callable[..., Any], bool]] = {}
        #: The sync attempt whose code runs on the main thread right now (the interrupt target).
        self.current: str | None = None
        #: The attempt that log records and printed lines belong to right now.
        self.log_attempt: str | None = None
        self.async_tasks: dict[str, asyncio.Task[None]] = {}
        #: What async attempts changed, as it was before (restored when the last one ends).
        self.async_env: dict[str, str | None] = {}
        self.async_cwd: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle: asyncio.Future[None] | None = None
        self.draining = False
        #: A sync attempt waits in :meth:`request`, which reads the ring itself (the interrupt
        #: handler leaves it alone then, and sets :attr:`interrupted` for it to look when done).
        self.requesting = False
        self.interrupted = False
        #: A stop's signal came while no sync attempt's code ran (the attempt may be on its way:
        #: its function being imported); the next one looks for its cancel before it runs.
        self.signalled = False
        #: the exception the interrupt handler raised last in a sync attempt (a stop)
        self.raised: BaseException | None = None
        self.exiting = False
        #: A ``WAKE`` came: before the next wait, spin for ``wake_spin`` seconds (or none at all).
        self.woken = False
        self.wake_spin = 0.0
        self.busy = False
        #: Moving average of the run time of this worker's sync calls (s), and whether a result
        #: was pushed without waking the daemon since its last wakeup (the heartbeat thread rings
        #: for it within a tick, should the queue behind it take longer than expected).
        self.took_mean = 0.0
        self.quiet = False
        self.rid = 0
        self._hb_sleeping = False
        self._hb_wake = threading.Event()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._loggers: dict[str, logging.Logger] = {}
        self.root = logging.getLogger()
        #: The job whose attempts this worker runs (None: none yet, the worker is clean).
        self.job: str | None = None
        #: The working folder found safe for this job (checked again when the job changes).
        self.cwd_checked: str | None = None
        #: ``F_UNCLEAN`` once the worker cannot be restored for another job (else 0).
        self.unclean = 0
        self._clean: _Snapshot | None = None
        #: Modules loaded since the snapshot that were looked at already.
        self._known: set[str] = set()
        self._nmods = len(sys.modules)
        self.stdout = _LineStream(self, "stdout", logging.INFO, sys.__stdout__)
        self.stderr = _LineStream(self, "stderr", logging.WARNING, sys.__stderr__)
        self.fd_capture: _FdCapture | None = None
        #: Where each job's tasks start (the user's home, or where the zygote stood).
        try:
            self.start_cwd: str | None = os.getcwd()
        except OSError:
            self.start_cwd = None

    # -- setup -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Signal handler, output capture, logging handler and the heartbeat thread."""
        signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        root = logging.getLogger()
        for handler in list(root.handlers):  # the daemon's handlers must not write from here
            root.removeHandler(handler)
        root.addHandler(_RingLogHandler(self, sys.__stderr__))
        # The heartbeat thread must never take the interrupt: block it while the thread starts
        # (it inherits the mask), so the signal always lands on the main thread.
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()  # nothing buffered before the switch may land in the pipe
        self.fd_capture = _FdCapture(self)
        signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL})
        try:
            threading.Thread(target=self._heartbeat_loop, name="procpool-heartbeat", daemon=True).start()
            self.fd_capture.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {INTERRUPT_SIGNAL})
        # The zygote took the snapshot (shared with every worker: taking it here would copy the
        # pages of every module object, as the reference counts change); the logger is ours.
        self._clean = (_CLEAN or _Snapshot()).with_logging()
        _install_code_cache()
        self._nmods = len(sys.modules)

    # -- main loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until asked to exit; returns the exit code."""
        inbox = self.inbox
        fresh = False  # the ring was drained just now: nothing can be waiting behind the inbox
        while True:
            while inbox:
                if not fresh and (len(inbox) > 1 or inbox[0][0] == CALL):
                    # Prefetched calls wait here: look at the ring first, so that a cancel of a
                    # queued call (or an exit) is seen before that call starts.
                    self._drain()
                fresh = False
                self._handle(inbox.popleft())
            if self.async_tasks:
                # (Tasks may also have been created by the last reader callback of the previous
                # phase, after its idle future resolved: hence the check before blocking.)
                self._run_async_phase()
                continue
            if self.exiting:
                return 0
            if self.woken:
                # A client is submitting (WAKE): stay awake for its attempt, a bounded time, or
                # (no spin asked) sleep at once: the attempt comes after the daemon's commit,
                # later than the usual spin would last.
                self.woken = False
                if not self.req.spin_while_running(self.wake_spin) and self.spin_ns > 0:
                    self.req.set_spin(0, 0)
                    try:
                        self.req.wait()
                    finally:
                        self.req.set_spin(self.spin_ns, self.spin_ns)
            self.req.wait()
            self._drain()
            fresh = True

    def _drain(self) -> None:
        # The interrupt handler drains too; the flag keeps it from interleaving with us.
        # Messages reach the inbox before the flag drops, so the order is kept.
        self.draining = True
        try:
            try:
                raw = self.req.pop_many(256)
            except SpillError as exc:
                raw = exc.partial
                print(f"procpool worker {self.slot}: {exc}", file=sys.__stderr__, flush=True)
            if raw:
                self._take(raw)
        finally:
            self.draining = False

    def _take(self, raw: list[bytes]) -> None:
        inbox = self.inbox
        for data in raw:
            try:
                msg = _unpackb(data)
            except Exception:
                msg = _decode_lenient(data)
            if msg[0] == CANCEL and inbox:
                # A cancel of a call still queued here: mark the call (its "done" is posted when
                # the main loop reaches it; no I/O here, this may run in the signal handler).
                aid = msg[1]
                if any(m[0] == CALL and m[CALL_ID] == aid for m in inbox):
                    self.stopped.add(aid)
                    continue
            inbox.append(msg)

    def _handle(self, msg: list[Any]) -> None:
        kind = msg[0]
        if kind == CALL:
            self._start(msg)
        elif kind == CANCEL:
            self._cancel(msg[1], _stop_signal(msg))
        elif kind == EXIT:
            self.exiting = True
        elif kind == WAKE:
            self._prewake(msg)
        # REPLY here is stale (its request was interrupted): dropped.

    def _prewake(self, msg: list[Any]) -> None:
        """``[WAKE, spin_us, restore]``: spin for the next request rather than sleep (bounded);
        with ``restore``, leave the last job now (the next attempt is another job's)."""
        spin_us = msg[1] if len(msg) > 1 and type(msg[1]) in (int, float) else 0.0
        self.wake_spin = min(max(float(spin_us), 0.0), MAX_WAKE_SPIN_US) * 1e-6
        self.woken = True
        restore = len(msg) > 2 and msg[2] is True
        if (restore and self.job is not None and not self.unclean and not self.async_tasks
                and not any(m[0] == CALL for m in self.inbox)):
            self._switch(None)

    def _switch(self, job: str | None) -> None:
        """Start serving ``job``: forget what the previous job loaded (see the module docstring)."""
        if self.job is not None and self._clean is not None:
            if len(sys.modules) != self._nmods:
                self._scan_modules()
            self._known.difference_update(self._clean.restore())
            self.funcs.clear()
            self._nmods = len(sys.modules)
            if self.start_cwd is not None:  # where the previous job's tasks may have moved
                with contextlib.suppress(OSError):
                    os.chdir(self.start_cwd)
        self.cwd_checked = None
        self.job = job

    def _scan_modules(self) -> None:
        """Classify the modules loaded since the last look: one that cannot be unloaded makes the
        worker unclean (checked after each attempt, only when the number of modules changed)."""
        clean = self._clean
        if clean is None:
            return
        known = self._known
        added = clean.added()
        for name, mod in added:
            if name in known:
                continue
            known.add(name)
            if _is_extension(mod) and not _is_shared(mod):
                self.unclean = F_UNCLEAN
        self._nmods = len(sys.modules)

    def _flags(self) -> int:
        """``F_UNCLEAN`` when the worker cannot be restored for another job (cheap when nothing
        was imported)."""
        if len(sys.modules) != self._nmods:
            self._scan_modules()
        return self.unclean

    def _resolve(self, call: str, python_path: list[str] | None,
                 cwd: str | None = None) -> tuple[Callable[..., Any], bool]:
        found = self.funcs.get(call)
        if found is not None:
            return found
        if isinstance(call, _Undecodable):
            raise call
        use_python_path(python_path, cwd)
        obj = resolve(call)
        found = (obj, inspect.iscoroutinefunction(obj))
        self.funcs[call] = found
        return found

    def _start(self, msg: list[Any]) -> None:
        aid = msg[CALL_ID]
        if self.stopped and aid in self.stopped:
            self.stopped.discard(aid)
            self.post(stopped_before_start(aid))
            return
        ctx = msg[CALL_CTX]
        job = ctx[CTX_JOB_ID] if type(ctx) is list and ctx else None
        if job != self.job and not self.async_tasks:
            self._switch(job)
        try:
            fn, is_async = self._resolve(msg[CALL_FN], msg[CALL_PATH], msg[CALL_CWD])
        except _Undecodable as exc:
            self.post(self._pack([DONE, aid, False, exc.error, self._flags(), None]))
            return
        except Exception as exc:
            self.post(self._pack([DONE, aid, False, _error(exc, 0), self._flags(), None]))
            return
        if msg[CALL_IO] and not is_async:
            # The daemon may run other attempts on this worker's loop beside it: a plain function
            # would hold them all up. It fails before it runs.
            err = {"type": "TypeError", "message": (
                f"{msg[CALL_FN]} is not an async def function, and only those can be I/O-bound "
                '("io": true) tasks that share a worker; remove "io" (or set it to false) to run '
                "it on a worker of its own"), "traceback": ""}
            self.post(self._pack([DONE, aid, False, err, self._flags(), None]))
            return
        self._set_busy()
        if is_async:
            self._start_async(aid, fn, msg)
        else:
            self._run_sync(aid, fn, msg)
            if not self.async_tasks:
                self.busy = False

    def _cancel(self, aid: str, signame: str | None = None) -> None:
        task = self.async_tasks.get(aid)
        if task is not None:
            task.cancel(f"stopped by {signame or 'SIGTERM'}")
            return
        for i, m in enumerate(self.inbox):
            if m[0] == CALL and m[CALL_ID] == aid:  # not started yet: it ends right here
                del self.inbox[i]
                self.post(stopped_before_start(aid))
                return

    # -- sync attempts -----------------------------------------------------------------------------

    def _enter(self, aid: str, msg: list[Any]) -> Callable[[], None]:
        """Apply the attempt's context, env and cwd; return the function that undoes them."""
        self._install(aid, msg[CALL_CTX])
        self.log_attempt = aid
        level = msg[CALL_LOG_LEVEL]
        if level is not None and level != self.root.level:
            self._set_level(level)
        env: dict[str, str] | None = msg[CALL_ENV]
        cwd: str | None = msg[CALL_CWD]
        if not env and not cwd:
            return _clear_task
        if cwd and cwd != self.cwd_checked:
            _check_cwd(cwd)
            self.cwd_checked = cwd
        saved = {k: os.environ.get(k) for k in env} if env else {}
        if env:
            os.environ.update(env)
        old_cwd = None
        try:
            if cwd:
                old_cwd = os.getcwd()
                try:
                    os.chdir(cwd)
                except OSError as exc:
                    raise _cwd_error(cwd, exc) from None
        except BaseException:
            _restore_env(saved)
            raise

        def leave() -> None:
            _clear_task()
            _restore_env(saved)
            if old_cwd is not None:
                with contextlib.suppress(OSError):
                    os.chdir(old_cwd)

        return leave

    def _set_level(self, level: Any) -> None:
        """Keep the task's records from ``level`` on (the root logger's level: a record below it
        is not even made). Only when it changes: ``setLevel`` clears every logger's cache."""
        if type(level) is not int:
            return
        self.root.setLevel(level)
        if self._clean is not None:
            self._clean.level = level  # (what a switch to another job restores)

    def _install(self, aid: str, ctx: list[Any]) -> None:
        """``procpool.task._install``, with the task's logger cached (``getLogger`` takes a lock)."""
        name = ctx[CTX_TASK_NAME]
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._loggers[name] = logging.getLogger(f"procpool.task.{name}")
        task_api._current = task_api._Attempt(_Channel(self, aid), context_fields(ctx), logger)

    def _run_sync(self, aid: str, fn: Callable[..., Any], msg: list[Any]) -> None:
        leave = _clear_task
        took: float | None = None
        try:
            leave = self._enter(aid, msg)
            try:
                # From here a signal may raise TaskInterrupted; ``current`` bounds the window.
                self.current = aid
                if self.signalled:  # stopped while it was being prepared (a slow import)
                    # (a signal during this drain finds it draining and sets ``interrupted``)
                    while self.signalled or self.interrupted:
                        self.signalled = self.interrupted = False
                        self._drain()
                    self._take_cancel()
                started = _clock()
                result = fn(*(msg[CALL_ARGS] or ()), **(msg[CALL_KWARGS] or {}))
            finally:
                self.current = None
            took = _clock() - started
            out = self._encode_result(aid, result, False, took)
        except TaskInterrupted as exc:
            out = self._pack([DONE, aid, False, _error(exc), F_STOPPED | self._flags(), None])
        except BaseException as exc:  # task code may raise anything, SystemExit included
            # (a KeyboardInterrupt this worker raised for a stop by SIGINT is a stop too)
            flags = F_STOPPED if exc is self.raised else 0
            out = self._pack([DONE, aid, False, _error(exc), flags | self._flags(), None])
        finally:
            leave()
            self._end_output(aid)
        if took is not None:
            self.took_mean += (took - self.took_mean) * 0.25
        self.post(out, self._wake_needed())

    def _wake_needed(self) -> bool:
        """Whether the result just ended must wake the daemon: unless the calls queued here after
        the next one hold :data:`QUIET_LEAD` of work (see there). Called once per sync attempt;
        for calls too short for any queue to hold that much (no-ops) it only compares numbers.
        Otherwise it first takes what the daemon sent meanwhile (calls sent while this one ran
        are still in the ring)."""
        mean = self.took_mean
        if mean * QUIET_QUEUE < QUIET_LEAD:
            return True
        self._drain()
        calls = sum(1 for m in self.inbox if m[0] == CALL) - len(self.stopped)
        return mean * (calls - 1) < QUIET_LEAD

    def _encode_result(self, aid: str, result: Any, is_async: bool, took: float | None = None) -> bytes:
        flags = (F_ASYNC if is_async else 0) | self._flags()
        try:
            # ``took``: run time of a sync call (the daemon prefetches short functions).
            data: bytes = self._pack([DONE, aid, True, result, flags, took])
            if len(data) > self.max_message:
                message = (f"the return value takes {len(data):,} bytes of msgpack, over "
                           f"max_result_bytes ({self.max_result:,}, and {MESSAGE_ENVELOPE} for the "
                           "message around it); return less, or raise the limit in the daemon's config")
                error = {"type": "ResultTooLarge", "message": message, "traceback": ""}
                data = self._pack([DONE, aid, False, error, flags, None])
            return data
        except Exception as exc:
            self._pack = msgpack.Packer(use_bin_type=True).pack  # drop a half-written buffer
            message = f"return value of type {type(result).__qualname__} is not msgpack-able ({exc})"
            error = {"type": "ResultNotSerializable", "message": message, "traceback": ""}
            data = self._pack([DONE, aid, False, error, flags, None])
            return data

    def _end_output(self, aid: str) -> None:
        if self.fd_capture is not None:
            self.fd_capture.drain_all(aid)
        self.stdout.end(aid)
        self.stderr.end(aid)
        self.log_attempt = None

    # -- async attempts ----------------------------------------------------------------------------

    def _start_async(self, aid: str, fn: Callable[..., Any], msg: list[Any]) -> None:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        self.async_tasks[aid] = self.loop.create_task(self._async_attempt(aid, fn, msg))

    async def _async_attempt(self, aid: str, fn: Callable[..., Any], msg: list[Any]) -> None:
        current = task_api._install(_Channel(self, aid), context_fields(msg[CALL_CTX]))
        env: dict[str, str] | None = msg[CALL_ENV]
        cwd: str | None = msg[CALL_CWD]
        level = msg[CALL_LOG_LEVEL]
        root = self.root
        # Undone when the last async attempt ends, as a sync attempt's are when it ends (else the
        # next job's tasks run with them): what they were before the first one changed them.
        for key in env or ():
            self.async_env.setdefault(key, os.environ.get(key))
        if cwd and self.async_cwd is None:
            with contextlib.suppress(OSError):
                self.async_cwd = os.getcwd()

        def enter() -> None:
            # Concurrent async attempts share the process: env and cwd are applied per step.
            task_api._current = current
            self.log_attempt = aid
            if level is not None and level != root.level:
                self._set_level(level)
            if env:
                os.environ.update(env)
            if cwd:
                os.chdir(cwd)

        try:
            try:
                if cwd and not os.path.isabs(cwd):  # entered at each step: from here, once
                    cwd = os.path.join(os.getcwd(), cwd)
                if cwd and cwd != self.cwd_checked:
                    _check_cwd(cwd)
                    self.cwd_checked = cwd
                enter()
                result = await _Stepper(fn(*(msg[CALL_ARGS] or ()), **(msg[CALL_KWARGS] or {})), enter)
            finally:
                _clear_task()
            out = self._encode_result(aid, result, True)
        except asyncio.CancelledError as exc:
            out = self._pack([DONE, aid, False, _error(exc), F_ASYNC | F_STOPPED | self._flags(), None])
        except BaseException as exc:
            out = self._pack([DONE, aid, False, _error(exc), F_ASYNC | self._flags(), None])
        finally:
            self._end_output(aid)
            self.async_tasks.pop(aid, None)
            if not self.async_tasks:
                _restore_env(self.async_env)
                self.async_env.clear()
                if self.async_cwd is not None:
                    with contextlib.suppress(OSError):
                        os.chdir(self.async_cwd)
                    self.async_cwd = None
        self.post(out)
        if not self.async_tasks:
            self.busy = False
            if self.idle is not None and not self.idle.done():
                self.idle.set_result(None)

    def _run_async_phase(self) -> None:
        """Run the asyncio loop until no async attempt is left, watching the request ring."""
        loop = self.loop
        assert loop is not None
        self.idle = loop.create_future()
        loop.add_reader(self.req_efd, self._on_request_async)
        loop.call_soon(self._on_request_async)
        try:
            loop.run_until_complete(self.idle)
        finally:
            loop.remove_reader(self.req_efd)
            self.req.disarm()
            self.idle = None

    def _on_request_async(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.req_efd)
        self._drain()
        while self.inbox:
            self._handle(self.inbox.popleft())
        # Arm the doorbell: the daemon then writes the eventfd for the next message. If
        # something arrived meanwhile, arm() says so and we come back at once instead.
        if not self.req.arm() and self.loop is not None:
            self.loop.call_soon(self._on_request_async)

    # -- interrupts --------------------------------------------------------------------------------

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        # Runs on the main thread between two bytecodes of whatever it was doing.
        if self.current is None:
            self.signalled = True  # not in sync task code (yet: _run_sync looks)
            return
        if self.draining or self.requesting:
            # The main thread is reading the ring, or waits for a reply (and must be the only
            # one to take messages then: were the reply taken here, its wait would go on with
            # nothing left to wake it). It looks for the cancel itself.
            self.interrupted = True
            return
        self._drain()
        self._take_cancel()

    def _take_cancel(self) -> None:
        """Raise TaskInterrupted if a cancel for the running sync attempt is in the inbox."""
        current = self.current
        if current is None:
            return
        for i, m in enumerate(self.inbox):
            if m[0] == CANCEL and m[1] == current:
                del self.inbox[i]
                signame = _stop_signal(m)
                if signame == "SIGINT":  # as Python does on Ctrl-C
                    exc: BaseException = KeyboardInterrupt(f"attempt {current} was stopped by SIGINT")
                else:
                    by = "" if signame in (None, "SIGTERM") else f" ({signame})"
                    exc = TaskInterrupted(f"attempt {current} was stopped by procpoold{by}")
                self.raised = exc
                raise exc

    # -- talking to the daemon ---------------------------------------------------------------------

    def request(self, aid: str, op: str, args: dict[str, Any]) -> Any:
        """A blocking round trip to the daemon (namespace operations)."""
        self.rid += 1
        rid = self.rid
        inbox = self.inbox
        reply: list[Any] | None = None
        data = msgpack.packb([REQUEST, aid, rid, op, args])
        if len(data) > self.max_message:
            raise ProcpoolError(ErrorCode.LIMIT_EXCEEDED, f"the request takes {len(data):,} bytes, over "
                                f"max_result_bytes ({self.max_result:,})")
        self.requesting, self.interrupted = True, False
        try:
            self.post(data)
            while reply is None:
                for i, m in enumerate(inbox):
                    if m[0] == REPLY and m[1] == rid:
                        del inbox[i]
                        reply = m
                        break
                else:
                    self._take_cancel()
                    self.req.wait()  # a cancel wakes it too: the daemon pushes it before the signal
                    self._drain()
        finally:
            self.requesting = False
            if self.loop is not None and self.loop.is_running():
                # We consumed ring messages the async reader has not seen: let it look.
                self.loop.call_soon(self._on_request_async)
        # A cancel may have come with the reply, its signal held back by the handler.
        if self.interrupted:
            self.interrupted = False
            self._drain()
        self._take_cancel()
        if reply[2]:
            return reply[3]
        raise ProcpoolError.from_wire(reply[3])

    def log(self, aid: str, stream: str, level: int, message: str,
            fields: dict[str, str] | None = None) -> None:
        """Queue one log message of attempt ``aid`` (sent in batches)."""
        if len(message) > self.max_line:
            message = message[: self.max_line - 20] + " [cut: too long]"
        self.emit(msgpack.packb([LOG, aid, stream, level, message, fields or None]))

    def emit(self, data: bytes) -> None:
        """Queue a message; flush when the batch is full (the heartbeat tick flushes the rest)."""
        with self.lock:
            self.outbuf.append(data)
            full = len(self.outbuf) >= LOG_BATCH
        if full:
            self.flush()

    def post(self, data: bytes, wake: bool = True) -> None:
        """Queue a message and send everything queued now, waking the daemon if it sleeps (unless
        ``wake`` is False: then the heartbeat thread wakes it within a tick, if nothing else does)."""
        with self.lock:
            self.outbuf.append(data)
            self._flush_locked(wake)
            if not wake:
                self.quiet = True

    def flush(self, wake: bool = True) -> None:
        """Send everything queued."""
        with self.lock:
            self._flush_locked(wake)

    def _flush_locked(self, wake: bool) -> None:
        buf = self.outbuf
        if not buf:
            return
        self.outbuf = []
        if wake:
            self.quiet = False  # the daemon reads everything pushed so far
        done = self.res.push_many(buf, wake=wake) if len(buf) > 1 else int(self.res.push(buf[0], wake=wake))
        delay = 2e-5
        while done < len(buf):
            # The ring is full: the daemon drains it soon (it was woken by what filled it).
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
            done += self.res.push_many(buf[done:], wake=True)

    def _set_busy(self) -> None:
        self.busy = True
        if self._hb_sleeping:
            self._hb_wake.set()

    def _heartbeat_loop(self) -> None:
        # While busy: a heartbeat (no wakeup; the daemon reads them when it drains) and the
        # queued log lines (with a wakeup) every tick. While idle: blocked, no wakeups at all.
        while True:
            if not self.busy:
                self._hb_sleeping = True
                if not self.busy:  # re-check after announcing: _set_busy may have run in between
                    self._hb_wake.wait()
                self._hb_sleeping = False
                self._hb_wake.clear()
                continue
            time.sleep(self.tick)
            if not self.busy:
                continue
            with self.lock:
                # Log lines deserve a wakeup, and so does a result pushed without one; a bare
                # heartbeat does not.
                wake = bool(self.outbuf) or self.quiet
                self.outbuf.append(HEARTBEAT_MESSAGE)
                self._flush_locked(wake)


_clock = time.perf_counter


def _cwd_error(cwd: str, exc: OSError) -> OSError:
    """The error of an attempt whose working directory cannot be entered, in words (its type kept:
    ``FileNotFoundError: the working directory '/srv/x' does not exist``)."""
    what = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a directory"}.get(
        exc.errno or 0, f"is not accessible ({exc.strerror or exc})")
    return type(exc)(f"the working directory {cwd[:200]!r} {what}")


def _check_cwd(cwd: str) -> None:
    """Refuse a working folder that others could swap or fill (checked as the worker's user;
    a relative one where ``chdir`` will find it)."""
    where = cwd if os.path.isabs(cwd) else os.path.join(os.getcwd(), cwd)
    problem = unsafe_folder(where, imports=False)
    if problem is not None:
        raise PermissionError(f"cwd: {problem}")


class _Snapshot:
    """What a clean worker's import machinery looks like, to restore between jobs.

    Taken once in the zygote, so that every worker shares it. The preloaded modules are never
    iterated over in a worker (that would copy every page holding a module object into it, as
    reference counts change): ``sys.modules`` keeps insertion order, so what was loaded since is
    what follows the last preloaded entry.
    """

    def __init__(self) -> None:
        self.path = list(sys.path)
        self.meta_path = list(sys.meta_path)
        self.path_hooks = list(sys.path_hooks)
        self.modules = dict(sys.modules)
        self.handlers: list[logging.Handler] = []
        self.level = logging.WARNING
        #: Modules loaded since, judged the interpreter's own (kept): name -> module.
        self.kept: dict[str, Any] = {}

    def with_logging(self) -> _Snapshot:
        """This snapshot with the root logger as it is now (the worker's own handler)."""
        root = logging.getLogger()
        self.handlers = list(root.handlers)
        self.level = root.level
        return self

    def added(self) -> list[tuple[str, Any]]:
        """Entries of ``sys.modules`` added (or re-added) since the snapshot, newest first."""
        mods, clean = sys.modules, self.modules
        out = []
        for name in reversed(mods):
            mod = mods[name]
            if clean.get(name) is mod:
                break
            out.append((name, mod))
        return out

    def restore(self) -> list[str]:
        """Put the import machinery back; unload what jobs loaded (but the interpreter's own
        modules and what cannot be unloaded). Returns the names unloaded."""
        sys.path[:] = self.path
        sys.meta_path[:] = self.meta_path
        sys.path_hooks[:] = self.path_hooks
        # The standard finder of a folder keeps nothing of a job's (it rereads the folder when
        # it changes) and costs a listing to rebuild: kept. Any other finder a job made goes.
        cache = sys.path_importer_cache
        keep = set(self.path)
        for key in [k for k, v in cache.items() if k not in keep and type(v) is not _FileFinder]:
            cache.pop(key, None)
        mods = sys.modules
        clean, kept = self.modules, self.kept
        removed = []
        added = self.added()
        for name, mod in added:
            if name in clean:
                mods[name] = clean[name]  # a preloaded module replaced: the original goes back
                continue
            if kept.get(name) is mod:
                continue
            if _is_shared(mod):
                kept[name] = mod
                continue
            if _is_extension(mod):
                continue
            mods.pop(name, None)
            removed.append(name)
        still_new = sum(1 for name, _ in added if name not in clean) - len(removed)
        if len(mods) - still_new < len(clean):  # rare: a preloaded module is gone
            for name, mod in clean.items():
                if name not in mods:
                    mods[name] = mod
        root = logging.getLogger()
        if root.handlers != self.handlers:
            root.handlers[:] = self.handlers
        if root.level != self.level:  # setLevel clears the cache of every logger: only if needed
            root.setLevel(self.level)
        return removed


#: The clean state, taken in the zygote once it has preloaded everything (:func:`snapshot`).
_CLEAN: _Snapshot | None = None


def snapshot() -> None:
    """Take the clean snapshot (the zygote calls this after preloading, before any fork).

    The daemon's own ``sys.path`` entries that anyone could plant a module in (``python -m`` run
    in ``/tmp`` puts ``/tmp`` first; a relative entry is wherever a task stands) are left out
    first, with a line on stderr: every task's imports would look there.
    """
    global _CLEAN
    safe = []
    for entry in sys.path:
        problem = unsafe_folder(entry, imports=True) if os.path.isabs(entry) else "it is relative"
        if problem is None:
            safe.append(entry)
        else:
            with contextlib.suppress(OSError):
                os.write(2, f"procpool pool: tasks do not import from {entry!r}: {problem}\n".encode())
    sys.path[:] = safe
    _CLEAN = _Snapshot()


#: Code objects compiled from source in this worker, by (path, source): jobs of one user often
#: import the same module, and every job imports it anew (its modules are unloaded between
#: jobs); without bytecode files (``PYTHONDONTWRITEBYTECODE``, or a folder the user cannot write)
#: each import compiled the source again, most of a job switch (about 100 us for a small module).
#: Keyed by the whole source, so an edited file is compiled afresh; a code object holds no
#: state of a job (each import executes it in a new module). Bounded: CODE_CACHE_ENTRIES entries,
#: CODE_CACHE_BYTES of source.
_code_cache: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
CODE_CACHE_ENTRIES = 256
CODE_CACHE_BYTES = 4 * 2**20


def _install_code_cache() -> None:
    """Let the standard source loader reuse the code compiled for an identical source."""
    loader = importlib.machinery.SourceFileLoader
    compile_source = loader.source_to_code
    held = [0]  # bytes of source in the cache

    def source_to_code(self: Any, data: Any, path: Any, *, _optimize: int = -1) -> Any:
        if _optimize != -1 or type(data) is not bytes or type(path) is not str:
            return compile_source(self, data, path, _optimize=_optimize)
        key = (path, data)
        code = _code_cache.get(key)
        if code is not None:
            _code_cache.move_to_end(key)
            return code
        code = compile_source(self, data, path)
        if len(data) <= CODE_CACHE_BYTES // 4:
            _code_cache[key] = code
            held[0] += len(data)
            while len(_code_cache) > CODE_CACHE_ENTRIES or held[0] > CODE_CACHE_BYTES:
                (_, old), _ = _code_cache.popitem(last=False)
                held[0] -= len(old)
        return code

    loader.source_to_code = source_to_code  # type: ignore[method-assign]


def _clear_task() -> None:
    task_api._clear()


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def main(slot: int, seg_fd: int, res_efd: int, req_efd: int, cfg: dict[str, Any]) -> int:
    """Entry point of a worker process (called by the zygote in the child after fork)."""
    worker = Worker(slot, seg_fd, res_efd, req_efd, cfg)
    worker.install()
    try:
        code = worker.run()
        worker.flush()
        return code
    except BaseException:
        # A failure of the runtime itself (not of task code): say so on the inherited stderr; the
        # daemon turns the exit status into a sentence for the attempt that was running.
        traceback.print_exc(file=sys.__stderr__)
        return 70

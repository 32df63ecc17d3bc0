"""The daemon's root logger: every record, the daemon's and its tasks', goes through one bounded queue
to one writer thread, which sends it to journald with structured fields, or to stderr as readable lines.

Producers
    * the daemon's own ``logging`` calls reach :class:`SinkHandler`, the only handler on the root
      logger (``extra={"journal_fields": {...}}`` adds fields, ``MESSAGE_ID`` among them);
    * task output and task log records (from ``cmd`` pipes and pool workers) go through a
      :class:`TaskLog`, one per attempt, whose fields are computed once at dispatch.

The queue
    holds at most ``queue_size`` records. Policy ``block``: :meth:`LogSink.has_room` turns False
    when it is full; a producer on the loop then stops reading that task's output and asks
    :meth:`LogSink.when_room` to be called back (through an eventfd the writer signals, registered
    with the loop) once the queue is half empty. The record that filled it is still accepted, so
    nothing is lost; a producer that ignores the signal is cut off at twice the size (its records
    are dropped and counted). Policy ``drop``: records beyond the size are dropped at once and
    counted; the writer reports the count per task as a warning record (``MESSAGE_ID`` =
    ``LOG_DROPPED``) at most once a second. The daemon's own records are never refused below twice
    the size.

The writer
    is a thread started after the worker zygote exists (:func:`start_writer`), so no process is
    forked from a threaded daemon. Until it starts and after it stops, records are written
    synchronously. It speaks journald's native protocol on its own datagram socket: the socket
    call releases the GIL, so a slow or stalled journald never freezes the loop
    (``systemd.journal.sendv`` keeps the GIL while ``sendmsg`` blocks).

Targets
    ``journal`` when asked for, or with ``auto`` when the journal socket exists and the daemon runs
    as a systemd service (``INVOCATION_ID`` or ``JOURNAL_STREAM`` set); ``stderr`` otherwise. Outside
    systemd ``systemd.journal.send`` drops messages silently, hence the explicit choice; should
    journald vanish later, the writer falls back to stderr for what it could not send.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, Protocol

from procpoold.logconfig import DEFAULT_QUEUE_SIZE, Policy, Target
from procpoold.logstore import LogStore, Record

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "procpoold"
#: Longest message sent as one record (characters); longer ones are split into several records.
MAX_MESSAGE = 16 * 1024
_BATCH = 256  # records the writer takes per round
#: How long the writer, once woken, waits for more records before it writes a small batch.
_LINGER = 0.01
#: After its last batch the writer keeps looking every ``_LINGER`` for this long before it parks:
#: while records keep coming, the loop never has to wake it (an ``Event.set`` is a futex wake and
#: a GIL handoff on the loop's thread, once per batch); an idle daemon parks it within 0.25 s.
_PARK_AFTER = 0.25
_DROP_REPORT_INTERVAL = 1.0


class MessageId:
    """``MESSAGE_ID`` of each lifecycle event (``journalctl MESSAGE_ID=<id>`` finds them all)."""

    JOB_SUBMITTED = "43fda09ad12645e083f78f4505cd7e23"
    JOB_FINISHED = "f86bc8c11a0e44ab8beb0fd928f496ad"
    TASK_STARTED = "a62e7c6239454af496320d943dbd884a"
    TASK_COMPLETED = "356fdfae06c046729a61b9365db4f10a"
    TASK_FAILED = "a0f41f512d3849a4a3ce90af32e1b3f2"
    TASK_RETRIED = "d76b0238c49946bf86cc7bd501de228a"
    TASK_TIMED_OUT = "e169234f15bd454d82ecdb99cf143275"
    TASK_CANCELLED = "a5d8c777b9904ea3b8dc1a115fa5d6ff"
    TASK_SKIPPED = "cbda29f95fe84a71b3bbeb0f5118519f"
    WORKER_SPAWNED = "30e2c150721741e48c4d6ad589f6aab4"
    WORKER_DIED = "745dde1e386340a99e5d88d367879dda"
    WORKER_REPLACED = "896aa54975264c90a373cfd574a35ceb"
    DAEMON_READY = "b7e4a2f0c41d4a0e9a6f2d8c3e5b1a70"
    DAEMON_STOPPING = "d443cedd6cb14258a645e56a8f406e64"
    LOG_DROPPED = "0b2dee34cd1b4b10b1c0689c56c5793a"
    LOG_STALLED = "ede317794a464965af7bb52e3eceb131"


def message_ids() -> dict[str, str]:
    """Event name -> MESSAGE_ID, for documentation and tests."""
    return {k.lower(): v for k, v in vars(MessageId).items() if k.isupper()}


# -- priorities and field encoding ----------------------------------------------------------------


def priority(levelno: int) -> int:
    """The syslog priority journald expects for a ``logging`` level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


_PRIORITIES = {
    level: priority(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
_LEVEL_NAMES = {2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "NOTICE", 6: "INFO", 7: "DEBUG"}


@functools.lru_cache(maxsize=4096)
def _field_name(name: str) -> str:
    """journald field names: upper-case letters, digits and underscores, not starting with '_'.

    Cached: the same few dozen names are checked for every record on the hot path.
    """
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name.upper()).lstrip("_")
    return clean or "FIELD"


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """journald's native protocol: ``NAME=value\\n``, or a length-prefixed value if it has a newline."""
    out = bytearray()
    for name, value in fields:
        key = _field_name(name).encode()
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


class FieldSet:
    """Fields shared by many records (an attempt's, per stream), encoded once for both targets."""

    __slots__ = ("_text", "_wire", "fields")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = {_field_name(k): str(v) for k, v in fields.items()}
        self.fields.setdefault("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER)
        # Encoded on first use, by the writer thread: the loop only collects the fields.
        self._wire: bytes | None = None
        self._text: str | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = encode_fields(self.fields.items())
        return self._wire

    @property
    def text(self) -> str:
        if self._text is None:
            shown = sorted((k, v) for k, v in self.fields.items() if k not in _NOT_SHOWN)
            self._text = (" [" + " ".join(f"{k}={v}" for k, v in shown) + "]") if shown else ""
        return self._text


#: Fields the stderr lines leave out (the level shows PRIORITY; the rest is noise on a terminal).
_NOT_SHOWN = frozenset({"SYSLOG_IDENTIFIER", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "LOGGER"})
_DAEMON_FIELDS = FieldSet({})

# An entry of the queue (a plain tuple: the hot path creates 100,000s a second):
#   (seq, created, priority, message, fieldset, extra fields or None, logger name)
Entry = tuple[int, float, int, str, FieldSet, "Mapping[str, str] | None", str]


def entry_fields(entry: Entry) -> dict[str, str]:
    """All fields of an entry as journald receives them (for tests and the stderr fallback)."""
    _seq, _created, prio, message, fset, extra, _logger = entry
    fields = {"MESSAGE": message, "PRIORITY": str(prio), **fset.fields}
    if extra:
        fields.update({_field_name(k): str(v) for k, v in extra.items()})
    return fields


# -- senders ----------------------------------------------------------------------------------


class Sender(Protocol):
    """Writes a batch of entries somewhere; called from the writer thread only."""

    target: str

    def send(self, batch: list[Entry]) -> None: ...


class StderrSender:
    """``LEVEL   logger: message [FIELD=value ...]``, one line per record, one write per batch."""

    target = "stderr"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def format(self, entry: Entry) -> str:
        _seq, _created, prio, message, fset, extra, logger = entry
        text = fset.text
        if extra:
            shown = sorted(
                (_field_name(k), str(v)) for k, v in extra.items() if _field_name(k) not in _NOT_SHOWN
            )
            if shown:
                more = " ".join(f"{k}={v}" for k, v in shown)
                text = f"{text[:-1]} {more}]" if text else f" [{more}]"
        return f"{_LEVEL_NAMES.get(prio, 'INFO'):<7} {logger}: {message}{text}\n"

    def send(self, batch: list[Entry]) -> None:
        stream = self._stream or sys.stderr
        stream.write("".join(self.format(e) for e in batch))
        stream.flush()


class JournalSender:
    """journald's native protocol on a datagram socket of our own.

    Records too big for one datagram travel in a sealed memfd, as libsystemd does. ``sendto``
    blocks (without the GIL) while journald's queue is full; that only slows the writer thread.
    """

    target = "journal"

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)

    @staticmethod
    def encode(entry: Entry) -> bytes:
        _seq, _created, prio, message, fset, extra, _logger = entry
        head = encode_fields((("MESSAGE", message), ("PRIORITY", str(prio))))
        tail = encode_fields((k, str(v)) for k, v in extra.items()) if extra else b""
        return head + fset.wire + tail

    def send(self, batch: list[Entry]) -> None:
        for entry in batch:
            data = self.encode(entry)
            try:
                self._sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
                    raise
                self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-record", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl

            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
            self._sock.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    """True when a journald listens on ``path`` (an empty datagram is a no-op for journald)."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def choose_target(target: Target, path: str = JOURNAL_SOCKET) -> str:
    """``auto``: journal for a systemd service with a journal; stderr for a terminal or a test."""
    if target != "auto":
        return target
    service = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    return "journal" if service and journal_available(path) else "stderr"


# -- the sink ---------------------------------------------------------------------------------


class LoopLike(Protocol):
    def add_reader(self, source: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, source: int) -> None: ...


class LogSink:
    """The bounded queue, its writer thread, its counters and its backpressure signal."""

    def __init__(
        self,
        sender: Sender,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        policy: Policy = "block",
        store: LogStore | None = None,
        fallback: Sender | None = None,
        put_timeout: float | None = None,
    ) -> None:
        self.sender = sender
        self.target = sender.target
        self.capacity = queue_size
        self.hard_limit = queue_size * 2
        self.low_water = queue_size // 2
        self.policy: Policy = policy
        self.store = store if store is not None else LogStore()
        self.fallback = (
            fallback if fallback is not None else (StderrSender() if sender.target != "stderr" else None)
        )
        self._q: deque[Entry] = deque()
        self._seq = itertools.count(1)
        self._wake = threading.Event()
        self._idle = True
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._inflight_first: int | None = None
        self._direct_lock = threading.Lock()
        # backpressure
        self._efd = -1
        self._loop: LoopLike | None = None
        self._block = False  # producers are paused only once a loop can resume them (attach)
        self._want_room = False
        self._room_waiters: list[Callable[[], None]] = []
        # a target that accepts nothing (see _check_stall)
        #: seconds the target may accept no record before ``block`` turns into dropping (None: never)
        self.put_timeout = put_timeout
        self._send_since: float | None = None  # writer: when its current send began (monotonic)
        self._dropping = False  # the loop: the target stalled; records beyond the size are dropped
        self._stall_began = 0.0
        self._stall_dropped = 0  # ``dropped`` when the stall began
        self._stall_timer: Any = None
        self.stalls = 0
        # counters
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.fallbacks = 0
        self.paused = 0  # times a producer was told to pause
        self._drops: dict[str, int] = {}
        self._drop_fields: dict[str, FieldSet] = {}
        self._drop_lock = threading.Lock()
        self._last_drop_report = 0.0

    # -- producers ------------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def has_room(self) -> bool:
        """False while a producer honouring ``block`` should stop reading (the queue is full)."""
        return not self._block or self._dropping or len(self._q) < self.capacity

    def put(self, entry: Entry, owner: str | None = None, own: bool = False) -> bool:
        """Queue one record; returns :meth:`has_room` afterwards (False: pause the producer).

        ``owner`` (a task id) names whose record a drop counts against; ``own`` marks the
        daemon's own records, which are only refused beyond the hard limit.
        """
        if self._thread is None:
            self._write_now([entry])
            return True
        q = self._q
        n = len(q)
        if n >= self.capacity and (
            n >= self.hard_limit or ((self.policy == "drop" or self._dropping) and not own)
        ):
            self._count_drop(owner, entry[4])
            return self.policy == "drop" or self._dropping
        q.append(entry)
        if self._idle:
            self._idle = False
            self._wake.set()
        return not self._block or self._dropping or n + 1 < self.capacity

    def _count_drop(self, owner: str | None, fset: FieldSet) -> None:
        key = owner or "daemon"
        with self._drop_lock:
            self.dropped += 1
            self._drops[key] = self._drops.get(key, 0) + 1
            if key not in self._drop_fields:
                self._drop_fields[key] = fset

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the queue has drained to half its size."""
        self.paused += 1
        self._room_waiters.append(callback)
        self._want_room = True
        if len(self._q) <= self.low_water or self._thread is None or self._dropping:
            self._signal_room()
        else:
            self._arm_stall_check(self.put_timeout)

    # -- a target that accepts nothing ----------------------------------------------------------

    def _arm_stall_check(self, delay: float | None) -> None:
        """On the loop: look again in ``delay`` s whether the paused producers wait on a dead target."""
        call_later = getattr(self._loop, "call_later", None)
        if delay is None or self._stall_timer is not None or call_later is None:
            return
        self._stall_timer = call_later(max(delay, 0.01), self._check_stall)

    def _check_stall(self) -> None:
        """On the loop: producers are paused; if the target has accepted nothing for ``put_timeout``
        seconds, stop pausing them: drop (and count) what does not fit until it accepts again.

        Pausing protects a slow journal from a fast task; a journal that accepts nothing at all
        would otherwise stop every task that prints. The writer says when it recovers (see _write).
        """
        self._stall_timer = None
        if not self._room_waiters or self._dropping or self.put_timeout is None:
            return
        since = self._send_since
        now = time.monotonic()
        if since is None or now - since < self.put_timeout:  # it is slow, not stuck: look again
            self._arm_stall_check(self.put_timeout - (now - since) if since is not None else self.put_timeout)
            return
        self._stall_began, self._stall_dropped = since, self.dropped
        self._dropping = True
        self.stalls += 1
        self._on_room()  # resume every paused producer: from now on what does not fit is dropped

    def _recovered(self) -> None:
        """On the writer: the target accepted a record again after a stall: back to pausing, and
        say what happened (in the journal, or wherever the target is)."""
        elapsed = time.monotonic() - self._stall_began
        dropped = self.dropped - self._stall_dropped
        self._dropping = False
        self._signal_room()
        note: Entry = (
            self.next_seq(),
            time.time(),
            4,
            f"{'journald' if self.target == 'journal' else self.target} accepted no record for "
            f"{elapsed:.1f} s; {dropped:,} records dropped (log_put_timeout={self.put_timeout:g} s)",
            FieldSet({"MESSAGE_ID": MessageId.LOG_STALLED, "PROCPOOL_DROPPED": str(dropped)}),
            None,
            "procpoold.journal",
        )
        self._write([note])

    def task_log(self, fields: dict[str, str]) -> TaskLog:
        """The log of one attempt; ``fields`` (kept by the handle, which adds to it) has at least
        ``PROCPOOL_JOB_ID``."""
        return TaskLog(self, fields)

    # -- the loop side of backpressure ----------------------------------------------------------

    def attach(self, loop: LoopLike) -> None:
        """Register the room-available eventfd with the loop (call on the loop's thread)."""
        if self._efd < 0:
            self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._loop = loop
        self._block = self.policy == "block"
        loop.add_reader(self._efd, self._on_room)

    def _signal_room(self) -> None:
        self._want_room = False
        if self._efd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_write(self._efd, 1)

    def _on_room(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        waiters, self._room_waiters = self._room_waiters, []
        for i, callback in enumerate(waiters):
            try:
                callback()
            except BaseException:  # the loop logs it; the producers after it still get their turn
                self._room_waiters[:0] = waiters[i + 1 :]
                if self._room_waiters:
                    self._signal_room()
                raise

    # -- the writer -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (after every fork the daemon does from itself)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="procpoold-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then write synchronously."""
        thread = self._thread
        if thread is None:
            return
        self._block = False  # from now on records are written synchronously: nobody waits
        self._signal_room()
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        leftover = list(self._q)
        self._q.clear()
        if leftover and not thread.is_alive():
            self._write_now(leftover)
        elif leftover:  # the writer is stuck (journald does not read): count them, say so on stderr
            self.dropped += len(leftover)
            if self.fallback is not None:
                with contextlib.suppress(Exception):
                    self.fallback.send(leftover)

    def close(self) -> None:
        self.stop()
        self._block = False
        if self._loop is not None and self._efd >= 0:
            self._loop.remove_reader(self._efd)
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
        self._loop = None

    def _run(self) -> None:
        q = self._q
        busy_until = 0.0
        while True:
            if not q:
                self._report_drops()
                if self._want_room:
                    self._signal_room()
                if self._stopping:
                    return
                if time.monotonic() < busy_until:
                    time.sleep(_LINGER)
                    continue
                self._wake.clear()
                self._idle = True
                if not q:
                    self._wake.wait(_DROP_REPORT_INTERVAL if self._drops else None)
                self._idle = False
                if len(q) < _BATCH and not self._stopping:
                    # Linger: gather what the loop logs next instead of waking (and taking the GIL
                    # from the loop) for every few records; producers do not wake a busy writer.
                    time.sleep(_LINGER)
                continue
            batch = []
            with contextlib.suppress(IndexError):
                for _ in range(_BATCH):
                    batch.append(q.popleft())
            self._inflight_first = batch[0][0]
            self._write(batch)
            self._inflight_first = None
            busy_until = time.monotonic() + _PARK_AFTER
            if self._want_room and len(q) <= self.low_water:
                self._signal_room()
            if self._drops and time.monotonic() - self._last_drop_report >= _DROP_REPORT_INTERVAL:
                self._report_drops()

    def _write(self, batch: list[Entry]) -> None:
        self._send_since = time.monotonic()
        try:
            self.sender.send(batch)
            self.written += len(batch)
            self._send_since = None
            if self._dropping:
                self._recovered()
        except Exception as exc:
            self._send_since = None
            self.errors += 1
            if self.fallback is None:
                return
            self.fallbacks += len(batch)
            note = (
                0,
                time.time(),
                3,
                f"cannot write {len(batch)} record(s) to the {self.target}: {exc}; they follow on stderr",
                _DAEMON_FIELDS,
                None,
                "procpoold.journal",
            )
            with contextlib.suppress(Exception):
                self.fallback.send([note, *batch])

    def _write_now(self, batch: list[Entry]) -> None:
        with self._direct_lock:
            self._write(batch)

    def _report_drops(self) -> None:
        if not self._drops:
            return
        with self._drop_lock:
            drops, self._drops = self._drops, {}
            fields, self._drop_fields = self._drop_fields, {}
        self._last_drop_report = time.monotonic()
        notes: list[Entry] = []
        for key, count in drops.items():
            base = fields.get(key, _DAEMON_FIELDS)
            keep = {
                k: v for k, v in base.fields.items() if k.startswith("PROCPOOL_") and k != "PROCPOOL_STREAM"
            }
            keep["MESSAGE_ID"] = MessageId.LOG_DROPPED
            keep["PROCPOOL_DROPPED"] = str(count)
            who = f"task {keep['PROCPOOL_TASK_ID']}" if "PROCPOOL_TASK_ID" in keep else "the daemon"
            notes.append(
                (
                    self.next_seq(),
                    time.time(),
                    4,
                    f"dropped {count} log record(s) of {who}: the log queue was full "
                    f"(log_policy={self.policy}, log_queue_size={self.capacity})",
                    FieldSet(keep),
                    None,
                    "procpoold.journal",
                )
            )
        self._write(notes)

    # -- queries --------------------------------------------------------------------------------

    def flushed(self, seq: int) -> bool:
        """True once every record up to ``seq`` has been written (or dropped)."""
        inflight = self._inflight_first
        if inflight is not None and inflight <= seq:
            return False
        try:
            return self._q[0][0] > seq
        except IndexError:
            return True

    def stats(self) -> dict[str, Any]:
        """For ``procctl status``: where records go and what happened to them."""
        return {
            "target": self.target,
            "policy": self.policy,
            "queue_size": self.capacity,
            "queued": len(self._q),
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "paused": self.paused,
            "put_timeout": self.put_timeout,
            "stalled": self._dropping,  # the target accepts nothing: records are being dropped
            "stalled_for": time.monotonic() - self._stall_began if self._dropping else None,
            "stalls": self.stalls,
            "tail_lines": len(self.store),
        }


#: (logger, message id, code, line) -> the fields of the records written there (read-only)
_SITE_FIELDS: dict[tuple[str, str | None, Any, int], dict[str, str]] = {}


def _site_fields(depth: int, logger: str, message_id: str | None = None) -> dict[str, str]:
    """The code-location fields (and MESSAGE_ID) of the caller ``depth`` frames up, as ``logging``
    would record them; computed once per call site, since the same few lines write most records."""
    frame = sys._getframe(depth + 1)
    site = (logger, message_id, frame.f_code, frame.f_lineno)
    fields = _SITE_FIELDS.get(site)
    if fields is None:
        code = frame.f_code
        fields = {"MESSAGE_ID": message_id} if message_id is not None else {}
        fields.update(
            CODE_FILE=code.co_filename, CODE_LINE=str(frame.f_lineno), CODE_FUNC=code.co_name, LOGGER=logger
        )
        _SITE_FIELDS[site] = fields
    return fields


class TaskLog:
    """Where one attempt's output and log records go: fields computed once, a tail, the queue.

    ``fields`` are the attempt's ``PROCPOOL_*`` fields (``PROCPOOL_JOB_ID`` at least).
    """

    __slots__ = ("_sets", "_sink", "_tail", "attempt", "fields", "job_id", "task_id")

    def __init__(self, sink: LogSink, fields: dict[str, str]) -> None:
        self._sink = sink
        self.fields = fields  # the caller's own dict: kept, not copied (one per attempt)
        self.job_id = self.fields["PROCPOOL_JOB_ID"]
        self.task_id = self.fields.get("PROCPOOL_TASK_ID")
        self.attempt = int(self.fields.get("PROCPOOL_ATTEMPT", "0") or 0)
        self._tail = sink.store.owner(self.task_id or self.job_id, self.job_id)
        self._sets: dict[str, FieldSet] = {}  # per stream, made on first use (most tasks print nothing)

    def _fieldset(self, stream: str) -> FieldSet:
        key = stream if stream in ("stdout", "stderr", "daemon") else "log"
        fset = self._sets.get(key)
        if fset is None:
            # The daemon's own records about the attempt carry no PROCPOOL_STREAM: they are not output.
            extra = {} if key == "daemon" else {"PROCPOOL_STREAM": key}
            fset = self._sets[key] = FieldSet({**self.fields, **extra})
        return fset

    def event(self, level: int, message: str, message_id: str) -> None:
        """A lifecycle record of the attempt (started, completed, failed...), from the daemon.

        The cheap path for records written for every attempt: the attempt's fields are encoded
        once, and the code location is that of the caller, as ``logging`` would record it.
        """
        fields = _site_fields(1, "procpoold.task", message_id)
        prio = _PRIORITIES.get(level)
        if prio is None:
            prio = priority(level)
        sink = self._sink
        seq = next(sink._seq)
        now = time.time()
        self._tail.append(
            tuple.__new__(Record, (seq, now, prio, "daemon", self.attempt, self.task_id, message))
        )
        sink.put(
            (seq, now, prio, message, self._fieldset("daemon"), fields, "procpoold.task"),
            self.task_id,
            own=True,
        )

    def set_worker_pid(self, pid: int | None) -> None:
        """The pid of the process running the attempt (a pool worker or the command)."""
        if pid is not None:
            self.fields["PROCPOOL_WORKER_PID"] = str(pid)
            self._sets = {}

    def line(self, stream: str, level: int, message: str, fields: Mapping[str, str] | None = None) -> bool:
        """One output line or log record; returns False when the producer should pause (``block``)."""
        if len(message) > MAX_MESSAGE:
            ok = True
            for start in range(0, len(message), MAX_MESSAGE):
                ok = self.line(stream, level, message[start : start + MAX_MESSAGE], fields) and ok
            return ok
        sink = self._sink
        prio = _PRIORITIES.get(level)
        if prio is None:
            prio = priority(level)
        seq = next(sink._seq)
        now = time.time()
        record = tuple.__new__(Record, (seq, now, prio, stream, self.attempt, self.task_id, message))
        self._tail.append(record)
        fset = self._fieldset(stream)
        return sink.put((seq, now, prio, message, fset, fields, "procpoold.task"), self.task_id)

    def lines(self, stream: str, level: int, messages: Iterable[str]) -> bool:
        ok = True
        for message in messages:
            ok = self.line(stream, level, message) and ok
        return ok


# -- the root logger's handler ---------------------------------------------------------------


class SinkHandler(logging.Handler):
    """The root logger's only handler: turns ``logging`` records into queue entries.

    Fields come from ``extra={"journal_fields": {...}}``; the code location of the logging call
    becomes ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``. Records naming a job are also kept in the
    daemon's tail (``procctl logs``).
    """

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            elif record.exc_text:
                message += "\n" + record.exc_text
            given = getattr(record, "journal_fields", None)
            fields = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}
            extra = {
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                "LOGGER": record.name,
            }
            _enqueue(self.sink, record.created, priority(record.levelno), message, fields, extra, record.name)
        except Exception:
            self.handleError(record)


# -- the process-wide sink ------------------------------------------------------------------

_active: LogSink | None = None


def active_sink() -> LogSink | None:
    """The sink :func:`setup_logging` installed (None before)."""
    return _active


def record(logger: logging.Logger, level: int, message: str, fields: dict[str, str]) -> None:
    """Log ``message`` with journal ``fields``, as ``logger.log(level, ...)`` with ``extra`` would.

    The daemon's per-job records (submitted, finished) take this path: with the sink installed it
    skips building a ``LogRecord`` and reuses the code-location fields of the call site, which is
    most of the cost of a record. Without the sink (tests), it is plain ``logging``.
    """
    sink = _active
    if sink is None or not logger.isEnabledFor(level):
        logger.log(level, "%s", message, extra={"journal_fields": fields}, stacklevel=2)
        return
    _enqueue(sink, time.time(), priority(level), message, fields, _site_fields(1, logger.name), logger.name)


def _enqueue(
    sink: LogSink,
    created: float,
    prio: int,
    message: str,
    fields: dict[str, str],
    extra: dict[str, str],
    logger: str,
) -> None:
    """Queue a daemon record; one that names a job is also kept in the daemon's tail."""
    seq = sink.next_seq()
    job_id = fields.get("PROCPOOL_JOB_ID")
    task_id = fields.get("PROCPOOL_TASK_ID")
    if job_id:
        attempt = fields.get("PROCPOOL_ATTEMPT", "0")
        sink.store.add(
            task_id or job_id,
            job_id,
            Record(
                seq,
                created,
                prio,
                fields.get("PROCPOOL_STREAM", "daemon"),
                int(attempt) if attempt.isdigit() else 0,
                task_id,
                message,
            ),
        )
    sink.put((seq, created, prio, message, FieldSet(fields), extra, logger), task_id, own=True)


def setup_logging(
    level: str,
    target: Target = "auto",
    queue_size: int = DEFAULT_QUEUE_SIZE,
    policy: Policy = "block",
    sender: Sender | None = None,
    store: LogStore | None = None,
    put_timeout: float | None = None,
) -> LogSink:
    """Make a :class:`LogSink` the root logger's only handler; returns it (``.target`` tells which).

    No thread starts here: call :func:`start_writer` once the daemon has done its forking.
    """
    global _active
    if sender is None:
        chosen = choose_target(target)
        sender = JournalSender() if chosen == "journal" else StderrSender()
    sink = LogSink(sender, queue_size, policy, store, put_timeout=put_timeout)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, SinkHandler):
            old.sink.close()
    root.addHandler(SinkHandler(sink))
    root.setLevel(level.upper())
    _active = sink
    return sink


def start_writer(loop: LoopLike | None = None) -> LogSink | None:
    """Start the writer thread and hook backpressure to ``loop`` (after the zygote exists)."""
    if _active is not None:
        if loop is not None:
            _active.attach(loop)
        _active.start()
    return _active


def stop_writer(timeout: float = 5.0) -> None:
    """Flush and stop the writer; later records are written synchronously."""
    if _active is not None:
        _active.stop(timeout)


def stats() -> dict[str, Any]:
    return _active.stats() if _active is not None else {}


# -- the ``logs`` operation (daemon side) ----------------------------------------------------


def logs_op(
    args: Mapping[str, Any],
    *,
    job_id: str,
    task_id: str | None,
    finished: bool,
    since: float | None = None,
    sink: LogSink | None = None,
) -> dict[str, Any]:
    """Answer ``logs``: where to read a job's or task's log, and the daemon's tail when asked.

    ``args``: ``id`` (echoed), ``attempt`` (int), ``lines`` (int: only the last N), ``after``
    (int: records after this cursor, for ``--follow``), ``source`` (``auto`` or ``tail``).
    ``finished`` is the job's (or task's) state; the reply says finished only once its last
    record has left the queue, so a follower that stops then has seen everything.
    """
    sink = sink or _active
    if sink is None:
        raise RuntimeError("logging is not set up")
    attempt = args.get("attempt")
    after = int(args.get("after") or 0)
    limit = args.get("lines")
    source = args.get("source") or "auto"
    store = sink.store
    match = {"PROCPOOL_JOB_ID": job_id}
    if task_id is not None:
        match["PROCPOOL_TASK_ID"] = task_id
    if attempt is not None:
        match["PROCPOOL_ATTEMPT"] = str(attempt)
    last = store.last_seq(job_id, task_id)
    reply: dict[str, Any] = {
        "id": args.get("id"),
        "job_id": job_id,
        "task_id": task_id,
        "target": sink.target,
        "match": match,
        "since": since,
        "finished": bool(finished and sink.flushed(last)),
        "records": [],
        "cursor": last,
        "truncated": False,
    }
    if sink.target == "stderr" or source == "tail":
        records = store.records(job_id, task_id, attempt, after, limit)
        reply["records"] = [r.to_wire() for r in records]
        reply["cursor"] = records[-1].seq if records else after
        reply["truncated"] = store.truncated(job_id, task_id)
        reply["source"] = "tail"
    else:
        reply["source"] = "journal"
    return reply

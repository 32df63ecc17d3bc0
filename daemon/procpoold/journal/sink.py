"""The daemon's side of the journal: one sink that packs records, hands them to the forwarder
process through a shared-memory ring once per loop iteration, and applies the log policy.

Producers
    * the daemon's own ``logging`` calls reach :class:`SinkHandler`, the only handler on the root
      logger (``extra={"journal_fields": {...}}`` adds fields, ``MESSAGE_ID`` among them);
    * attempt lifecycle events (started, completed, failed, timed out, cancelled, skipped,
      retried): the scheduler calls :meth:`LogSink.started` and :meth:`LogSink.event` with a few
      integers (job number, task index, attempt, worker pid, a code site); they gather in one
      flat list per loop iteration (consecutive starts of one job with the same attempt and
      worker become one range) and are packed at its end into one EVENTS record of fixed-size
      items (:mod:`procpoold.journal.encoding`). No object, field set or message per attempt;
    * task output and task log records: :meth:`LogSink.line`, one packed LINE record each.
      Before a line is queued, the events gathered so far are packed: an attempt's start stays
      before its output, and its output before its end.

Names
    A job's fields and its tasks' names go to the forwarder once per job (a NAMES record: the
    scheduler sends every task name of a job at once); the forwarder builds each record's
    fields from them. The daemon's tail (``procctl logs``) keeps the packed events as they are
    and words them only when asked (:class:`~procpoold.logstore.LogStore`).

Hand-off
    Records wait in a list until the end of the loop iteration (``EventLoop.call_last``), then
    go into the ring in one ``push_many`` (one copy, at most one futex wake of the forwarder).
    Without a loop, or with no forwarder process running (before :meth:`LogSink.start`, after
    :meth:`LogSink.stop`, or after it failed too often), they are written at once, in the
    daemon, by an in-process :class:`~procpoold.journal.forwarder.Forwarder`.

Policy
    ``queue_size`` bounds the records not yet written (waiting here or in the ring; the
    forwarder acknowledges the highest ``seq`` it wrote). ``block``: :meth:`LogSink.has_room`
    turns False when it is full; a producer then stops reading that task's output and asks
    :meth:`LogSink.when_room` to be called back once the forwarder has written half of it (the
    daemon arms the acknowledgement ring's doorbell, an eventfd in its loop). The record that
    filled it is still accepted; beyond twice the size records are dropped and counted.
    ``drop``: records beyond the size are dropped at once and counted, and reported per task as a
    warning record (``LOG_DROPPED``) at most once a second. With ``put_timeout``, a target that
    accepts nothing for that long turns pausing into dropping until it accepts again
    (``LOG_STALLED`` says so afterwards).

The forwarder
    is a child process (:mod:`procpoold.journal.forwarder`), started by :meth:`LogSink.start`
    (with fork and exec, so it is safe after ZeroMQ's threads exist), reaped through a pidfd in
    the loop, and started again if it dies: the ring and its cursors live in a memfd the daemon
    keeps, and the new process gets a snapshot of the name tables. Nothing is named in /dev/shm.
    The process itself (start, reaping, restart budget, stop) is
    :class:`~procpoold.journal.process.ForwarderProcess`; the sink decides when, and what becomes
    of the records.

Replay after a crash
    Each EVENTS record is also handed to :attr:`LogSink.on_events` (the scheduler puts it in the
    iteration's durable entry of the state log), and the forwarder writes the highest ``seq`` it
    wrote to a watermark file (:meth:`LogSink.keep_watermark`). At its next start the daemon
    reads the watermark (:attr:`LogSink.replay_from`), continues its seqs above it, and hands
    the events of its durable log above it back to :meth:`LogSink.replay`: written once more,
    or for the first time. At least once: a crash between a batch written and its watermark
    written repeats that batch's records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import CodeType
from typing import TYPE_CHECKING, Any

from procpoold.journal import encoding as enc
from procpoold.journal.encoding import ITEM_INTS, STARTED
from procpoold.journal.forwarder import Forwarder
from procpoold.journal.handle import TaskLog
from procpoold.journal.process import RESTART_WINDOW, Channel, ForwarderProcess, LoopLike, ring_capacity
from procpoold.journal.senders import JOURNAL_SOCKET, Sender, choose_target, make_sender
from procpoold.logconfig import DEFAULT_QUEUE_SIZE, Policy, Target
from procpoold.logstore import LogStore, Record

if TYPE_CHECKING:
    from procpoold.logfiles import JobLogFiles

log = logging.getLogger("procpoold.journal")

_DROP_REPORT_INTERVAL = 1.0
#: bytes of task names per NAMES record (a job's names are sent in records of about this size)
_NAMES_CHUNK = 32 * 1024
#: an iteration's events are packed early once they hold this many items or bytes of text (an
#: EVENTS record stays far below the largest record the ring carries)
_BATCH_ITEMS = 4096
_BATCH_TEXT = 64 * 1024
_TABLE_LEN = struct.Struct("<I")

_LOCAL, _CHILD, _STOPPING = "local", "child", "stopping"
_get_ident = threading.get_ident


class LogSink:
    """Packs records, hands them to the forwarder, counts, and tells producers when to pause."""

    def __init__(
        self,
        target: str = "stderr",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        policy: Policy = "block",
        store: LogStore | None = None,
        sender: Sender | None = None,
        put_timeout: float | None = None,
        journal_path: str = JOURNAL_SOCKET,
    ) -> None:
        self.target = sender.target if sender is not None else target
        self.journal_path = journal_path
        self.capacity = queue_size
        self.hard_limit = queue_size * 2
        self.low_water = queue_size // 2
        self.policy: Policy = policy
        self.store = store if store is not None else LogStore()
        #: each job's log in a file of the state directory (see :meth:`keep_files`); while they are
        #: kept, the memory tail (``store``) keeps nothing of the jobs
        self.files: JobLogFiles | None = None
        #: seconds the target may accept no record before ``block`` turns into dropping (None: never)
        self.put_timeout = put_timeout
        #: the seq of the newest record (an event batch gets its seqs when it is packed)
        self.seq = 0
        #: the ring to the forwarder: made by start(), after the daemon's forks (a worker forked from
        #: a process that maps it could write into it)
        self._chan: Channel | None = None
        self._acks_armed = False
        #: writes when no forwarder process runs (records decoded here, and the ring's leftovers)
        self._local = Forwarder(None, sender or make_sender(self.target, journal_path))
        #: with a sender given (tests) there is no forwarder process: it could not use the object
        self.spawn_forwarder = sender is None
        self._mode = _LOCAL
        self._lock = threading.RLock()  # the ring has one producer: the loop, or a thread holding this
        self._loop: LoopLike | None = None
        self._loop_thread = 0
        self._pending: list[bytes] = []
        self._pending_seq = 0
        self._pushed_seq = 0
        self._flush_due = False
        self._block = False  # producers are paused only once a loop can resume them (start)
        self._room_waiters: list[Callable[[], None]] = []
        # name tables: (kind, key, first) -> the record that defines it (for a new forwarder's snapshot)
        self._tables: dict[tuple[int, int, int], bytes] = {}
        #: job id -> job number, for the jobs whose names were sent (see name_job)
        self.named: dict[str, int] = {}
        #: job number -> (its fields, its tasks' names, its table keys)
        self._jobs: dict[int, tuple[dict[str, str], list[str], list[tuple[int, int, int]]]] = {}
        self._retiring: list[tuple[int, list[tuple[int, int, int]]]] = []  # (seq, table keys)
        self._sites: dict[tuple[CodeType, int], int] = {}
        # this loop iteration's lifecycle events: ITEM_INTS integers each, and each one's text
        self._ev: list[int] = []
        self._ev_text: list[bytes] = []
        self._ev_bytes = 0
        #: called with (first seq, last seq, the packed EVENTS record) as each one is made (the
        #: scheduler keeps it in the state log, for a replay after a crash)
        self.on_events: Callable[[int, int, bytes], None] | None = None
        #: the watermark read at start: events of the durable log above it were not written
        self.replay_from = 0
        # the forwarder process
        self._forwarder = ForwarderProcess(self.target, journal_path)
        self._forwarder_up = False  # it has said hello (an empty acknowledgement once it is running)
        # acknowledgements and stalls
        self._acked = 0  # the highest seq the forwarder wrote
        # Records accepted (not dropped) and, of those, known to be written: the forwarder
        # acknowledges seqs; a mark (seq, accepted) per push tells how many records that covers.
        self._accepted = 0
        self._done = 0
        self._marks: deque[tuple[int, int]] = deque()
        self._ack_look = 0  # the seq at which put() last read acknowledgements
        self._ack_time = time.monotonic()
        self._dropping = False
        self._stall_began = 0.0
        self._stall_dropped = 0
        self._stall_timer: Any = None
        self.stalls = 0
        # counters
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.fallbacks = 0
        self.paused = 0
        self._drops: dict[int, int] = {}
        self._drop_names: dict[int, dict[str, str]] = {}
        self._drop_timer: Any = None
        self._last_drop_report = 0.0

    # -- keys and tables ------------------------------------------------------------------------

    def _table(self, key: tuple[int, int, int], record: bytes) -> None:
        self._tables[key] = record
        self._append(record)

    def name_job(self, job_id: str, fields: Mapping[str, str], names: list[str]) -> int:
        """Send a job's fields (other than ``PROCPOOL_JOB_ID``) and its tasks' names (by index)
        to the forwarder, once per job; returns the job's number, which events and lines carry."""
        job = self.named.get(job_id)
        if job is not None:
            return job
        job = int(job_id)
        items = [("PROCPOOL_JOB_ID", job_id), *((k, str(v)) for k, v in fields.items())]
        keys: list[tuple[int, int, int]] = []
        self.named[job_id] = job
        self._jobs[job] = (dict(items), list(names), keys)
        self.store.name_job(job_id, self._jobs[job][1])
        # In records of at most about NAMES_CHUNK bytes of names: a big job's names stay far below
        # the largest record the ring carries.
        first, size = 0, 0
        for i, name in enumerate(names):
            size += len(name) + 1
            if size >= _NAMES_CHUNK:
                keys.append((enc.K_NAMES, job, first))
                self._table(keys[-1], enc.names_record(job, first, items if first == 0 else (),
                                                       names[first : i + 1]))
                first, size = i + 1, 0
        if first < len(names) or not keys:
            keys.append((enc.K_NAMES, job, first))
            self._table(keys[-1], enc.names_record(job, first, items if first == 0 else (), names[first:]))
        return job

    def name_task(self, job_id: str, index: int, name: str) -> None:
        """Add one task's name to a named job's table (when the job was named without it)."""
        job = self.named[job_id]
        names = self._jobs[job][1]
        if index < len(names) and names[index] == name:
            return
        if len(names) <= index:
            names.extend("" for _ in range(index + 1 - len(names)))
        names[index] = name
        key = (enc.K_NAMES, job, -1 - index)  # (not a chunk's key: those are its first index)
        self._jobs[job][2].append(key)
        self._table(key, enc.names_record(job, index, (), [name]))

    def task_log(self, job_id: str, task_id: str, task_name: str, attempt: int,
                 job_fields: Callable[[], Mapping[str, str]]) -> TaskLog:
        """A handle for one attempt's lines and events (tools and tests; the scheduler calls
        :meth:`started`, :meth:`event` and :meth:`line` itself). ``task_id`` is
        ``<job id>.<index>``; ``job_fields`` is only called for a job not seen before."""
        index = int(task_id.rpartition(".")[2])
        if job_id not in self.named:
            self.name_job(job_id, job_fields(), [])
        self.name_task(job_id, index, task_name)
        return TaskLog(self, job_id, self.named[job_id], index, task_id, attempt)

    def site(self, code: CodeType, line: int) -> int:
        """The id of a code location (its fields go to the forwarder once)."""
        found = self._sites.get((code, line))
        if found is None:
            found = self._sites[(code, line)] = len(self._sites) + 1
            fields = (("CODE_FILE", code.co_filename), ("CODE_LINE", str(line)),
                      ("CODE_FUNC", code.co_name), ("LOGGER", "procpoold.task"))
            self._table((enc.K_SITE, found, 0), enc.site_record(found, fields))
        return found

    def caller_site(self, depth: int = 1) -> int:
        """The site id of the caller's code location (the CODE_* fields of the events it sends);
        ``depth`` 2: its caller's, and so on."""
        frame = sys._getframe(depth)
        return self.site(frame.f_code, frame.f_lineno)

    def forget_job(self, job_id: str) -> None:
        """The job has finished: its names leave the tables (once the forwarder is past them), and
        its log file is closed."""
        if self.files is not None and job_id.isdigit():
            self.files.finish(int(job_id))
        job = self.named.pop(job_id, None)
        if job is None:
            return
        keys = self._jobs.pop(job)[2]
        self._append(enc.FORGET.pack(enc.K_FORGET, job))
        self._retiring.append((self.seq, keys))
        self._prune_retiring()

    def jobs_removed(self, job_ids: Sequence[str]) -> None:
        """The daemon no longer keeps these jobs (retention, ``clean``): their logs go too."""
        for job_id in job_ids:
            self.store.forget_job(job_id)
        if self.files is not None:
            self.files.remove([int(j) for j in job_ids if j.isdigit()])

    def keep_files(self, files: JobLogFiles) -> None:
        """Keep each job's log in ``files`` from now on (called on the loop's thread, once the
        daemon holds its state directory; not with journald: ``procctl logs`` reads journald)."""
        files.current_seq = lambda: self.seq
        self.files = files
        if self._loop is not None:
            files.attach(self._loop)

    def _prune_retiring(self) -> None:
        while self._retiring and self._retiring[0][0] <= self._acked:
            for table in self._retiring.pop(0)[1]:
                self._tables.pop(table, None)

    def tables(self) -> bytes:
        """The snapshot a new forwarder starts from (``<u32 length><record>``...)."""
        return b"".join(_TABLE_LEN.pack(len(r)) + r for r in self._tables.values())

    # -- producers ------------------------------------------------------------------------------

    def next_seq(self) -> int:
        if self._ev and _get_ident() == self._loop_thread:
            self.seal()  # the events gathered so far come first, seqs in the order of the ring
        self.seq += 1
        return self.seq

    def queued(self) -> int:
        """Records accepted and not yet known to be written (as of the last acknowledgement)."""
        return self._accepted - self._done

    def has_room(self) -> bool:
        """False while a producer honouring ``block`` should stop reading (the queue is full)."""
        return not self._block or self._dropping or self._accepted - self._done < self.capacity

    # -- lifecycle events: integers per event, one packed record per loop iteration -------------

    def started(self, job: int, index: int, attempt: int, pid: int, site: int) -> None:
        """Task ``index`` of job ``job`` started ``attempt`` on worker ``pid`` (loop thread).

        Follows the previous start if it can (the next task of the same job, attempt, worker
        and site): the two are one range then."""
        ev = self._ev
        if (ev and ev[-8] == STARTED and ev[-6] == job and ev[-5] + ev[-4] == index and ev[-3] == attempt
                and ev[-2] == pid and ev[-7] == site):
            ev[-4] += 1
            return
        ev += (STARTED, site, job, index, 1, attempt, pid, 0)
        self._ev_text.append(b"")
        self._events_added()

    def event(self, code: int, job: int, index: int, attempt: int, pid: int, text: str, site: int) -> None:
        """Another lifecycle event (:data:`~procpoold.journal.encoding.COMPLETED`, ``FAILED``...)
        of an attempt (loop thread); ``text`` is its reason or error message (may be empty)."""
        data = text.encode("utf-8", "replace") if text else b""
        self._ev += (code, site, job, index, 1, attempt, pid, len(data))
        self._ev_text.append(data)
        self._ev_bytes += len(data)
        self._events_added()

    def _events_added(self) -> None:
        if self._mode is not _CHILD or self._loop is None or _get_ident() != self._loop_thread:
            self.seal()  # no forwarder to batch for (or not the loop's thread): at once
        elif len(self._ev_text) >= _BATCH_ITEMS or self._ev_bytes >= _BATCH_TEXT:
            self.seal()  # (the end of the iteration packs the rest)
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_last(self.flush)

    def seal(self) -> None:
        """Pack the lifecycle events gathered so far into one EVENTS record and queue it.

        Runs at the end of the loop iteration (:meth:`flush`), before any other record is queued,
        and when the scheduler makes its durable entry. The items get their seqs here."""
        ev = self._ev
        if not ev:
            return
        texts = self._ev_text
        self._ev, self._ev_text, self._ev_bytes = [], [], 0
        count = len(ev) // ITEM_INTS
        first = self.seq + 1
        last = self.seq = self.seq + count
        now = time.time()
        record = enc.events_record(first, now, ev, b"".join(texts))
        if self.files is not None:
            self.files.add_events(first, now, ev, texts, record)
        else:
            self.store.add_events(first, now, ev, texts)
        if self.on_events is not None:
            self.on_events(first, last, record)
        self._accepted += 1  # (lifecycle events are never dropped)
        self._pending_seq = last
        self._append_raw(record)

    def replay(self, items: Sequence[int], texts: list[bytes]) -> None:
        """Queue once more lifecycle items (from the durable log, after a crash: see
        :func:`~procpoold.journal.encoding.unpack_events`), with new seqs. Their jobs must be named
        first. They are not written to the jobs' log files again: those were written as the
        events happened, each loop iteration, whatever the forwarder had done."""
        files = self.files
        if files is not None:
            self.seal()  # (what was gathered before is not a replay)
        self._ev += items
        self._ev_text += texts
        self._ev_bytes += sum(len(t) for t in texts)
        if files is None:
            self._events_added()
            return
        self.files = None
        try:
            self.seal()
        finally:
            self.files = files

    def line(self, job_id: str, task_id: str, job: int, index: int, attempt: int, pid: int, stream: str,
             level: int, message: str, fields: Mapping[str, str] | None = None) -> bool:
        """One output line or log record of an attempt; returns False when the producer should
        pause (``block``). It is also kept in the daemon's tail of the task."""
        if len(message) > enc.MAX_MESSAGE:
            ok = True
            for start in range(0, len(message), enc.MAX_MESSAGE):
                ok = self.line(job_id, task_id, job, index, attempt, pid, stream, level,
                               message[start : start + enc.MAX_MESSAGE], fields) and ok
            return ok
        prio = enc.PRIORITIES.get(level)
        if prio is None:
            prio = enc.priority(level)
        if self._ev and _get_ident() == self._loop_thread:
            self.seal()  # the attempt's start (and whatever came before) stays ahead of its output
        seq = self.seq = self.seq + 1
        now = time.time()
        files = self.files
        if files is None:
            self.store.add(task_id, job_id, Record(seq, now, prio, stream, attempt, task_id, message))
        data = message.encode("utf-8", "replace")
        rec = enc.LINE.pack(enc.K_LINE, prio, enc.STREAM_CODES.get(stream, 0), job, index, attempt, pid,
                            len(data), seq, now) + data
        if fields:
            rec += enc.encode_fields((k, str(v)) for k, v in fields.items())
        if files is not None:
            files.add(job, rec)
        return self.put(rec, seq, (job << 32) | index, False)

    def put(self, record: bytes, seq: int, owner: int, own: bool) -> bool:
        """Queue one packed record (its ``seq`` already counted); returns :meth:`has_room` afterwards.

        ``owner`` (``job << 32 | task index``, 0 for the daemon) names whose record a drop counts
        against; ``own`` marks the daemon's own records, which are only refused beyond the hard limit.
        """
        n = self._accepted - self._done
        if n >= self.capacity and seq - self._ack_look >= 64:
            # Full: the forwarder may have made room since the last look (looked at every 64th
            # record only: while a flood is dropped, each record costs as little as it can).
            self._ack_look = seq
            self._read_acks()
            n = self._accepted - self._done
        refuse = self.policy == "drop" or self._dropping
        if n >= self.capacity and (n >= self.hard_limit or (refuse and not own)):
            self._count_drop(owner)
            return self.policy == "drop" or self._dropping
        self._accepted += 1
        self._pending_seq = seq
        self._append(record)
        return not self._block or self._dropping or n + 1 < self.capacity

    def _append(self, record: bytes) -> None:
        if self._ev and _get_ident() == self._loop_thread:
            self.seal()  # (events are only gathered on the loop's thread)
        self._append_raw(record)

    def _append_raw(self, record: bytes) -> None:
        if self._mode is not _CHILD or self._loop is None or _get_ident() != self._loop_thread:
            with self._lock:
                self._pending.append(record)
                self._push()
            return
        self._pending.append(record)
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_last(self.flush)

    def _count_drop(self, owner: int) -> None:
        self.dropped += 1
        count = self._drops.get(owner)
        if count is None:
            count = 0
            self._drop_names[owner] = self._names(owner)  # the task may be forgotten by the report
        self._drops[owner] = count + 1
        if self._drop_timer is None and self._loop is not None:
            delay = max(0.0, self._last_drop_report + _DROP_REPORT_INTERVAL - time.monotonic())
            self._drop_timer = self._loop.call_later(delay, self._report_drops)

    def record(self, logger: logging.Logger, level: int, message: str, fields: dict[str, str]) -> None:
        """Log ``message`` with journal ``fields``, as ``logger.log(level, ...)`` with ``extra`` would,
        without building a ``LogRecord`` (the daemon's per-job records take this path)."""
        if not logger.isEnabledFor(level):
            return
        frame = sys._getframe(1)
        code = frame.f_code
        where = {"CODE_FILE": code.co_filename, "CODE_LINE": str(frame.f_lineno), "CODE_FUNC": code.co_name,
                 "LOGGER": logger.name}
        self.log_record(time.time(), enc.priority(level), message, fields, where, logger.name)

    def log_record(self, created: float, prio: int, message: str, fields: Mapping[str, str],
                   extra: Mapping[str, str], logger: str) -> None:
        """Queue a daemon record; one that names a job is also kept in the daemon's tail."""
        seq = self.next_seq()
        job_id = fields.get("PROCPOOL_JOB_ID")
        task_id = fields.get("PROCPOOL_TASK_ID")
        items = [*fields.items(), *extra.items()]
        record = enc.plain_record(seq, created, prio, logger, message, items)
        if job_id:
            if self.files is not None and job_id.isdigit() and len(job_id) <= 18:
                self.files.add(int(job_id), record, True)
            else:
                attempt = fields.get("PROCPOOL_ATTEMPT", "0")
                self.store.add(task_id or job_id, job_id, Record(
                    seq, created, prio, fields.get("PROCPOOL_STREAM", "daemon"),
                    int(attempt) if attempt.isdigit() else 0, task_id, message))
        self.put(record, seq, _owner(task_id), True)

    # -- the hand-off ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Push what this loop iteration produced into the ring (``call_last``; on the loop)."""
        self._flush_due = False
        self._read_acks()
        if self._ev:
            self.seal()
        if self._pending:
            with self._lock:
                self._push()

    def _push(self) -> None:
        """With the lock held: push pending records (or write them here, with no forwarder)."""
        pending = self._pending
        if not pending or self._mode is _STOPPING:
            return  # (stopping: the forwarder writes up to its STOP record; these follow)
        if self._mode is _LOCAL:
            raw = pending[:]
            del pending[: len(raw)]  # not clear(): the loop may have appended meanwhile
            self._local.write_records(raw)
            self._marks.append((self._pending_seq, self._accepted))
            self._local_ack()
            return
        assert self._chan is not None
        ring = self._chan.ring
        n = ring.push_many(pending) if len(pending) > 1 else int(ring.push(pending[0]))
        if n == len(pending):
            self._pushed_seq = self._pending_seq
            self._marks.append((self._pending_seq, self._accepted))
        if n:
            del pending[:n]
        if pending:
            self._arm()  # the ring is full: flush again when the forwarder has made room

    def _local_ack(self) -> None:
        local = self._local
        self._ack(max(local.seq, self._pending_seq), local._written, local._errors, local._fallbacks)
        local._written = local._errors = local._fallbacks = 0

    def _take_over(self) -> None:
        """With the lock held, no forwarder running: write what is left in the ring, here."""
        chan = self._chan
        self._mode = _LOCAL
        if chan is None:
            return
        local = self._local
        local.ring = chan.consumer.request
        local.ring.resync()  # whoever consumed last, the cursors are in the segment
        while True:  # a STOP record left by a forwarder that died is stepped over
            local.stopped = False
            local.drain()
            if not local.stopped:
                break
        local.ring = None
        self._local_ack()

    def _ack(self, seq: int, written: int, errors: int, fallbacks: int) -> None:
        self.written += written
        self.errors += errors
        self.fallbacks += fallbacks
        marks = self._marks
        while marks and marks[0][0] <= seq:
            self._done = marks.popleft()[1]
        if seq > self._acked:
            self._acked = seq
            self._ack_time = time.monotonic()
            if self._dropping and written:
                self._recovered()
        if self._retiring:
            self._prune_retiring()

    def _read_acks(self) -> None:
        if self._mode is _LOCAL or self._chan is None:
            return
        for data in self._chan.acks.pop_many(64):
            if len(data) == enc.ACK.size:
                self._forwarder_up = True
                self._ack(*enc.ACK.unpack(data))

    def _arm(self) -> None:
        """Ask the forwarder to ring the eventfd after its next batch (or look now if it did)."""
        if self._loop is None or self._mode is not _CHILD or self._acks_armed or self._chan is None:
            return
        if self._chan.acks.arm():
            self._acks_armed = True
        else:
            self._loop.call_soon(self._on_doorbell)

    def _on_doorbell(self) -> None:
        if self._chan is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._chan.efd)
        self._acks_armed = False
        self.flush()
        if self._pending:
            self._arm()
        if self._room_waiters:
            if self.queued() <= self.low_water or self._dropping or self._mode != _CHILD:
                self._wake_waiters()
            else:
                self._arm()

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the forwarder has written down to half the size."""
        self.paused += 1
        self._room_waiters.append(callback)
        if self._loop is None:
            self._wake_waiters()
            return
        self._read_acks()
        if self.queued() <= self.low_water or self._mode != _CHILD or self._dropping:
            self._loop.call_soon(self._wake_waiters)
        else:
            self._arm()
            self._arm_stall_check(self.put_timeout)

    def _wake_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for i, callback in enumerate(waiters):
            try:
                callback()
            except BaseException:  # the loop logs it; the producers after it still get their turn
                self._room_waiters[:0] = waiters[i + 1 :]
                if self._room_waiters and self._loop is not None:
                    self._loop.call_soon(self._wake_waiters)
                raise

    # -- a target that accepts nothing ----------------------------------------------------------

    def _arm_stall_check(self, delay: float | None) -> None:
        if delay is None or self._stall_timer is not None or self._loop is None:
            return
        self._stall_timer = self._loop.call_later(max(delay, 0.01), self._check_stall)

    def _check_stall(self) -> None:
        """On the loop: producers are paused; if the forwarder has written nothing for
        ``put_timeout`` seconds, stop pausing them: drop (and count) what does not fit until it
        writes again. A journal that accepts nothing would otherwise stop every task that prints."""
        self._stall_timer = None
        if not self._room_waiters or self._dropping or self.put_timeout is None:
            return
        self._read_acks()
        now = time.monotonic()
        idle = now - self._ack_time
        if idle < self.put_timeout or self.queued() == 0:
            self._arm_stall_check(self.put_timeout - idle)
            return
        self._stall_began, self._stall_dropped = self._ack_time, self.dropped
        self._dropping = True
        self.stalls += 1
        self._wake_waiters()

    def _recovered(self) -> None:
        elapsed = time.monotonic() - self._stall_began
        dropped = self.dropped - self._stall_dropped
        self._dropping = False
        who = "journald" if self.target == "journal" else self.target
        self.log_record(time.time(), 4, f"{who} accepted no record for {elapsed:.1f} s; {dropped:,} records "
                        f"dropped (log_put_timeout={self.put_timeout:g} s)",
                        {"MESSAGE_ID": enc.MessageId.LOG_STALLED, "PROCPOOL_DROPPED": str(dropped)},
                        {}, "procpoold.journal")

    def _names(self, owner: int) -> dict[str, str]:
        """The job's and task's fields of a drop owner (from the tables; empty for 0, the daemon)."""
        found = self._jobs.get(owner >> 32) if owner else None
        if found is None:
            return {}
        index = owner & 0xFFFFFFFF
        fields = dict(found[0])
        fields["PROCPOOL_TASK_ID"] = f"{fields['PROCPOOL_JOB_ID']}.{index}"
        if index < len(found[1]):
            fields["PROCPOOL_TASK_NAME"] = found[1][index]
        return fields

    def _report_drops(self) -> None:
        self._drop_timer = None
        if not self._drops:
            return
        drops, self._drops = self._drops, {}
        names, self._drop_names = self._drop_names, {}
        self._last_drop_report = time.monotonic()
        for key, count in drops.items():
            fields = names.get(key, {})
            who = f"task {fields['PROCPOOL_TASK_ID']}" if "PROCPOOL_TASK_ID" in fields else "the daemon"
            fields["MESSAGE_ID"] = enc.MessageId.LOG_DROPPED
            fields["PROCPOOL_DROPPED"] = str(count)
            seq = self.next_seq()
            message = (f"dropped {count} log record(s) of {who}: the log queue was full "
                       f"(log_policy={self.policy}, log_queue_size={self.capacity})")
            self._pending_seq = seq
            self._append(enc.plain_record(seq, time.time(), 4, "procpoold.journal", message, fields.items()))

    # -- the forwarder process ------------------------------------------------------------------

    def keep_watermark(self, path: str) -> None:
        """Keep the highest seq written in the file ``path`` (in the state folder, once the daemon
        holds its lock), and read what the previous daemon left there: seqs continue above it,
        and :attr:`replay_from` holds it. Before any lifecycle event."""
        try:
            with open(path, "rb") as f:
                data = f.read(enc.WATERMARK.size)
            if len(data) == enc.WATERMARK.size:
                (self.replay_from,) = enc.WATERMARK.unpack(data)
        except FileNotFoundError:
            pass
        with self._lock:
            self._push()  # (what was logged before: below the watermark, not kept in it)
            self.seq = max(self.seq, self.replay_from)
            self._forwarder.watermark = path  # (a forwarder started again gets it on its command line)
            self._local.keep_watermark(path)
            if self._mode is _CHILD:
                self._append_raw(bytes([enc.K_MARK]) + path.encode("utf-8", "surrogateescape"))
                self._push()

    @property
    def acked(self) -> int:
        """The highest seq the forwarder has written (every record up to it is written)."""
        return self._acked

    def start(self, loop: LoopLike) -> None:
        """Hook to the loop (on its thread) and start the forwarder process."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._block = self.policy == "block"
        if self.files is not None:
            self.files.attach(loop)
        if self.spawn_forwarder:
            with self._lock:
                self._push()  # what was logged so far, written here
                self._chan = Channel(ring_capacity(self.capacity))
                loop.add_reader(self._chan.efd, self._on_doorbell)
                self._spawn()

    def _spawn(self) -> None:
        """With the lock held: start a forwarder on the segment, with the tables it needs."""
        assert self._chan is not None
        self._forwarder.spawn(self._chan, self.tables(), self._loop, self._on_forwarder_exit)
        self._forwarder_up = False
        self._mode = _CHILD
        if self._room_waiters or self._pending:
            self._arm()

    def _on_forwarder_exit(self) -> None:
        """On the loop: the forwarder died (it exits by itself only after a STOP). Start another."""
        forwarder = self._forwarder
        if not forwarder.running or self._mode != _CHILD:
            return
        pid, how, given_up = forwarder.reap()
        with self._lock:
            self._acks_armed = False
            self._read_acks()
            assert self._chan is not None
            if self._chan.ring.used == 0 and not self._pending:
                self._ack(self._pushed_seq, 0, 0, 0)  # what it had taken is gone: do not wait for it
            if given_up:
                self._take_over()
            else:
                self._spawn()
        if self._mode == _LOCAL:
            log.error("the journal forwarder (pid %d) %s, %d times in %g s; the daemon writes its records "
                      "itself from now on", pid, how, forwarder.deaths, RESTART_WINDOW)
            with self._lock:
                self._push()
            self._wake_waiters()
        else:
            log.warning("the journal forwarder (pid %d) %s; started another (pid %d); the records in "
                        "its ring are kept", pid, how, forwarder.pid or 0)

    def starting(self) -> bool:
        """True while the forwarder process is still starting (importing; not reading the ring yet)."""
        if self._mode != _CHILD:
            return False
        self._read_acks()
        return not self._forwarder_up

    @property
    def forwarder_pid(self) -> int | None:
        """The pid of the forwarder process (None: none runs)."""
        return self._forwarder.pid

    @property
    def restarts(self) -> int:
        """How many times the forwarder process died (and was started again, or taken over)."""
        return self._forwarder.restarts

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (the forwarder, for at most ``timeout`` seconds), stop the
        forwarder, and write synchronously from then on."""
        self._block = False
        self.seal()
        if self._drop_timer is not None:
            self._drop_timer.cancel()
        self._report_drops()
        if self.files is not None:
            self.files.detach()  # what is buffered is written; later records are written at once
        forwarder, chan = self._forwarder, self._chan
        if forwarder.running and chan is not None:
            deadline = time.monotonic() + timeout
            with self._lock:
                self._push()
                forwarder.send_stop(chan.ring, deadline)
                self._mode = _STOPPING
            forwarder.wait_stopped(deadline)
            with self._lock:
                self._read_acks_now()
        with self._lock:
            self._take_over()
            self._push()
        if self._room_waiters:
            self._wake_waiters()

    def _read_acks_now(self) -> None:
        assert self._chan is not None
        for data in self._chan.acks.pop_many(4096):
            if len(data) == enc.ACK.size:
                self._ack(*enc.ACK.unpack(data))

    def close(self) -> None:
        """Stop the forwarder, unhook from the loop, unmap the ring."""
        self.stop()
        chan, self._chan = self._chan, None
        if chan is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(chan.efd)
            chan.close()
        self._loop = None

    # -- queries --------------------------------------------------------------------------------

    def flushed(self, seq: int) -> bool:
        """True once every record up to ``seq`` has been written (or dropped)."""
        self._read_acks()
        return seq <= self._acked or self._accepted == self._done

    def stats(self) -> dict[str, Any]:
        """For ``procctl status``: where records go and what happened to them."""
        self._read_acks()
        return {
            "target": self.target,
            "policy": self.policy,
            "queue_size": self.capacity,
            "queued": self.queued(),
            "written": self.written,
            "dropped": self.dropped,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "paused": self.paused,
            "put_timeout": self.put_timeout,
            "stalled": self._dropping,
            "stalled_for": time.monotonic() - self._stall_began if self._dropping else None,
            "stalls": self.stalls,
            "tail_lines": len(self.store),
            "files": self.files.stats() if self.files is not None else None,
            "forwarder_pid": self.forwarder_pid,
            "forwarder_restarts": self.restarts,
        }


def _owner(task_id: str | None) -> int:
    """Whose records a drop counts against: ``job << 32 | index`` of a task id, 0 for the daemon."""
    if not task_id:
        return 0
    job, _, index = task_id.rpartition(".")
    return (int(job) << 32) | int(index) if job.isdigit() and index.isdigit() else 0


# -- the root logger's handler ---------------------------------------------------------------


class SinkHandler(logging.Handler):
    """The root logger's only handler: turns ``logging`` records into journal records.

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
            prio = enc.priority(record.levelno)
            self.sink.log_record(record.created, prio, message, fields, extra, record.name)
        except Exception:
            self.handleError(record)


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

    No process starts here: the daemon calls :meth:`LogSink.start` with its loop.
    """
    sink = LogSink(choose_target(target), queue_size, policy, store, sender, put_timeout)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, SinkHandler):
            old.sink.close()
    root.addHandler(SinkHandler(sink))
    root.setLevel(level.upper())
    return sink


# -- the ``logs`` operation (daemon side) ----------------------------------------------------


def logs_op(
    sink: LogSink,
    args: Mapping[str, Any],
    *,
    job_id: str,
    task_id: str | None,
    finished: bool,
    since: float | None = None,
    names: Callable[[int], str] | None = None,
    page_bytes: int = 4 * 1024 * 1024,
) -> dict[str, Any]:
    """Answer ``logs``: where to read a job's or task's log, and the daemon's own records when asked.

    ``args``: ``id`` (echoed), ``attempt`` (int), ``lines`` (int: only the last N), ``after``
    (int: records after this cursor, for ``--follow`` and the next page), ``before`` (int: with
    ``lines``, the ``older`` cursor of the previous reply: further back), ``source`` (``auto`` or
    ``tail``). ``finished`` is the job's (or task's) state; the reply says finished only once its
    last record has been written, so a follower that stops then (and has read every page: ``more``
    false) has seen everything.

    With log files (:attr:`LogSink.files`), the records come from the job's file, a page at a time
    (at most ``page_bytes`` of records; ``names`` gives a task's name by its index); the cursor is
    an offset in that file. Otherwise, from the memory tail, where the cursor is a ``seq``.
    """
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
    files = sink.files
    last = store.last_seq(job_id, task_id) if files is None else 0
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
        "more": False,
    }
    if files is not None and job_id.isdigit():
        job = int(job_id)
        if sink._loop is None or _get_ident() == sink._loop_thread:
            sink.seal()  # (this iteration's lifecycle events too: a task's end is in the page)
        index = int(task_id.rpartition(".")[2]) if task_id is not None else None
        page = files.read(job, names or (lambda i: f"#{i}"), task=index, attempt=attempt, after=after,
                          lines=limit, before=args.get("before"), page_bytes=page_bytes)
        reply.update(page)
        reply["finished"] = bool(finished)  # (its file holds every record up to now: read() wrote it)
        reply["log_file"] = files.info(job)
        reply["source"] = "file"
    elif sink.target == "stderr" or source == "tail":
        records = store.records(job_id, task_id, attempt, after, limit)
        reply["records"] = [r.to_wire() for r in records]
        reply["cursor"] = records[-1].seq if records else after
        reply["truncated"] = store.truncated(job_id, task_id)
        reply["source"] = "tail"
    else:
        reply["source"] = "journal"
    return reply

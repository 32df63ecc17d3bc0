"""The journal forwarder: a child process of the daemon that turns the compact records of a
shared-memory ring into journald records (or readable stderr lines).

The daemon packs what its loop iteration produced (:mod:`procpoold.journal.encoding`) and pushes
it, once per iteration, into the request ring of a :class:`~procpoold.pool.ring.Segment` that it
created and that this process maps through an inherited fd. This process keeps the name tables
(jobs, tasks, code sites) the daemon sends once, builds each record's fields from them, writes
batches with a :mod:`sender <procpoold.journal.senders>`, and acknowledges on the segment's
result ring the highest ``seq`` written (waking the daemon through its eventfd only when the
daemon asked for it: while it waits for room).

Idle, it sleeps on the ring's futex; while records keep coming it looks again every ``LINGER``
seconds for ``PARK_AFTER`` seconds instead, so that the daemon does not pay a wake-up per loop
iteration. A ``STOP`` record makes it write what precedes it and exit 0. If the daemon dies, the
kernel sends it SIGTERM (``PR_SET_PDEATHSIG``): it writes what is left in the ring and exits.

If this process dies, the daemon starts another on the same segment (the ring's cursors live in
shared memory, so the records still in the ring are the new process's first records), handing it
a snapshot of the name tables that the dead one had received.

:class:`Forwarder` is the decoding and writing part; the daemon also uses it in-process to write
synchronously when no forwarder process runs (before it starts, after it stops).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import struct
import sys
import time
from collections.abc import Mapping
from typing import Final

from procpoold.journal import encoding as enc
from procpoold.journal.senders import (
    JOURNAL_SOCKET,
    Entry,
    FieldSet,
    Sender,
    StderrSender,
    make_sender,
)
from procpoold.pool.ring import Ring, RingError, Segment

#: Records taken from the ring per batch (one write per batch on stderr).
BATCH: Final = 512
#: How long the forwarder, once it wrote a batch, sleeps before it looks again (rather than
#: blocking on the futex: while records keep coming the daemon's pushes make no system call).
LINGER: Final = 0.005
#: After its last batch the forwarder keeps looking every LINGER for this long before it parks
#: on the futex: an idle daemon's forwarder makes no wake-ups.
PARK_AFTER: Final = 0.25
_TABLE_LEN = struct.Struct("<I")
_TASK_LOGGER = "procpoold.task"
_DAEMON_STREAM = enc.STREAM_CODES["daemon"]


class _Stop(Exception):
    """SIGTERM (the daemon died, or asked): write what is in the ring, then exit."""


class Forwarder:
    """Decodes ring records with the name tables it was sent, writes them, acknowledges."""

    def __init__(self, ring: Ring | None, sender: Sender, acks: Ring | None = None,
                 fallback: Sender | None = None) -> None:
        self.ring = ring
        self.sender = sender
        self.acks = acks
        self.fallback = fallback if fallback is not None else (
            StderrSender() if sender.target != "stderr" else None)
        self.jobs: dict[int, dict[str, str]] = {}
        self.tasks: dict[int, tuple[int, dict[str, str], str]] = {}  # key -> job key, fields, name
        self.job_tasks: dict[int, list[int]] = {}
        self.sites: dict[int, dict[str, str]] = {}
        self._sets: dict[tuple[int, int, int, int], FieldSet] = {}
        self._event_extra: dict[tuple[int, int], FieldSet] = {}  # (site, code) -> its extra fields
        self.stopped = False
        # counters since the last acknowledgement that reached the daemon
        self.seq = 0
        self._written = self._errors = self._fallbacks = 0
        self.written = 0

    # -- tables -------------------------------------------------------------------------------

    def load_tables(self, data: bytes) -> None:
        """Apply a snapshot of name tables (``<u32 length><record>``...), as sent by the daemon."""
        pos = 0
        while pos + 4 <= len(data):
            (n,) = _TABLE_LEN.unpack_from(data, pos)
            self._decode(data[pos + 4 : pos + 4 + n])
            pos += 4 + n

    def _fields(self, task: int, attempt: int, pid: int, stream: int) -> FieldSet:
        key = (task, attempt, pid, stream)
        fset = self._sets.get(key)
        if fset is None:
            if len(self._sets) > 10_000:
                self._sets.clear()
            found = self.tasks.get(task)
            if found is None:
                fields = {"PROCPOOL_TASK_KEY": str(task)}
            else:
                fields = {**self.jobs.get(found[0], {}), **found[1]}
            fields["PROCPOOL_ATTEMPT"] = str(attempt)
            if pid:
                fields["PROCPOOL_WORKER_PID"] = str(pid)
            if stream != _DAEMON_STREAM:
                fields["PROCPOOL_STREAM"] = enc.STREAMS[stream] if stream < len(enc.STREAMS) else "log"
            fset = self._sets[key] = FieldSet(fields, clean=True)
        return fset

    # -- decoding -----------------------------------------------------------------------------

    def _decode(self, data: bytes) -> Entry | None:
        """One ring record -> an entry to write (None for a table or a control record)."""
        kind = data[0]
        if kind == enc.K_LINE:
            _k, prio, stream, task, attempt, pid, n, seq, _ts = enc.LINE.unpack_from(data)
            start = enc.LINE.size
            message = data[start : start + n].decode("utf-8", "replace")
            given: Mapping[str, str] | None = None
            if len(data) > start + n:
                given = dict(enc.decode_fields(data[start + n :]))
            self.seq = seq
            return (prio, message, self._fields(task, attempt, pid, stream), given, _TASK_LOGGER)
        if kind == enc.K_EVENT:
            _k, code, prio, task, attempt, pid, site, seq, _ts = enc.EVENT.unpack_from(data)
            text = data[enc.EVENT.size :].decode("utf-8", "replace")
            found = self.tasks.get(task)
            name = found[2] if found is not None else f"#{task}"
            message = enc.event_message(code, name, attempt, text)
            extra = self._event_extra.get((site, code))
            if extra is None:
                site_fields = dict(self.sites.get(site, {}))
                site_fields["MESSAGE_ID"] = enc.EVENTS.get(code, (enc.MessageId.TASK_FAILED, 4))[0]
                extra = self._event_extra[(site, code)] = FieldSet(site_fields, clean=True, identifier=False)
            self.seq = seq
            return (prio, message, self._fields(task, attempt, pid, _DAEMON_STREAM),
                    extra, extra.fields.get("LOGGER", _TASK_LOGGER))
        if kind == enc.K_RECORD:
            _k, prio, ln, n, seq, _ts = enc.RECORD.unpack_from(data)
            start = enc.RECORD.size
            logger = data[start : start + ln].decode("utf-8", "replace")
            message = data[start + ln : start + ln + n].decode("utf-8", "replace")
            fields = dict(enc.decode_fields(data[start + ln + n :]))
            self.seq = seq
            return (prio, message, FieldSet(fields, clean=True), None, logger)  # (named by encode_fields)
        if kind == enc.K_TASK:
            _k, key, job = enc.TASK.unpack_from(data)
            fields = dict(enc.decode_fields(data[enc.TASK.size :]))
            self.tasks[key] = (job, fields, fields.get("PROCPOOL_TASK_NAME", ""))
            self.job_tasks.setdefault(job, []).append(key)
            return None
        if kind == enc.K_JOB:
            (_k, key) = enc.JOB.unpack_from(data)
            self.jobs[key] = dict(enc.decode_fields(data[enc.JOB.size :]))
            return None
        if kind == enc.K_SITE:
            (_k, site) = enc.SITE.unpack_from(data)
            self.sites[site] = dict(enc.decode_fields(data[enc.SITE.size :]))
            self._event_extra.clear()
            return None
        if kind == enc.K_FORGET:
            (_k, key) = enc.FORGET.unpack_from(data)
            self.jobs.pop(key, None)
            for task in self.job_tasks.pop(key, ()):
                self.tasks.pop(task, None)
            self._sets.clear()
            return None
        if kind == enc.K_STOP:
            self.stopped = True
            return None
        raise ValueError(f"unknown journal record kind {kind}")

    # -- writing ------------------------------------------------------------------------------

    def drain_once(self) -> int:
        """Take one batch from the ring, write it, acknowledge; returns the records taken."""
        assert self.ring is not None
        try:
            raw = self.ring.pop_many(BATCH)
        except RingError as exc:  # the daemon is the only producer: this is a bug, say so
            raw = exc.partial
            self._note(f"the journal ring is damaged ({exc}); records may be missing")
        if not raw:
            self.ack()
            return 0
        self.write_records(raw)
        self.ack()
        return len(raw)

    def write_records(self, raw: list[bytes]) -> None:
        """Decode ring records (tables are applied) and write the entries they make, in order."""
        batch: list[Entry] = []
        for data in raw:
            if self.stopped:
                break
            try:
                entry = self._decode(data)
            except (ValueError, struct.error, IndexError) as exc:
                self._note(f"a malformed journal record was skipped ({exc})")
                continue
            if entry is not None:
                batch.append(entry)
        if batch:
            self._write(batch)

    def drain(self) -> int:
        """Write everything in the ring (up to a STOP record); returns the records taken."""
        total = 0
        while not self.stopped:
            n = self.drain_once()
            if n == 0:
                break
            total += n
        return total

    def _write(self, batch: list[Entry]) -> None:
        try:
            self.sender.send(batch)
            self._written += len(batch)
            self.written += len(batch)
        except Exception as exc:
            self._errors += 1
            if self.fallback is None:
                return
            self._fallbacks += len(batch)
            note: Entry = (3, f"cannot write {len(batch)} record(s) to the {self.sender.target}: {exc}; "
                              "they follow on stderr", FieldSet({}), None, "procpoold.journal")
            with contextlib.suppress(Exception):
                self.fallback.send([note, *batch])

    def _note(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self.sender.send([(3, message, FieldSet({}), None, "procpoold.journal")])

    def ack(self) -> None:
        """Tell the daemon how far it got (kept for later if the acknowledgement ring is full)."""
        if self.acks is None or not (self._written or self._errors or self._fallbacks or self.seq):
            return
        data = enc.ACK.pack(self.seq, self._written, self._errors, self._fallbacks)
        if self.acks.push(data, wake=True):
            self._written = self._errors = self._fallbacks = 0


# -- the process ---------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the daemon dies (PR_SET_PDEATHSIG), so that no forwarder outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise _Stop


def run(segment_fd: int, doorbell_fd: int, tables_fd: int, target: str, journal_path: str,
        parent: int) -> int:
    """The forwarder's main loop (in the child process)."""

    def on_term(_signum: int, _frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the daemon, which stops us
    segment = Segment(segment_fd, None)
    ring, acks = segment.request, segment.result
    ring.spill_from = None  # the daemon is the only producer, and trusted
    if doorbell_fd >= 0:
        acks.set_doorbell(doorbell_fd)
    forwarder = Forwarder(ring, make_sender(target, journal_path))
    forwarder.acks = acks
    if tables_fd >= 0:
        with os.fdopen(tables_fd, "rb") as f:
            forwarder.load_tables(f.read())
    acks.push(enc.ACK.pack(0, 0, 0, 0))  # hello: the daemon announces readiness after this
    try:
        _die_with_parent(parent)
        busy_until = 0.0
        while not forwarder.stopped:
            if forwarder.drain_once():
                busy_until = time.monotonic() + PARK_AFTER
                continue
            if time.monotonic() < busy_until:
                time.sleep(LINGER)
                continue
            ring.wait(None)
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        forwarder.drain()  # the daemon is gone or wants us gone: write what it had handed over
    forwarder.ack()
    segment.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procpoold-journal-forwarder")
    parser.add_argument("--segment-fd", type=int, required=True)
    parser.add_argument("--doorbell-fd", type=int, default=-1)
    parser.add_argument("--tables-fd", type=int, default=-1)
    parser.add_argument("--target", choices=("journal", "stderr"), default="stderr")
    parser.add_argument("--journal-path", default=JOURNAL_SOCKET)
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.segment_fd, args.doorbell_fd, args.tables_fd, args.target, args.journal_path,
               args.parent or os.getppid())


if __name__ == "__main__":
    sys.exit(main())

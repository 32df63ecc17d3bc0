"""The journal forwarder: a child process of the daemon that turns the compact records of a
shared-memory ring into journald records (or readable stderr lines).

The daemon packs what its loop iteration produced (:mod:`procpoold.journal.encoding`) and pushes
it, once per iteration, into the request ring of a :class:`~procpoold.pool.ring.Segment` that it
created and that this process maps through an inherited fd. This process keeps the name tables
(per job: its fields and its tasks' names; code sites) the daemon sends once, expands each
iteration's packed lifecycle events and each output line into journald records with the fields
built from them, writes batches with a :mod:`sender <procpoold.journal.senders>`, and
acknowledges on the segment's result ring the highest ``seq`` written (waking the daemon through
its eventfd only when the daemon asked for it: while it waits for room). With a watermark file
(the daemon's state folder has one), the same ``seq`` is written there after each batch, before
the acknowledgement: a daemon killed with ``kill -9`` reads it at its next start, and replays
the lifecycle events of its durable log above it.

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
                 fallback: Sender | None = None, watermark: str | None = None) -> None:
        self.ring = ring
        self.sender = sender
        self.acks = acks
        self.fallback = fallback if fallback is not None else (
            StderrSender() if sender.target != "stderr" else None)
        #: job -> (its fields, its tasks' names by index)
        self.jobs: dict[int, tuple[dict[str, str], list[str]]] = {}
        self.sites: dict[int, dict[str, str]] = {}
        self._sets: dict[tuple[int, int, int, int, int], FieldSet] = {}
        self._event_extra: dict[tuple[int, int], FieldSet] = {}  # (site, code) -> its extra fields
        self.stopped = False
        # counters since the last acknowledgement that reached the daemon
        self.seq = 0
        self._written = self._errors = self._fallbacks = 0
        self.written = 0
        #: the file the highest seq written goes to after each batch (None: not kept)
        self._mark_fd = -1
        self._marked = 0
        if watermark is not None:
            self.keep_watermark(watermark)

    def keep_watermark(self, path: str | None) -> None:
        """Write the highest seq written to ``path`` after each batch (None: stop doing so)."""
        if self._mark_fd >= 0:
            os.close(self._mark_fd)
            self._mark_fd = -1
        if path is not None:
            self._mark_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # -- tables -------------------------------------------------------------------------------

    def load_tables(self, data: bytes) -> None:
        """Apply a snapshot of name tables (``<u32 length><record>``...), as sent by the daemon."""
        pos = 0
        while pos + 4 <= len(data):
            (n,) = _TABLE_LEN.unpack_from(data, pos)
            self._decode(data[pos + 4 : pos + 4 + n])
            pos += 4 + n

    def _fields(self, job: int, index: int, attempt: int, pid: int, stream: int) -> FieldSet:
        key = (job, index, attempt, pid, stream)
        fset = self._sets.get(key)
        if fset is None:
            if len(self._sets) > 10_000:
                self._sets.clear()
            found = self.jobs.get(job)
            if found is None:
                fields = {"PROCPOOL_JOB_ID": str(job), "PROCPOOL_TASK_ID": f"{job}.{index}"}
            else:
                fields = dict(found[0])
                fields["PROCPOOL_TASK_ID"] = f"{fields.get('PROCPOOL_JOB_ID', job)}.{index}"
                names = found[1]
                if index < len(names):
                    fields["PROCPOOL_TASK_NAME"] = names[index]
            fields["PROCPOOL_ATTEMPT"] = str(attempt)
            if pid:
                fields["PROCPOOL_WORKER_PID"] = str(pid)
            if stream != _DAEMON_STREAM:
                fields["PROCPOOL_STREAM"] = enc.STREAMS[stream] if stream < len(enc.STREAMS) else "log"
            fset = self._sets[key] = FieldSet(fields, clean=True)
        return fset

    def _name(self, job: int, index: int) -> str:
        found = self.jobs.get(job)
        if found is not None and index < len(found[1]):
            return found[1][index]
        return f"#{index}"

    # -- decoding -----------------------------------------------------------------------------

    def _events(self, data: bytes) -> list[Entry]:
        """An EVENTS record -> its entries, in order (a range of starts: one entry per task)."""
        first_seq, _ts, items, texts = enc.unpack_events(data)
        out: list[Entry] = []
        fields, extras, message = self._fields, self._event_extra, enc.event_message
        for n, i in enumerate(range(0, len(items), enc.ITEM_INTS)):
            code, site, job, index, count, attempt, pid, _tlen = items[i : i + enc.ITEM_INTS]
            text = texts[n].decode("utf-8", "replace") if texts[n] else ""
            extra = extras.get((site, code))
            if extra is None:
                site_fields = dict(self.sites.get(site, {}))
                site_fields["MESSAGE_ID"] = enc.EVENTS.get(code, (enc.MessageId.TASK_FAILED, 4))[0]
                extra = extras[(site, code)] = FieldSet(site_fields, clean=True, identifier=False)
            prio = enc.EVENTS.get(code, (enc.MessageId.TASK_FAILED, 4))[1]
            logger = extra.fields.get("LOGGER", _TASK_LOGGER)
            for task in range(index, index + count):
                out.append((prio, message(code, self._name(job, task), attempt, text),
                            fields(job, task, attempt, pid, _DAEMON_STREAM), extra, logger))
        self.seq = first_seq + len(items) // enc.ITEM_INTS - 1
        return out

    def _decode(self, data: bytes) -> Entry | None:
        """One ring record -> an entry to write (None for a table or a control record)."""
        kind = data[0]
        if kind == enc.K_LINE:
            _k, prio, stream, job, index, attempt, pid, n, seq, _ts = enc.LINE.unpack_from(data)
            start = enc.LINE.size
            message = data[start : start + n].decode("utf-8", "replace")
            given: Mapping[str, str] | None = None
            if len(data) > start + n:
                given = dict(enc.decode_fields(data[start + n :]))
            self.seq = seq
            return (prio, message, self._fields(job, index, attempt, pid, stream), given, _TASK_LOGGER)
        if kind == enc.K_RECORD:
            _k, prio, ln, n, seq, _ts = enc.RECORD.unpack_from(data)
            start = enc.RECORD.size
            logger = data[start : start + ln].decode("utf-8", "replace")
            message = data[start + ln : start + ln + n].decode("utf-8", "replace")
            fields = dict(enc.decode_fields(data[start + ln + n :]))
            self.seq = seq
            return (prio, message, FieldSet(fields, clean=True), None, logger)  # (named by encode_fields)
        if kind == enc.K_NAMES:
            job, first, job_fields, names = enc.unpack_names(data)
            found = self.jobs.get(job)
            if found is None:
                found = self.jobs[job] = (job_fields, [])
            elif job_fields:
                found = self.jobs[job] = (job_fields, found[1])
            known = found[1]
            if len(known) < first:
                known.extend("" for _ in range(first - len(known)))
            known[first : first + len(names)] = names
            self._sets.clear()
            return None
        if kind == enc.K_SITE:
            (_k, site) = enc.SITE.unpack_from(data)
            self.sites[site] = dict(enc.decode_fields(data[enc.SITE.size :]))
            self._event_extra.clear()
            return None
        if kind == enc.K_FORGET:
            (_k, job) = enc.FORGET.unpack_from(data)
            self.jobs.pop(job, None)
            self._sets.clear()
            return None
        if kind == enc.K_STOP:
            self.stopped = True
            return None
        if kind == enc.K_MARK:
            self.keep_watermark(data[1:].decode("utf-8", "surrogateescape"))
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
                if data[0] == enc.K_EVENTS:
                    batch.extend(self._events(data))
                    continue
                entry = self._decode(data)
            except (ValueError, struct.error, IndexError) as exc:
                self._note(f"a malformed journal record was skipped ({exc})")
                continue
            if entry is not None:
                batch.append(entry)
        if batch:
            self._write(batch)
        if self._mark_fd >= 0 and self.seq > self._marked:
            # (a short pwrite of 8 bytes at offset 0: whole or not at all in practice)
            try:
                os.pwrite(self._mark_fd, enc.WATERMARK.pack(self.seq), 0)
                self._marked = self.seq
            except OSError as exc:
                self._note(f"cannot write the journal watermark ({exc}); a restart after a crash may "
                           "write some lifecycle records twice")
                os.close(self._mark_fd)
                self._mark_fd = -1

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
        parent: int, watermark: str | None = None) -> int:
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
    forwarder = Forwarder(ring, make_sender(target, journal_path), watermark=watermark)
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
    parser.add_argument("--watermark", default=None)
    args = parser.parse_args(argv)
    return run(args.segment_fd, args.doorbell_fd, args.tables_fd, args.target, args.journal_path,
               args.parent or os.getppid(), args.watermark)


if __name__ == "__main__":
    sys.exit(main())

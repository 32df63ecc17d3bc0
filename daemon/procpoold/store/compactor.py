"""The compactor: applies the write-ahead log's records to the SQLite snapshot, off the loop.

The loop thread makes a group commit durable by appending one record to the log
(:mod:`procpoold.store.log`) and hands the same record here (:meth:`Compactor.submit`). This
thread applies the queued records in order, several per SQLite transaction, together with
``meta.log_applied`` (the last record's number), so that the database is always a snapshot of
the log up to a known record. SQLite's checkpoints (its own WAL into the database file) run here
too, and so do the file removals that must wait for a commit (a snapshot's dropped task-log
files, a deleted job's folder) and handing back the page-cache pages of written value files.

A segment of the log the loop has closed is removed once every record in it is applied and,
with ``sync = "normal"``, once a checkpoint has put the database file on the disk (so that a power
loss cannot lose applied records whose log is gone). The start replays what is left
(:meth:`procpoold.store.sqlite.StateStore`), with :class:`Applier` on its own connection.

The loop waits for this thread only when it reads what it has written (see
:meth:`Compactor.wait`) and, as back-pressure, when :data:`MAX_QUEUED` records are waiting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procpoold.store.values import LargeValues

log = logging.getLogger("procpoold.store")

#: Operations of a log record (each a list: code first).
ADD = 0  # [ADD, id, key, name, state, created_at, doc, data, uid]: a new job
JOB = 1  # [JOB, id, state, finished_at, data, summary or None, uid]: a job's own fields
APPEND = 2  # [APPEND, id, seq, entries]: one task_log row (entries: a packed list, or b"")
SNAPSHOT = 3  # [SNAPSHOT, id, seq, entries]: the job's task_log rows replaced by one row
DELETE = 4  # [DELETE, [ids], next_job_id]: jobs removed
EVENTS = 5  # [EVENTS, first seq, last seq, record]: the journal's lifecycle events (not applied:
#             read back at start for a replay; see procpoold.journal.sink)

#: Records queued for the compactor at most before the loop waits for it (back-pressure).
MAX_QUEUED = 4096
#: The compactor gathers records this long (or this many) into one transaction, unless a read
#: waits for them: fewer transactions, and fewer wake-ups of a thread that shares the GIL. Each
#: wake-up takes the GIL from the loop, usually in the middle of a request (at a system call of
#: the loop's); with 20 ms and 256, a daemon committing ~2,000 records a second (one-task jobs
#: submitted one after another) woke it ~100 times a second. The log is the durable record, so
#: the delay costs no safety, only a longer replay after a crash (at most this many records).
GATHER_SECONDS = 0.25
GATHER_RECORDS = 1024


class Applier:
    """Applies log records to a database inside the caller's transaction."""

    def __init__(self, db: sqlite3.Connection, values: LargeValues) -> None:
        self.db = db
        self.values = values

    def apply(self, records: list[tuple[int, list[Any]]]) -> list[Callable[[], None]]:
        """Apply ``records`` (lsn, ops) and note the last lsn; returns what to do once the
        transaction has committed (file removals).

        The batch is folded first, so that a transaction costs a few ``executemany`` calls
        whatever its size (each call gives the GIL away and takes it back): a job's own fields
        as its last change says (a summary or uid as the last change that had one), a job's
        task-log rows from its last snapshot in the batch on, jobs deleted at the end. The result
        is the one of applying every operation in order.
        """
        adds: dict[int, list[Any]] = {}
        jobs: dict[int, list[Any]] = {}
        rows: dict[int, list[tuple[int, bytes]]] = {}  # task_log rows, from the last snapshot on
        snapshots: dict[int, int] = {}  # job -> seq of its last snapshot in the batch
        deleted: list[int] = []
        keyed: dict[str, int] = {}  # idempotency key -> the job of this batch that has it
        next_job_id: int | None = None
        for _lsn, ops in records:
            for op in ops:
                code = op[0]
                if code == APPEND:
                    rows.setdefault(op[1], []).append((op[2], op[3]))
                elif code == JOB:
                    before = jobs.get(op[1])
                    if before is not None:
                        summary = before[5] if op[5] is None else op[5]
                        op = [*op[:5], summary, before[6] if op[6] is None else op[6]]
                    jobs[op[1]] = op
                elif code == ADD:
                    if op[2] is not None:  # a key moves to the newest job (see below)
                        older = keyed.get(op[2])
                        if older is not None and older in adds:
                            adds[older] = [*adds[older][:2], None, *adds[older][3:]]
                        keyed[op[2]] = op[1]
                    adds[op[1]] = op
                elif code == SNAPSHOT:
                    snapshots[op[1]] = op[2]
                    rows[op[1]] = [(op[2], op[3])]
                elif code == DELETE:
                    deleted.extend(op[1])
                    next_job_id = op[2]
                elif code == EVENTS:
                    continue
                else:
                    raise ValueError(f"unknown log operation {code!r}")
        db = self.db
        if keyed:
            # A job submitted with "replace" takes the key of the job it replaced (the key is
            # UNIQUE, and INSERT OR REPLACE would otherwise delete that job's row).
            db.executemany("UPDATE jobs SET key=NULL WHERE key=? AND id<>?", list(keyed.items()))
        if adds:
            db.executemany(
                "INSERT OR REPLACE INTO jobs(id, key, name, state, created_at, finished_at, doc,"
                " data, uid) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                [op[1:] for op in adds.values()],
            )
        if jobs:
            db.executemany(
                "UPDATE jobs SET state=?, finished_at=?, data=?, summary=coalesce(?, summary),"
                " uid=coalesce(?, uid) WHERE id=?",
                [(op[2], op[3], op[4], op[5], op[6], op[1]) for op in jobs.values()],
            )
        if snapshots:
            db.executemany("DELETE FROM task_log WHERE job_id=?", [(j,) for j in snapshots])
        if rows:
            db.executemany(
                "INSERT OR REPLACE INTO task_log(job_id, seq, data) VALUES (?, ?, ?)",
                [(j, seq, data) for j, job_rows in rows.items() for seq, data in job_rows],
            )
        if deleted:  # (their task_log rows go with them: ON DELETE CASCADE)
            db.executemany("DELETE FROM jobs WHERE id=?", [(j,) for j in deleted])
            # The highest id handed out may be among them: keep it, so that no id is reused.
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_job_id', ?)",
                       (str(next_job_id),))
        if records:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('log_applied', ?)",
                       (str(records[-1][0]),))
        after: list[Callable[[], None]] = [
            functools.partial(self.values.drop_logs, str(j), seq) for j, seq in snapshots.items()
        ]
        after.extend(functools.partial(self.values.drop_job, str(j)) for j in deleted)
        return after


class Compactor:
    """The thread that applies records (see the module's docstring).

    ``applied``: the last record the database holds already. Methods other than the thread's own
    run on the loop thread.
    """

    def __init__(self, path: Path, sync: str, values: LargeValues, applied: int) -> None:
        self.path = path
        self.sync = sync
        self.values = values
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._applier = Applier(self.db, values)
        self._cond = threading.Condition()
        self._queue: list[tuple[int, list[Any]]] = []
        # closed segments: (their last lsn, path, the highest journal seq of the events they hold)
        self._retired: list[tuple[int, Path, int]] = []
        self._stopping = False
        self._urgent = False  # a read waits: apply now
        self._first_queued = 0.0  # when the oldest queued record came
        self._held_back_at = -1  # a checkpoint was held back with this much applied: wait for more
        #: the last record applied (the database holds every record up to it)
        self.applied = applied
        #: the journal's watermark (set by the loop): a segment holding lifecycle events above it
        #: is kept, so that the next start can write them if the daemon dies before the journal did
        self.events_written = 0
        #: why applying failed (then nothing more is applied; the loop stops the daemon)
        self.error: str | None = None
        #: transactions, records applied, and seconds spent applying (for status and benchmarks)
        self.transactions = 0
        self.records = 0
        self.busy = 0.0
        self._thread = threading.Thread(target=self._run, name="procpoold-compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, lsn: int, ops: list[Any]) -> None:
        """Queue a record that is durable in the log (loop thread)."""
        with self._cond:
            while len(self._queue) >= MAX_QUEUED and self.error is None and self._thread.is_alive():
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait()
            self._queue.append((lsn, ops))
            if len(self._queue) == 1:
                self._first_queued = time.monotonic()
                self._cond.notify_all()
            elif len(self._queue) == GATHER_RECORDS:
                self._cond.notify_all()

    def retire(self, last_lsn: int, segment: Path, events: int = 0) -> None:
        """A closed segment, to remove once its records up to ``last_lsn`` are safely applied and
        the journal has written its lifecycle events up to seq ``events``."""
        with self._cond:
            self._retired.append((last_lsn, segment, events))
            self._cond.notify_all()

    def wait(self, lsn: int) -> str | None:
        """Wait until the record ``lsn`` is applied; returns the error if applying failed."""
        with self._cond:
            while self.applied < lsn and self.error is None and self._thread.is_alive():
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait()
            if self.applied < lsn and self.error is None:
                return f"the compactor of {self.path} stopped with records not applied"
            return self.error

    def stop(self) -> str | None:
        """Apply what is queued, checkpoint, remove retired segments, and end the thread.

        Returns the error if applying failed (then nothing was removed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        elif self._thread.ident is None:  # never started: apply here
            self._run()
        try:
            if self.error is None:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self.error = f"cannot checkpoint the state file {self.path}: {exc}"
        finally:
            self.db.close()
        return self.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._urgent or self._removable()
                           or len(self._queue) >= GATHER_RECORDS):
                    if not self._queue:
                        self._cond.wait()  # idle: no timer
                        continue
                    left = self._first_queued + GATHER_SECONDS - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._urgent = False
                batch, self._queue = self._queue, []
                stopping = self._stopping
                self._cond.notify_all()  # a submit waiting for room
            if batch and not self._apply(batch):
                return
            if self._removable():
                self._remove_segments()
            self.values.release()
            if stopping and not batch:
                return

    def _apply(self, batch: list[tuple[int, list[Any]]]) -> bool:
        started = time.perf_counter()
        try:
            self.db.execute("BEGIN")
            try:
                after = self._applier.apply(batch)
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise
        except Exception as exc:
            from procpoold.store.sqlite import disk_full  # (a cycle at import time otherwise)

            what = "the disk is full: " if disk_full(exc) else ""
            log.critical("cannot apply the state log to %s: %s%s", self.path, what, exc)
            with self._cond:
                self.error = f"cannot write the state file {self.path}: {what}{exc}"
                self._cond.notify_all()
            return False
        for action in after:  # committed: a file left behind is a leak, not a failure
            try:
                action()
            except OSError as exc:
                log.warning("cannot remove a value file of the state: %s", exc)
        self.busy += time.perf_counter() - started
        with self._cond:
            self.applied = batch[-1][0]
            self.transactions += 1
            self.records += len(batch)
            self._cond.notify_all()
        return True

    def _removable(self) -> bool:
        return (bool(self._retired) and self._retired[0][0] <= self.applied != self._held_back_at
                and self._retired[0][2] <= self.events_written)

    def _remove_segments(self) -> None:
        if self.sync != "full":
            # Applied records are in SQLite's WAL, synced only by a checkpoint: sync them before
            # their log goes (a power loss must not lose both).
            try:
                busy, wal_frames, done = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("cannot checkpoint the state file %s: %s", self.path, exc)
                busy = 1
            if busy or done != wal_frames:
                self._held_back_at = self.applied  # a reader held it back: the next batch retries
                return
        with self._cond:
            ready = [s for s in self._retired if s[0] <= self.applied and s[2] <= self.events_written]
            self._retired = [s for s in self._retired if s not in ready]
        for _lsn, segment, _events in ready:
            segment.unlink(missing_ok=True)

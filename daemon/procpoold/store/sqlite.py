"""The state store: a write-ahead log of group commits, applied to SQLite snapshots off the loop.

Runs on the daemon's loop thread, except the compactor (:mod:`procpoold.store.compactor`), a
thread of its own. A group commit (:meth:`StateStore.flush`, once per loop iteration that changed
something) is *one record appended to the log* (:mod:`procpoold.store.log`): the loop's whole
durable write is one ``write`` (plus an ``fdatasync`` with ``sync = "full"``). The compactor
then applies the record to the database, with SQLite's checkpoints, off the loop; the log's
segments are removed once applied. At start, what the database does not hold yet is replayed
from the log (a torn tail cut), before anything is read.

Database rows::

    meta(key PRIMARY KEY, value)                   schema_version, daemon_id, next_job_id,
                                                   log_applied (the last log record applied)
    jobs(id INTEGER PRIMARY KEY, key UNIQUE, name, state, created_at, finished_at,
         doc BLOB, data BLOB, uid, summary BLOB)   doc: the job as submitted (msgpack)
                                                   data: Job.dump() (msgpack)
                                                   uid: the submitter
                                                   summary: procpoold.core.status.summary(job)
                                                   once finished (what status lists show)
    task_log(job_id, seq, data BLOB,               data: a msgpack list of task entries
             PRIMARY KEY(job_id, seq))             (opaque here; the scheduler's format)

Task changes are appended, never rewritten in place: a group commit adds at most one
``task_log`` row per job, holding every task entry of that job from the commit. When the
scheduler asks for a *snapshot* of a job (its log has grown well past its number of tasks), the
job's rows are replaced by one row. Replaying a job's rows in ``seq`` order rebuilds it.

Large values (64 KiB or more) are written to files beside the database
(:mod:`procpoold.store.values`); the column and the log record hold an empty blob that points
there. The file is complete before the record that refers to it, and removed (or kept as a
spare) after the compactor has applied the record that drops it.

Reads (a finished job read back, status summaries) wait until the compactor has applied every
record flushed before them, so they see everything the daemon has made durable; the wait is
short (the compactor applies each record as it comes) and never happens per task.

Durability: a record is in the kernel's page cache when :meth:`StateStore.flush` returns, which a
crash of the daemon (``kill -9``) does not lose; ``sync = "full"`` adds an ``fdatasync`` per record
(and per large-value file) and survives power loss. See ``docs/state.md``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from procpoold.core.jobs import FULL_ENTRY, FinishedJob
from procpoold.store.compactor import ADD, APPEND, DELETE, EVENTS, JOB, SNAPSHOT, Applier, Compactor
from procpoold.store.log import LogCorrupt, LogWriter, read_segment, segment_paths
from procpoold.store.protocol import StoredJob, StoreError, StoreFailure
from procpoold.store.values import LARGE_VALUE, LargeValues

__all__ = [
    "LARGE_VALUE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "StateStore",
    "StoreError",
    "StoreFailure",
    "StoredJob",
]

log = logging.getLogger("procpoold.store")

SCHEMA_VERSION = 5

#: A log segment is closed (and removed once applied) when it reaches this size.
SEGMENT_BYTES = 4 << 20


#: Reused by _pack (loop thread only): ``msgpack.packb`` makes a packer, with a 1 MiB buffer,
#: per value, and a commit packs several. Replaced after a value bigger than that buffer (a
#: packer's buffer never shrinks).
_packer = msgpack.Packer(use_bin_type=True)


def _pack(value: Any) -> bytes:
    global _packer
    data: bytes = _packer.pack(value)
    if len(data) > 1 << 20:
        _packer = msgpack.Packer(use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _v1_task_rows_to_log(db: sqlite3.Connection) -> None:
    """Version 1 kept one row per task, rewritten on each change; version 2 appends (task_log)."""
    db.execute(
        "CREATE TABLE task_log ("
        " job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
        " seq INTEGER NOT NULL,"
        " data BLOB NOT NULL,"
        " PRIMARY KEY (job_id, seq)"
        ") WITHOUT ROWID"
    )
    by_job: dict[int, list[Any]] = {}
    for job_id, idx, data in db.execute("SELECT job_id, idx, data FROM tasks ORDER BY job_id, idx"):
        task = _unpack(data)
        attempt_fields = ("number", "id", "started_at", "finished_at", "status", "pid", "worker")
        task["attempts"] = [[a[f] for f in attempt_fields] for a in task["attempts"]]
        by_job.setdefault(job_id, []).append([FULL_ENTRY, idx, task])
    db.executemany(
        "INSERT INTO task_log(job_id, seq, data) VALUES (?, 0, ?)",
        [(job_id, _pack(entries)) for job_id, entries in by_job.items()],
    )
    db.execute("DROP TABLE tasks")


#: Numbered migrations: MIGRATIONS[n] takes a database from version n to n + 1, either as SQL
#: statements or as a function of the connection (inside the migration's transaction).
MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    0: """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            key TEXT UNIQUE,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL,
            doc BLOB NOT NULL,
            data BLOB NOT NULL
        );
        CREATE INDEX jobs_state ON jobs(state);
        CREATE INDEX jobs_finished ON jobs(finished_at);
        CREATE TABLE tasks (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            state TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (job_id, idx)
        ) WITHOUT ROWID;
    """,
    1: _v1_task_rows_to_log,
    # Nothing reads jobs by state or finish time (every job is in memory), and each index cost
    # two more pages per commit that changes a job's state.
    2: "DROP INDEX IF EXISTS jobs_state; DROP INDEX IF EXISTS jobs_finished",
    # Finished jobs are served from the store, not kept in memory: each row says whose it is and
    # carries the summary that status lists show. Rows of jobs finished before stay NULL until the
    # next start writes them (see the scheduler's recover).
    3: "ALTER TABLE jobs ADD COLUMN uid INTEGER; ALTER TABLE jobs ADD COLUMN summary BLOB",
    # Changes go to a write-ahead log first, applied to the tables by the compactor: a file
    # with records not yet applied must not be opened by a procpoold that would ignore them.
    4: "INSERT OR IGNORE INTO meta(key, value) VALUES ('log_applied', '0')",
}

#: The states of a finished job (rows in these states are read on demand, not at start).
FINISHED_STATES = ("completed", "failed", "cancelled")
_FINISHED_SQL = "('completed', 'failed', 'cancelled')"


#: The states of a finished job (rows in these states are read on demand, not at start).
FINISHED_STATES = ("completed", "failed", "cancelled")
_FINISHED_SQL = "('completed', 'failed', 'cancelled')"


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says that the disk (or the quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    )


def full_disk_hint(path: Path) -> str:
    return f"free space on the file system of {path.parent} (df -h {path.parent}), then start procpoold again"


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: SQLite has already rolled back after some errors
    (a full disk among them), and "cannot rollback - no transaction is active" must not hide them."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def check_state_folder(folder: Path) -> None:
    """Raise StoreError unless ``folder`` belongs to the daemon's user and nobody else may write it
    (else another user could plant or swap the files the daemon opens in it)."""
    st = folder.stat()
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreError(
            f"state folder {folder} must belong to procpoold's user (uid {os.geteuid()}) and be "
            f"writable by nobody else (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); "
            "use chown and 'chmod 700', or choose another --state-dir"
        )


def make_private(path: Path) -> None:
    """Keep the state folder and the state file (mode 0600) to the daemon's user alone.

    Tasks run as other users must not read the store (other jobs' environments) or remove it. A
    new folder is made mode 0700; an existing one must belong to the daemon's user and be writable
    by nobody else (its modes are left alone otherwise: it may be a folder others use). SQLite gives
    its ``-wal`` and ``-shm`` files the database file's mode. Raises OSError or StoreError.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_state_folder(folder)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{extra}", 0o600)


def _shut_out_others(folder: Path) -> None:
    """Tasks run as their users: the store's folder must not let others in (job environments
    and every job's data are in it), whatever mode it was created with (a service's state
    folder is 0755 by default). Only a folder this process owns is changed."""
    st = folder.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o007:
        os.chmod(folder, st.st_mode & 0o7770)


class StateStore:
    """The state directory's store: ``state.db`` (SQLite), its log segments, its value files.

    The loop thread queues changes and flushes them as log records; the compactor thread applies
    them to the database (see the module's docstring).
    """

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = path
        way_out = (
            f"move it aside (mv {path} {path}.broken) to start with an empty store, "
            "or restore it from a backup"
        )
        try:
            make_private(path)
            _shut_out_others(path.parent)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=10000")  # the compactor's connection writes
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            version = self._version()
        except (sqlite3.DatabaseError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            if disk_full(exc):
                raise StoreError(
                    f"state file {path} cannot be opened: the disk is full ({reason})", full_disk_hint(path)
                ) from None
            if isinstance(exc, OSError):
                raise StoreError(f"state file {path} cannot be opened: {reason}") from None
            raise StoreError(f"state file {path} cannot be opened: {exc}; {way_out}") from None
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(
                f"state file {path} has schema version {version}, newer than this procpoold knows "
                f"({SCHEMA_VERSION}); run the newer procpoold, or {way_out}"
            )
        try:
            self._migrate(version)
            #: Names this store's daemon to the commands it starts (``PROCPOOL_DAEMON_ID``): after a
            #: crash, the next start recognises its own leftovers among other daemons' commands.
            self.daemon_id = self._daemon_id()
        except (sqlite3.DatabaseError, OSError) as exc:
            self.db.close()
            if disk_full(exc):
                raise StoreError(
                    f"state file {path} cannot be written: the disk is full ({exc})", full_disk_hint(path)
                ) from None
            raise StoreError(
                f"state file {path} cannot be migrated from version {version}: {exc}; {way_out}"
            ) from None
        self.values = LargeValues(path.with_name(path.stem + "-values"), fsync=sync == "full")
        self.sync = sync
        #: why writing failed (then nothing more is written; see StoreFailure)
        self.failed: str | None = None
        self._new_jobs: list[list[Any]] = []  # ADD ops
        self._dirty_jobs: dict[str, Any] = {}
        self._appends: dict[str, list[Any]] = {}  # job id -> task entries for the next row
        self._snapshots: dict[str, list[Any]] = {}  # job id -> full entries replacing its rows
        self._deletes: list[int] = []
        self._events: list[list[Any]] = []  # EVENTS ops
        #: the highest journal seq of the events in the open segment (see Compactor.retire)
        self._segment_events = 0
        #: the journal's lifecycle events the log held at start: (first seq, last seq, record)
        self.logged_events: list[tuple[int, int, bytes]] = []
        self._next_seq: dict[str, int] = {}
        #: task entries in each job's log since its last snapshot (the scheduler compacts by it)
        self.log_entries: dict[str, int] = {}
        #: group commits made (log records written), and seconds spent writing them
        self.commits = 0
        self.commit_seconds = 0.0
        try:
            #: the last log record written (its number; records are numbered from 1, never reused)
            self.lsn, number = self._recover()
            self.values.sweep({str(r[0]) for r in self.db.execute("SELECT id FROM jobs")})
            self.compactor = Compactor(path, sync, self.values, self.lsn)
            #: one past the highest job id handed out (kept in meta when jobs are deleted)
            self._next_job_id = self.max_job_id() + 1
            self.writer = LogWriter(path.parent, path.stem, number, sync == "full")
        except LogCorrupt as exc:
            self.db.close()
            raise StoreError(
                f"state log {exc}; move the log aside (mv {path.parent}/{path.stem}.log.* to a folder of "
                "its own) to start from the last snapshot, losing the changes it holds, or restore "
                "the state folder from a backup"
            ) from None
        except (sqlite3.DatabaseError, OSError) as exc:
            if hasattr(self, "compactor"):
                self.compactor.stop()
            self.db.close()
            if disk_full(exc):
                raise StoreError(
                    f"cannot write the state file {path}: the disk is full: {exc}", full_disk_hint(path)
                ) from None
            raise StoreError(
                f"state file {path} cannot be recovered from its log: {exc}; {way_out}"
            ) from None
        self.compactor.start()

    def _recover(self) -> tuple[int, int]:
        """Replay the log records the database does not hold yet, cut a torn tail, and remove the
        segments (all applied). Returns the last record's number and the next segment's."""
        row = self.db.execute("SELECT value FROM meta WHERE key='log_applied'").fetchone()
        applied = int(row[0]) if row else 0
        segments = segment_paths(self.path.parent, self.path.stem)
        records: list[tuple[int, list[Any]]] = []
        last = applied
        cut: str | None = None
        for _number, segment_file in segments:
            if cut is not None:
                log.warning("state log %s follows a torn tail (%s): not replayed", segment_file, cut)
                continue
            segment = read_segment(segment_file)
            for offset, payload in enumerate(segment.payloads):
                try:
                    lsn, ops = _unpack(payload)
                except (ValueError, TypeError) as exc:
                    raise LogCorrupt(f"{segment_file}: record {offset} cannot be decoded ({exc})") from None
                # (applied or not: the journal may not have written them; the daemon decides)
                self.logged_events.extend((op[1], op[2], op[3]) for op in ops if op[0] == EVENTS)
                if lsn <= applied:
                    continue
                if lsn != last + 1:
                    raise LogCorrupt(f"{segment_file}: records {last + 1} to {lsn - 1} are missing")
                records.append((lsn, ops))
                last = lsn
            if segment.torn:
                cut = f"{segment_file} from offset {segment.end}"
                log.warning("state log %s ends in a torn record (a write the crash cut short): cut at "
                            "offset %d", segment_file, segment.end)
        if records:
            log.info("replaying %d state log record(s) (%d to %d)", len(records), records[0][0], last)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                after = Applier(self.db, self.values).apply(records)
                self.db.execute("COMMIT")
            except BaseException:
                _rollback(self.db)
                raise
            for action in after:
                action()
        if segments:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # on the disk before the log goes
            for _number, segment_file in segments:
                segment_file.unlink()
        return last, (segments[-1][0] + 1 if segments else 1)

    def _version(self) -> int:
        has_meta = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise sqlite3.DatabaseError("it is not a procpool state file (no meta table)")
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise sqlite3.DatabaseError("it has no schema version")
        return int(row[0])

    def _daemon_id(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key='daemon_id'").fetchone()
        if row is not None:
            return str(row[0])
        daemon_id = uuid.uuid4().hex
        self.db.execute("INSERT INTO meta(key, value) VALUES ('daemon_id', ?)", (daemon_id,))
        return daemon_id

    def _migrate(self, version: int) -> None:
        """Bring the store from schema ``version`` to :data:`SCHEMA_VERSION`. A new (empty) store
        is created by the same steps from 0; it is logged as one creation, not as migrations."""
        created = version == 0
        while version < SCHEMA_VERSION:
            log.log(logging.DEBUG if created else logging.INFO,
                    "migrating state file %s from schema %d to %d", self.path, version, version + 1)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                step = MIGRATIONS[version]
                if isinstance(step, str):
                    for statement in step.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                else:
                    step(self.db)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(version + 1),),
                )
                self.db.execute("COMMIT")
            except BaseException:
                _rollback(self.db)
                raise
            version += 1
        if created:
            log.info("created state file %s at schema %d", self.path, SCHEMA_VERSION)

    # -- writes (loop thread) -------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        key: str | None,
        name: str,
        state: str,
        created_at: float,
        doc: dict[str, Any],
        data: dict[str, Any],
        uid: int | None = None,
    ) -> None:
        """Queue a new job for the next :meth:`flush` (written before any other change of it).

        The caller flushes before it acknowledges the job: a job is durable before ``submit``
        replies, and the first attempts' write-ahead records share that commit.
        """
        try:
            doc_value = self.values.put(job_id, "doc", _pack(doc))
            data_value = self.values.put(job_id, "job", _pack(data))
        except OSError as exc:
            self._fail(exc)
        self._new_jobs.append([ADD, int(job_id), key, name, state, created_at, doc_value, data_value, uid])
        self._next_job_id = max(self._next_job_id, int(job_id) + 1)

    def job_changed(
        self,
        job_id: str,
        state: str,
        finished_at: float | None,
        data: dict[str, Any],
        summary: dict[str, Any] | None = None,
        uid: int | None = None,
    ) -> None:
        """Queue a job update for the next :meth:`flush`; ``summary`` once it has finished."""
        self._dirty_jobs[job_id] = (state, finished_at, data, summary, uid)

    def append_tasks(self, job_id: str, entries: list[Any]) -> None:
        """Queue task entries to append to the job's log at the next :meth:`flush`."""
        if job_id in self._snapshots:
            self._snapshots[job_id].extend(entries)
        else:
            self._appends.setdefault(job_id, []).extend(entries)

    def snapshot_tasks(self, job_id: str, entries: list[Any]) -> None:
        """Queue full entries that replace the job's whole log at the next :meth:`flush`."""
        self._appends.pop(job_id, None)
        self._snapshots[job_id] = list(entries)

    @property
    def pending(self) -> bool:
        return bool(self._new_jobs or self._dirty_jobs or self._appends or self._snapshots or self._deletes
                    or self._events)

    def log_events(self, first: int, last: int, record: bytes) -> None:
        """Queue the journal's packed lifecycle events (seqs ``first`` to ``last``) for the next
        :meth:`flush`: kept in the log (not applied), read back at start (:attr:`logged_events`)."""
        self._events.append([EVENTS, first, last, record])

    def events_written(self, seq: int) -> None:
        """The journal has written every record up to ``seq``: segments whose events are all at or
        below it may go."""
        self.compactor.events_written = seq

    def flush(self) -> None:
        """Make every queued change durable as one log record (group commit), then hand it to
        the compactor. Loop thread.

        Raises :class:`StoreFailure` when the write fails, or when the compactor could not apply
        an earlier record; the store then writes nothing more.
        """
        if self.failed is not None:
            return
        if self.compactor.error is not None:
            self.failed = self.compactor.error
            hint = full_disk_hint(self.path) if "disk is full" in self.failed else None
            raise StoreFailure(self.failed, hint)
        if not self.pending:
            return
        started = time.perf_counter()
        try:
            ops = self._ops()
            self.writer.append(_pack([self.lsn + 1, ops]))
        except OSError as exc:
            self._fail(exc)
        self.lsn += 1
        self.commits += 1
        self.compactor.submit(self.lsn, ops)
        if self.writer.size >= SEGMENT_BYTES:
            self._rotate()
        self.commit_seconds += time.perf_counter() - started

    def _ops(self) -> list[Any]:
        """The queued changes as the operations of one log record (and the queues emptied)."""
        ops: list[Any] = self._new_jobs
        self._new_jobs = []
        put = self.values.put
        for jid, (st, fin, d, summary, uid) in self._dirty_jobs.items():
            ops.append([JOB, int(jid), st, fin, put(jid, "job", _pack(d)),
                        None if summary is None else _pack(summary), uid])
        self._dirty_jobs.clear()
        for job_id, entries in self._snapshots.items():
            seq = self._seq(job_id)
            ops.append([SNAPSHOT, int(job_id), seq, put(job_id, f"log-{seq}", _pack(entries))])
            self.log_entries[job_id] = len(entries)
        self._snapshots.clear()
        for job_id, entries in self._appends.items():
            seq = self._seq(job_id)
            ops.append([APPEND, int(job_id), seq, put(job_id, f"log-{seq}", _pack(entries))])
            self.log_entries[job_id] = self.log_entries.get(job_id, 0) + len(entries)
        self._appends.clear()
        if self._deletes:
            ops.append([DELETE, self._deletes, self._next_job_id])
            self._deletes = []
        if self._events:
            ops += self._events
            self._segment_events = max(self._segment_events, self._events[-1][2])
            self._events = []
        return ops

    def _rotate(self) -> None:
        """Close the full segment (the compactor removes it once applied) and open the next."""
        old = self.writer
        try:
            self.writer = LogWriter(old.folder, old.stem, old.number + 1, old.sync)
        except OSError as exc:
            self._fail(exc)
        old.close()
        self.compactor.retire(self.lsn, old.path, self._segment_events)
        self._segment_events = 0

    def _fail(self, exc: OSError) -> None:
        full = disk_full(exc)
        what = "the disk is full: " if full else ""
        self.failed = f"cannot write the state file {self.writer.path}: {what}{exc}"
        raise StoreFailure(self.failed, full_disk_hint(self.path) if full else None) from exc

    def _seq(self, job_id: str) -> int:
        seq = self._next_seq.get(job_id, 0)
        self._next_seq[job_id] = seq + 1
        return seq

    def delete_jobs(self, job_ids: list[str]) -> None:
        """Remove jobs (and their task logs): durable when this returns (one log record)."""
        if not job_ids or self.failed is not None:
            return
        for j in job_ids:
            self._dirty_jobs.pop(j, None)
            self._appends.pop(j, None)
            self._snapshots.pop(j, None)
        self._new_jobs = [op for op in self._new_jobs if str(op[1]) not in job_ids]
        self._deletes.extend(int(j) for j in job_ids)
        self.flush()
        for j in job_ids:
            self.forget(j)

    def forget(self, job_id: str) -> None:
        """Drop what is kept in memory about a job that will not be written again (it finished)."""
        self._next_seq.pop(job_id, None)
        self.log_entries.pop(job_id, None)

    def reopen(self, job_id: str) -> None:
        """A finished job will be written again (a retry makes it run): its task log goes on from
        its last row (:meth:`forget` dropped the numbering; a row numbered anew would replace an
        older one). The caller snapshots its tasks next, which sets ``log_entries``."""
        self.settle()
        row = self.db.execute("SELECT max(seq) FROM task_log WHERE job_id=?", (int(job_id),)).fetchone()
        self._next_seq[job_id] = max(self._next_seq.get(job_id, 0), 0 if row[0] is None else row[0] + 1)

    def stats(self) -> dict[str, Any]:
        """For ``status``: the loop's time in commits, and the compactor's progress off the loop."""
        compactor = self.compactor
        return {
            "commit_seconds": round(self.commit_seconds, 6),
            "log_records": self.lsn,
            "applied": compactor.applied,
            "compactor_transactions": compactor.transactions,
            "compactor_seconds": round(compactor.busy, 6),
            "value_files": {"spare": self.values.reused, "new": self.values.fresh},
        }

    def settle(self) -> None:
        """Wait until the database holds every record flushed so far (raises StoreFailure if the
        compactor failed). Reads call it; so may a test that reads the tables."""
        error = self.compactor.wait(self.lsn)
        if error is not None:
            self.failed = error
            raise StoreFailure(error, full_disk_hint(self.path) if "disk is full" in error else None)

    # -- reads (loop thread; each sees every change flushed before it) ---------------------------

    def max_job_id(self) -> int:
        """The highest job id ever handed out (ids are never reused, even after pruning).

        Ids are handed out in order and a job is stored before its id is acknowledged, so the
        highest stored id is the answer unless the newest jobs were deleted since; deleting
        records the next id in ``meta`` (see :meth:`delete_jobs`).
        """
        self.settle()
        row = self.db.execute("SELECT value FROM meta WHERE key='next_job_id'").fetchone()
        stored = int(self.db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])
        return max(stored, int(row[0]) - 1 if row else 0)

    def finished_index(self) -> Iterator[FinishedJob]:
        """Every finished job that has its summary, in no particular order (read at start)."""
        self.settle()
        for job_id, key, state, uid, created_at, finished_at, name in self.db.execute(
            "SELECT id, key, state, uid, created_at, finished_at, name FROM jobs"
            f" WHERE state IN {_FINISHED_SQL} AND summary IS NOT NULL"
        ):
            yield FinishedJob(
                str(job_id), key, state, uid, float(created_at), float(finished_at or 0.0), str(name)
            )

    def summaries(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored summaries of these jobs (finished ones; others have none)."""
        self.settle()
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(job_ids), 500):
            chunk = [int(j) for j in job_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for job_id, blob in self.db.execute(
                f"SELECT id, summary FROM jobs WHERE id IN ({marks}) AND summary IS NOT NULL", chunk
            ):
                out[str(job_id)] = _unpack(blob)
        return out

    def load_job(self, job_id: str) -> StoredJob | None:
        """One stored job (a finished one, read on demand), or None if there is none."""
        self.settle()
        row = self.db.execute(
            "SELECT created_at, doc, data FROM jobs WHERE id=?", (int(job_id),)
        ).fetchone()
        if row is None:
            return None
        created_at, doc, data = row
        # Each part is decoded on its own: a job whose document cannot be read (marked failed at
        # the start that found it so) still comes back with its stored state and reason.
        error: str | None = None
        try:
            document = _unpack(self.values.get(job_id, "doc", doc))
        except ValueError as exc:
            document, error = {}, str(exc)
        try:
            fields = _unpack(self.values.get(job_id, "job", data))
            entries: list[Any] = []
            for seq, blob in self.db.execute(
                "SELECT seq, data FROM task_log WHERE job_id=? ORDER BY seq", (int(job_id),)
            ):
                entries.extend(_unpack(self.values.get(job_id, f"log-{seq}", blob)))
        except ValueError as exc:
            return StoredJob(job_id, float(created_at), document, {}, [], str(exc))
        return StoredJob(job_id, float(created_at), document, fields, entries, error)

    def key_and_uid(self, job_id: str) -> tuple[str | None, int | None]:
        """A job row's (scoped) idempotency key and submitter uid (None in rows from before schema 4)."""
        self.settle()
        row = self.db.execute("SELECT key, uid FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def load_jobs(self, unfinished_only: bool = False) -> Iterator[StoredJob]:
        """Every stored job, oldest first; one that cannot be read comes with its ``error``.

        ``unfinished_only``: the jobs that have not finished, and finished ones without their
        summary (rows from before schema 4); the others are read on demand (:meth:`load_job`).
        Two queries in all (jobs, then every log row in order), not one per job.
        """
        self.settle()
        where = f" WHERE state NOT IN {_FINISHED_SQL} OR summary IS NULL" if unfinished_only else ""
        logs: dict[int, list[Any]] = {}
        broken: dict[int, str] = {}
        for job_id, seq, blob in self.db.execute(
            "SELECT job_id, seq, data FROM task_log"
            + (f" WHERE job_id IN (SELECT id FROM jobs{where})" if where else "")
            + " ORDER BY job_id, seq"
        ):
            self._next_seq[str(job_id)] = seq + 1
            try:
                logs.setdefault(job_id, []).extend(_unpack(self.values.get(str(job_id), f"log-{seq}", blob)))
            except (ValueError, TypeError) as exc:  # TypeError: not a blob, or not a list
                broken[job_id] = str(exc)
        for job_id, created_at, doc, data in self.db.execute(
            f"SELECT id, created_at, doc, data FROM jobs{where} ORDER BY id"
        ).fetchall():
            jid = str(job_id)
            entries = logs.pop(job_id, [])
            self.log_entries[jid] = len(entries)
            try:
                if job_id in broken:
                    raise ValueError(broken[job_id])
                doc = _unpack(self.values.get(jid, "doc", doc))
                data = _unpack(self.values.get(jid, "job", data))
            except (ValueError, TypeError) as exc:  # TypeError: a column that is not a blob
                yield StoredJob(jid, float(created_at), {}, {}, [], str(exc))
                continue
            yield StoredJob(jid, float(created_at), doc, data, entries)

    def close(self) -> None:
        """Flush, let the compactor apply everything, and remove the log (all of it applied)."""
        try:
            self.flush()
        finally:
            error = self.compactor.stop()
            self.writer.close()
            self.values.close()
            if error is None and self.failed is None:
                for _number, segment in segment_paths(self.path.parent, self.path.stem):
                    segment.unlink(missing_ok=True)
            self.db.close()

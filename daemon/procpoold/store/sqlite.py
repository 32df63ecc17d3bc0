"""SQLite state store in WAL mode, with a schema version and numbered migrations.

Runs on the daemon's loop thread (one connection, no sharing). Rows::

    meta(key PRIMARY KEY, value)                   schema_version, daemon_id, next_job_id
    jobs(id INTEGER PRIMARY KEY, key UNIQUE, name, state, created_at, finished_at,
         doc BLOB, data BLOB, uid, summary BLOB)   doc: the job as submitted (msgpack)
                                                   data: Job.dump() (msgpack)
                                                   uid: the submitter; summary: Job.summary()
                                                   once finished (what status lists show)
    task_log(job_id, seq, data BLOB,               data: a msgpack list of task entries
             PRIMARY KEY(job_id, seq))             (see procpoold.core.jobs.replay_task_log)

Task changes are appended, never rewritten in place: a group commit adds at most
one ``task_log`` row per job, holding every task entry of that job from the
commit (a task's full state, or the small record of an attempt starting). A task
without entries is pending with no attempts. When a job's log has grown well past
its number of tasks, or one commit touches most of its tasks (a new run of a
repeat job, a recovery), the scheduler writes a *snapshot* instead: the job's rows
are replaced by one row with a full entry per task. So the log of a job stays
within a small multiple of its size, and replaying it in ``seq`` order rebuilds it.

Large values: a ``doc``, ``data`` or ``task_log.data`` value of 64 KiB or more
(a job with a big argument, a task with a big result) is written to a file in
``<state>-values/<job id>/`` beside the database, and the column holds an empty
blob that points there. SQLite writes such a value about 15 times slower than a
plain file (WAL frame per page, then the checkpoint). The file is complete before
the commit that refers to it and is removed after the commit that drops it;
directories of jobs the database does not know are removed at start.

The daemon reads unfinished jobs at start and keeps them in memory; of a finished job it keeps
an index entry and reads the rest by key when asked (:meth:`StateStore.load_job`,
:meth:`StateStore.summaries`). So the tables carry no index beyond their keys: an index is pages
more to write per commit. Job ids are never reused:
the next id is one past the highest job id stored, or past ``meta.next_job_id``, which is
written only when jobs are deleted (the highest may be among them), not on every submit.

Durability: ``synchronous=NORMAL`` in WAL mode, so a committed transaction
survives a crash of the daemon (``kill -9``) at the cost of no fsync per
commit; ``sync = "full"`` in the config adds the fsync (of large-value files
too) and survives power loss.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from procpoold.core.jobs import FULL_ENTRY, FinishedJob

log = logging.getLogger("procpoold.store")

SCHEMA_VERSION = 4


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
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
}

#: The states of a finished job (rows in these states are read on demand, not at start).
FINISHED_STATES = ("completed", "failed", "cancelled")
_FINISHED_SQL = "('completed', 'failed', 'cancelled')"


#: Values this large or larger go to files beside the database (see the module's docstring).
LARGE_VALUE = 64 * 1024


class LargeValues:
    """Files for values of LARGE_VALUE bytes or more: ``<root>/<job id>/<name>``."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync

    def put(self, job_id: str, name: str, data: bytes) -> bytes:
        """What the column holds: ``data`` itself, or b"" once it is in a file."""
        if len(data) < LARGE_VALUE:
            return data
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / name
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.fsync:
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return b""

    def get(self, job_id: str, name: str, column: bytes) -> bytes:
        if column:
            return column
        try:
            return (self.root / job_id / name).read_bytes()
        except OSError as exc:
            raise ValueError(f"its large value file {self.root / job_id / name} is missing ({exc})") from None

    def drop_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def drop_logs(self, job_id: str, before: int) -> None:
        """Remove the job's task log files with a sequence number below ``before``."""
        try:
            names = os.listdir(self.root / job_id)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("log-") and int(name[4:]) < before:
                (self.root / job_id / name).unlink(missing_ok=True)

    def sweep(self, known: set[str]) -> None:
        """Remove the folders of jobs the database does not have (left by a crash or a delete)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name not in known:
                shutil.rmtree(self.root / name, ignore_errors=True)


class StoredJob(NamedTuple):
    """A job as :meth:`StateStore.load_jobs` reads it."""

    id: str
    created_at: float
    doc: dict[str, Any]  # as submitted
    data: dict[str, Any]  # Job.dump()
    entries: list[Any]  # its task log, in order
    error: str | None = None  # why it cannot be read (then the rest is empty)


class StoreError(Exception):
    """The state file cannot be used; the message names it and the way out (``hint``, if any)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    hint: str | None = None


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


class StoreFailure(BaseException):
    """A write to the state file failed while running: the daemon must stop.

    What was committed is safe and a restart resumes from it; going on would acknowledge
    work that is not durable. A BaseException, so that no request handler turns it into an
    error reply and carries on: it unwinds the loop and the daemon exits non-zero (and
    systemd restarts it). ``hint`` says what to do, when that is known (a full disk).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _shut_out_others(folder: Path) -> None:
    """Tasks run as their users: the store's folder must not let others in (job environments
    and every job's data are in it), whatever mode it was created with (a service's state
    folder is 0755 by default). Only a folder this process owns is changed."""
    st = folder.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o007:
        os.chmod(folder, st.st_mode & 0o7770)


class StateStore:
    """One SQLite database file under the state directory."""

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
        self.values.sweep({str(r[0]) for r in self.db.execute("SELECT id FROM jobs")})
        self._dropped_logs: dict[str, int] = {}  # job id -> first seq kept, for after the commit
        #: why writing failed (then nothing more is written; see StoreFailure)
        self.failed: str | None = None
        self._new_jobs: list[tuple[Any, ...]] = []  # rows for INSERT INTO jobs
        #: one past the highest job id handed out (kept in meta when jobs are deleted)
        self._next_job_id = self.max_job_id() + 1
        self._dirty_jobs: dict[str, Any] = {}
        self._appends: dict[str, list[Any]] = {}  # job id -> task entries for the next row
        self._snapshots: dict[str, list[Any]] = {}  # job id -> full entries replacing its rows
        self._next_seq: dict[str, int] = {}
        #: task entries in each job's log since its last snapshot (the scheduler compacts by it)
        self.log_entries: dict[str, int] = {}
        self.commits = 0

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
        while version < SCHEMA_VERSION:
            log.info("migrating state file %s from schema %d to %d", self.path, version, version + 1)
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

    # -- writes -------------------------------------------------------------------------------

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
        self._new_jobs.append(
            (
                int(job_id),
                key,
                name,
                state,
                created_at,
                self.values.put(job_id, "doc", _pack(doc)),
                self.values.put(job_id, "job", _pack(data)),
                uid,
            )
        )
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
        return bool(self._new_jobs or self._dirty_jobs or self._appends or self._snapshots)

    def flush(self) -> None:
        """Write every queued change in one transaction (group commit).

        Raises :class:`StoreFailure` when the write fails; the store then writes nothing more.
        """
        if not self.pending or self.failed is not None:
            return
        self._write(self._flush_locked)
        for job_id, before in self._dropped_logs.items():
            self.values.drop_logs(job_id, before)
        self._dropped_logs.clear()

    def _flush_locked(self) -> None:
        if self._new_jobs:
            self.db.executemany(
                "INSERT INTO jobs(id, key, name, state, created_at, finished_at, doc, data, uid) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                self._new_jobs,
            )
            self._new_jobs.clear()
        if self._dirty_jobs:
            self.db.executemany(
                "UPDATE jobs SET state=?, finished_at=?, data=?, summary=coalesce(?, summary),"
                " uid=coalesce(?, uid) WHERE id=?",
                [
                    (
                        st,
                        fin,
                        self.values.put(jid, "job", _pack(d)),
                        None if summary is None else _pack(summary),
                        uid,
                        int(jid),
                    )
                    for jid, (st, fin, d, summary, uid) in self._dirty_jobs.items()
                ],
            )
            self._dirty_jobs.clear()
        rows: list[tuple[int, int, bytes]] = []
        if self._snapshots:
            self.db.executemany(
                "DELETE FROM task_log WHERE job_id=?", [(int(jid),) for jid in self._snapshots]
            )
            for job_id, entries in self._snapshots.items():
                seq = self._seq(job_id)
                rows.append((int(job_id), seq, self.values.put(job_id, f"log-{seq}", _pack(entries))))
                self.log_entries[job_id] = len(entries)
                self._dropped_logs[job_id] = seq
            self._snapshots.clear()
        for job_id, entries in self._appends.items():
            seq = self._seq(job_id)
            rows.append((int(job_id), seq, self.values.put(job_id, f"log-{seq}", _pack(entries))))
            self.log_entries[job_id] = self.log_entries.get(job_id, 0) + len(entries)
        self._appends.clear()
        if rows:
            self.db.executemany("INSERT INTO task_log(job_id, seq, data) VALUES (?, ?, ?)", rows)

    def _write(self, work: Callable[[], object]) -> None:
        """Run ``work`` in one committed transaction; a failure is a :class:`StoreFailure`."""
        try:
            self.db.execute("BEGIN")
            try:
                work()
                self.db.execute("COMMIT")
            except BaseException:
                _rollback(self.db)
                raise
        except (sqlite3.Error, OSError) as exc:
            full = disk_full(exc)
            what = "the disk is full: " if full else ""
            self.failed = f"cannot write the state file {self.path}: {what}{exc}"
            raise StoreFailure(self.failed, full_disk_hint(self.path) if full else None) from exc
        self.commits += 1

    def _seq(self, job_id: str) -> int:
        seq = self._next_seq.get(job_id, 0)
        self._next_seq[job_id] = seq + 1
        return seq

    def delete_jobs(self, job_ids: list[str]) -> None:
        """Remove jobs (and their task logs) at once."""
        if not job_ids or self.failed is not None:
            return

        def delete() -> None:
            self.db.executemany("DELETE FROM jobs WHERE id=?", [(int(j),) for j in job_ids])
            # The highest id handed out may be among them: keep it, so that no id is reused.
            self.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_job_id', ?)", (str(self._next_job_id),)
            )

        self._write(delete)
        for j in job_ids:
            self.values.drop_job(j)
            self._dirty_jobs.pop(j, None)
            self._appends.pop(j, None)
            self._snapshots.pop(j, None)
            self.forget(j)

    def forget(self, job_id: str) -> None:
        """Drop what is kept in memory about a job that will not be written again (it finished)."""
        self._next_seq.pop(job_id, None)
        self.log_entries.pop(job_id, None)

    # -- reads --------------------------------------------------------------------------------

    def max_job_id(self) -> int:
        """The highest job id ever handed out (ids are never reused, even after pruning).

        Ids are handed out in order and a job is stored before its id is acknowledged, so the
        highest stored id is the answer unless the newest jobs were deleted since; deleting
        records the next id in ``meta`` (see :meth:`delete_jobs`).
        """
        row = self.db.execute("SELECT value FROM meta WHERE key='next_job_id'").fetchone()
        stored = int(self.db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])
        return max(stored, int(row[0]) - 1 if row else 0)

    def finished_index(self) -> Iterator[FinishedJob]:
        """Every finished job that has its summary, in no particular order (read at start)."""
        for job_id, key, state, uid, created_at, finished_at in self.db.execute(
            "SELECT id, key, state, uid, created_at, finished_at FROM jobs"
            f" WHERE state IN {_FINISHED_SQL} AND summary IS NOT NULL"
        ):
            yield FinishedJob(str(job_id), key, state, uid, float(created_at), float(finished_at or 0.0))

    def summaries(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored summaries of these jobs (finished ones; others have none)."""
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
        row = self.db.execute("SELECT key, uid FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def load_jobs(self, unfinished_only: bool = False) -> Iterator[StoredJob]:
        """Every stored job, oldest first; one that cannot be read comes with its ``error``.

        ``unfinished_only``: the jobs that have not finished, and finished ones without their
        summary (rows from before schema 4); the others are read on demand (:meth:`load_job`).
        Two queries in all (jobs, then every log row in order), not one per job.
        """
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
        try:
            self.flush()
        finally:
            self.db.close()

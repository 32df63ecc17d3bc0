"""SQLite state store in WAL mode, with a schema version and numbered migrations.

Runs on the daemon's loop thread (one connection, no sharing). Rows::

    meta(key PRIMARY KEY, value)                   schema_version, created_by
    jobs(id INTEGER PRIMARY KEY, key UNIQUE, name, state, created_at, finished_at,
         doc BLOB, data BLOB)                      doc: the job as submitted (msgpack)
                                                   data: Job.dump() (msgpack)
    tasks(job_id, idx, state, data BLOB,           data: Job.dump_task() (msgpack); a task has
          PRIMARY KEY(job_id, idx))                 no row until it first changes (pending)

Durability: ``synchronous=NORMAL`` in WAL mode, so a committed transaction
survives a crash of the daemon (``kill -9``) at the cost of no fsync per
commit; ``sync = "full"`` in the config adds the fsync and survives power loss.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger("procpoold.store")

SCHEMA_VERSION = 1

#: Numbered migrations: MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: dict[int, str] = {
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
}

FINISHED = ("completed", "failed", "cancelled")


class StoreError(Exception):
    """The state file cannot be used; the message names it and the way out."""


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class StateStore:
    """One SQLite database file under the state directory."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = path
        way_out = (
            f"move it aside (mv {path} {path}.broken) to start with an empty store, "
            "or restore it from a backup"
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA foreign_keys=ON")
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            version = self._version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state file {path} cannot be opened: {exc}; {way_out}") from None
        except OSError as exc:
            raise StoreError(f"state file {path} cannot be opened: {exc.strerror}") from None
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(
                f"state file {path} has schema version {version}, newer than this procpoold knows "
                f"({SCHEMA_VERSION}); run the newer procpoold, or {way_out}"
            )
        try:
            self._migrate(version)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(
                f"state file {path} cannot be migrated from version {version}: {exc}; {way_out}"
            ) from None
        self._dirty_jobs: dict[str, Any] = {}
        self._dirty_tasks: dict[tuple[str, int], Any] = {}
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

    def _migrate(self, version: int) -> None:
        while version < SCHEMA_VERSION:
            log.info("migrating state file %s from schema %d to %d", self.path, version, version + 1)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(version + 1),),
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            version += 1

    # -- writes -------------------------------------------------------------------------------

    def insert_job(
        self,
        job_id: str,
        key: str | None,
        name: str,
        state: str,
        created_at: float,
        doc: dict[str, Any],
        data: dict[str, Any],
    ) -> None:
        """Commit a new job at once (a job is durable before submit replies)."""
        self.db.execute("BEGIN")
        try:
            self._flush_locked()
            self.db.execute(
                "INSERT INTO jobs(id, key, name, state, created_at, finished_at, doc, data) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                (int(job_id), key, name, state, created_at, _pack(doc), _pack(data)),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_job_id', ?)", (str(int(job_id) + 1),)
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.commits += 1

    def job_changed(self, job_id: str, state: str, finished_at: float | None, data: dict[str, Any]) -> None:
        """Queue a job update for the next :meth:`flush`."""
        self._dirty_jobs[job_id] = (state, finished_at, data)

    def task_changed(self, job_id: str, index: int, state: str, data: dict[str, Any]) -> None:
        """Queue a task update for the next :meth:`flush`."""
        self._dirty_tasks[(job_id, index)] = (state, data)

    @property
    def pending(self) -> bool:
        return bool(self._dirty_jobs or self._dirty_tasks)

    def flush(self) -> None:
        """Write every queued change in one transaction (group commit)."""
        if not self.pending:
            return
        self.db.execute("BEGIN")
        try:
            self._flush_locked()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.commits += 1

    def _flush_locked(self) -> None:
        if self._dirty_jobs:
            self.db.executemany(
                "UPDATE jobs SET state=?, finished_at=?, data=? WHERE id=?",
                [(st, fin, _pack(d), int(jid)) for jid, (st, fin, d) in self._dirty_jobs.items()],
            )
            self._dirty_jobs.clear()
        if self._dirty_tasks:
            self.db.executemany(
                "INSERT INTO tasks(job_id, idx, state, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(job_id, idx) DO UPDATE SET state=excluded.state, data=excluded.data",
                [(int(jid), i, st, _pack(d)) for (jid, i), (st, d) in self._dirty_tasks.items()],
            )
            self._dirty_tasks.clear()

    def delete_jobs(self, job_ids: list[str]) -> None:
        """Remove jobs (and their tasks) at once."""
        if not job_ids:
            return
        self.db.execute("BEGIN")
        try:
            self.db.executemany("DELETE FROM jobs WHERE id=?", [(int(j),) for j in job_ids])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for j in job_ids:
            self._dirty_jobs.pop(j, None)
        self._dirty_tasks = {k: v for k, v in self._dirty_tasks.items() if k[0] not in set(job_ids)}

    # -- reads --------------------------------------------------------------------------------

    def max_job_id(self) -> int:
        """The highest job id ever handed out (ids are never reused, even after pruning)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='next_job_id'").fetchone()
        stored = int(self.db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])
        return max(stored, int(row[0]) - 1 if row else 0)

    def load_jobs(
        self,
    ) -> Iterator[tuple[str, float, dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]]]:
        """Every stored job: (id, created_at, doc, data, {task index: data}), oldest first.

        Two queries in all (jobs, then every task row in job order), not one per job.
        """
        tasks: dict[int, dict[int, dict[str, Any]]] = {}
        for job_id, idx, tdata in self.db.execute("SELECT job_id, idx, data FROM tasks ORDER BY job_id"):
            tasks.setdefault(job_id, {})[idx] = _unpack(tdata)
        for job_id, created_at, doc, data in self.db.execute(
            "SELECT id, created_at, doc, data FROM jobs ORDER BY id"
        ).fetchall():
            yield str(job_id), float(created_at), _unpack(doc), _unpack(data), tasks.pop(job_id, {})

    def close(self) -> None:
        self.flush()
        self.db.close()

"""What the scheduler knows of the state store: a Protocol, the rows it reads back, its errors.

Imports no SQLite and no file code, so that the scheduler (and the core) can name the store's
interface without pulling in its implementation; only the composition root (the supervisor)
constructs the concrete store (:class:`procpoold.store.sqlite.StateStore`).

Every method runs on the daemon's loop thread. Writes are queued and made durable together by
:meth:`Store.flush` (one record of the write-ahead log per call: group commit); reads see every
change flushed before them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

from procpoold.core.jobs import FinishedJob


class StoredJob(NamedTuple):
    """A job as :meth:`Store.load_jobs` and :meth:`Store.load_job` read it."""

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


class StoreFailure(BaseException):
    """A write to the state failed while running: the daemon must stop.

    What was made durable is safe and a restart resumes from it; going on would acknowledge
    work that is not durable. A BaseException, so that no request handler turns it into an
    error reply and carries on: it unwinds the loop and the daemon exits non-zero (and
    systemd restarts it). ``hint`` says what to do, when that is known (a full disk).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Store(Protocol):
    """The durable state store as the scheduler uses it (see ``docs/state.md``).

    Task entries (:meth:`append_tasks`, :meth:`snapshot_tasks`) are opaque to the store: any
    msgpack-able values, handed back in order by :meth:`load_jobs` and :meth:`load_job`.
    """

    #: names this store's daemon to the commands it starts (``PROCPOOL_DAEMON_ID``)
    daemon_id: str
    #: task entries in each job's log since its last snapshot (the scheduler snapshots by it)
    log_entries: dict[str, int]
    #: group commits made (records written)
    commits: int
    #: the journal's lifecycle events the log held at start: (first seq, last seq, packed record)
    logged_events: list[tuple[int, int, bytes]]

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
        """Queue a new job for the next :meth:`flush` (written before any other change of it)."""

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

    def append_tasks(self, job_id: str, entries: list[Any]) -> None:
        """Queue task entries to append to the job's log at the next :meth:`flush`."""

    def snapshot_tasks(self, job_id: str, entries: list[Any]) -> None:
        """Queue entries that replace the job's whole task log at the next :meth:`flush`."""

    def log_events(self, first: int, last: int, record: bytes) -> None:
        """Queue the journal's packed lifecycle events for the next :meth:`flush` (kept, not applied)."""

    def events_written(self, seq: int) -> None:
        """The journal has written every record up to ``seq`` (log segments may go)."""

    @property
    def pending(self) -> bool:
        """Whether anything is queued for the next :meth:`flush`."""

    def flush(self) -> None:
        """Make everything queued durable at once; raises :class:`StoreFailure` if it cannot."""

    def delete_jobs(self, job_ids: list[str]) -> None:
        """Remove jobs (and their task logs), durably, before returning."""

    def forget(self, job_id: str) -> None:
        """Drop what is kept in memory about a job that will not be written again."""

    def reopen(self, job_id: str) -> None:
        """A finished job will be written again (``procctl retry``): pick up its task log's
        numbering where it was left (see :meth:`forget`)."""

    def max_job_id(self) -> int:
        """The highest job id ever handed out (ids are never reused)."""

    def finished_index(self) -> Iterator[FinishedJob]:
        """Every finished job that has its summary (read at start)."""

    def summaries(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored summaries of these jobs (finished ones; others have none)."""

    def load_job(self, job_id: str) -> StoredJob | None:
        """One stored job, or None if there is none."""

    def key_and_uid(self, job_id: str) -> tuple[str | None, int | None]:
        """A job's (scoped) idempotency key and submitter uid."""

    def load_jobs(self, unfinished_only: bool = False) -> Iterator[StoredJob]:
        """Every stored job (or the unfinished ones), oldest first."""

    def close(self) -> None:
        """Flush, apply everything, and release the files."""

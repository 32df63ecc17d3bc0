"""Reading a job's or task's records from journald (client side), with ``systemd.journal.Reader``.

The daemon's ``logs`` reply says which fields to match (``PROCPOOL_JOB_ID``, ``PROCPOOL_TASK_ID``,
``PROCPOOL_ATTEMPT``) and since when; this module turns journal entries into the same plain
records the daemon's own tail returns, so the CLI prints both alike.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

#: Fields copied from a journal entry into a record's ``fields`` (for ``--json``).
_KEPT_PREFIXES = ("PROCPOOL_", "CODE_", "MESSAGE_ID", "LOGGER", "PRIORITY", "SYSLOG_IDENTIFIER", "_PID")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, _dt.datetime):
        return str(value.timestamp())
    return str(value)


def record_from_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A journal entry (as ``Reader`` returns it) as a log record."""
    when = entry.get("__REALTIME_TIMESTAMP")
    ts = when.timestamp() if isinstance(when, _dt.datetime) else 0.0
    attempt = entry.get("PROCPOOL_ATTEMPT", 0)
    try:
        attempt_no = int(attempt)
    except (TypeError, ValueError):
        attempt_no = 0
    prio = entry.get("PRIORITY", 6)
    return {
        "ts": ts,
        "priority": int(prio) if str(prio).isdigit() else 6,
        "stream": _text(entry.get("PROCPOOL_STREAM", "daemon")),
        "attempt": attempt_no,
        "task_id": _text(entry["PROCPOOL_TASK_ID"]) if "PROCPOOL_TASK_ID" in entry else None,
        "message": _text(entry.get("MESSAGE", "")),
        "fields": {k: _text(v) for k, v in entry.items() if k.startswith(_KEPT_PREFIXES)},
    }


class JournalLog:
    """The entries matching a ``logs`` reply, oldest first, then new ones as they arrive."""

    def __init__(
        self, match: Mapping[str, str], since: float | None = None, directory: str | None = None
    ) -> None:
        import importlib

        # Imported here: only journal-mode ``procctl logs`` needs it.
        journal = importlib.import_module("systemd.journal")

        self._journal = journal
        self.reader = journal.Reader(path=directory) if directory else journal.Reader()
        for key, value in match.items():
            self.reader.add_match(**{key: value})
        self.since = since

    def readable(self) -> bool:
        """False when no journal file could be opened (no permission, or no journal here)."""
        try:
            return int(self.reader.get_usage()) > 0
        except OSError:
            return False

    def last(self, lines: int | None) -> list[dict[str, Any]]:
        """The last ``lines`` matching entries (all with None), oldest first; leaves the reader after them."""
        out: list[dict[str, Any]] = []
        if lines is None:
            if self.since is not None:
                self.reader.seek_realtime(_dt.datetime.fromtimestamp(self.since))
            else:
                self.reader.seek_head()
            for entry in self.reader:
                out.append(record_from_entry(entry))
            return out
        self.reader.seek_tail()
        while len(out) < lines:
            entry = self.reader.get_previous()
            if not entry:
                break
            record = record_from_entry(entry)
            if self.since is not None and record["ts"] < self.since:
                break
            out.append(record)
        out.reverse()
        self.reader.seek_tail()
        self.reader.get_previous()  # position on the newest entry: get_next() returns what follows
        return out

    def follow(self, timeout: float) -> list[dict[str, Any]]:
        """Entries that arrived since the last read, waiting up to ``timeout`` seconds if none did."""
        out = self._drain()
        if not out:
            self.reader.wait(timeout)
            out = self._drain()
        return out

    def _drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            entry = self.reader.get_next()
            if not entry:
                return out
            out.append(record_from_entry(entry))

    def close(self) -> None:
        self.reader.close()

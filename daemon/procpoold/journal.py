"""The daemon's root logger: journald under systemd, readable stderr lines otherwise.

``setup_logging`` installs exactly one handler on the root logger. Under
systemd (the journal socket exists) records go to journald through
systemd-python with ``SYSLOG_IDENTIFIER=procpoold``; elsewhere (a developer's
terminal, the tests) they go to stderr as one line each. ``systemd.journal.send``
silently drops messages when no journald listens, hence the explicit check.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

JOURNAL_SOCKET = "/run/systemd/journal/socket"

Target = Literal["auto", "journal", "stderr"]


def journal_available() -> bool:
    """True when a journald listens for native-protocol records."""
    return os.path.exists(JOURNAL_SOCKET)


class StderrFormatter(logging.Formatter):
    """``LEVEL logger: message`` plus any ``PROCPOOL_*`` fields, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        extra = getattr(record, "journal_fields", None)
        if isinstance(extra, dict) and extra:
            line += " [" + " ".join(f"{k}={v}" for k, v in sorted(extra.items())) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JournalHandler(logging.Handler):
    """Send records to journald with structured fields."""

    def __init__(self) -> None:
        super().__init__()
        import systemd.journal  # imported lazily: only the daemon under systemd needs it

        self._send = systemd.journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields: dict[str, Any] = {
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": "procpoold",
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,  # systemd-python formats it with {:d}
                "CODE_FUNC": record.funcName,
            }
            extra = getattr(record, "journal_fields", None)
            if isinstance(extra, dict):
                fields.update({k: str(v) for k, v in extra.items()})
            self._send(message, **fields)
        except Exception:
            self.handleError(record)


def _priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def setup_logging(level: str, target: Target = "auto") -> str:
    """Install the root handler; returns the target chosen (``journal`` or ``stderr``)."""
    chosen = target
    if chosen == "auto":
        chosen = "journal" if journal_available() and os.environ.get("JOURNAL_STREAM") else "stderr"
    handler: logging.Handler
    if chosen == "journal":
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return chosen

"""Where the forwarder writes records: journald's native protocol, or readable lines on stderr.

An :data:`Entry` is one record ready to write: its priority, message, the fields it shares with
others (a :class:`FieldSet`, encoded once for both targets), its own extra fields, and the logger
name the stderr line shows. Senders run in the forwarder process (or, with no forwarder running,
in the daemon itself: before it starts and after it stops).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Mapping
from typing import IO, Protocol

from procpoold.journal.encoding import LEVEL_NAMES, SYSLOG_IDENTIFIER, encode_fields, field_name
from procpoold.logconfig import Target

JOURNAL_SOCKET = "/run/systemd/journal/socket"


class FieldSet:
    """Fields shared by many records (a task's attempt, per stream), encoded once for both targets."""

    __slots__ = ("_more", "_text", "_wire", "fields")

    def __init__(self, fields: Mapping[str, str], *, clean: bool = False, identifier: bool = True) -> None:
        """``clean``: the names are journald field names already (from a decoded record).
        ``identifier``: add ``SYSLOG_IDENTIFIER`` (not for a set of extra fields)."""
        self.fields = dict(fields) if clean else {field_name(k): str(v) for k, v in fields.items()}
        if identifier:
            self.fields.setdefault("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER)
        self._wire: bytes | None = None
        self._text: str | None = None
        self._more: str | None = None

    @property
    def more(self) -> str:
        """As extra fields of a stderr line: `` K=V K=V`` (the shown ones, sorted; or empty)."""
        if self._more is None:
            shown = sorted((k, v) for k, v in self.fields.items() if k not in NOT_SHOWN)
            self._more = "".join(f" {k}={v}" for k, v in shown)
        return self._more

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = encode_fields(self.fields.items())
        return self._wire

    @property
    def text(self) -> str:
        if self._text is None:
            shown = [f"{k}={v}" for k, v in sorted(self.fields.items()) if k not in NOT_SHOWN]
            self._text = (" [" + " ".join(shown) + "]") if shown else ""
        return self._text


#: Fields the stderr lines leave out (the level shows PRIORITY; the rest is noise on a terminal).
NOT_SHOWN = frozenset({"SYSLOG_IDENTIFIER", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "LOGGER"})

_LABELS = {prio: f"{name:<7}" for prio, name in LEVEL_NAMES.items()}

# One record ready to write: (priority, message, shared fields, extra fields or None, logger name);
# the extra fields are a FieldSet when many records share them (a lifecycle event's code site).
Entry = tuple[int, str, FieldSet, "FieldSet | Mapping[str, str] | None", str]


def entry_fields(entry: Entry) -> dict[str, str]:
    """All fields of an entry as journald receives them (for tests and the stderr fallback)."""
    prio, message, fset, extra, _logger = entry
    fields = {"MESSAGE": message, "PRIORITY": str(prio), **fset.fields}
    if isinstance(extra, FieldSet):
        fields.update(extra.fields)
    elif extra:
        fields.update({field_name(k): str(v) for k, v in extra.items()})
    return fields


class Sender(Protocol):
    """Writes a batch of entries somewhere."""

    target: str

    def send(self, batch: list[Entry]) -> None: ...


class StderrSender:
    """``LEVEL   logger: message [FIELD=value ...]``, one line per record, one write per batch."""

    target = "stderr"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    @staticmethod
    def format(entry: Entry) -> str:
        prio, message, fset, extra, logger = entry
        text = fset.text
        if isinstance(extra, FieldSet):
            more = extra.more
            if more:
                text = f"{text[:-1]}{more}]" if text else f" [{more[1:]}]"
        elif extra:
            shown = sorted(
                (field_name(k), str(v)) for k, v in extra.items() if field_name(k) not in NOT_SHOWN
            )
            if shown:
                more = " ".join(f"{k}={v}" for k, v in shown)
                text = f"{text[:-1]} {more}]" if text else f" [{more}]"
        return f"{_LABELS.get(prio, 'INFO   ')} {logger}: {message}{text}\n"

    def send(self, batch: list[Entry]) -> None:
        stream = self._stream or sys.stderr
        stream.write("".join([self.format(e) for e in batch]))
        stream.flush()


class JournalSender:
    """journald's native protocol on a datagram socket of our own.

    Records too big for one datagram travel in a sealed memfd, as libsystemd does. ``sendto``
    blocks while journald's queue is full: that slows the forwarder, never the daemon's loop.
    """

    target = "journal"

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)

    @staticmethod
    def encode(entry: Entry) -> bytes:
        prio, message, fset, extra, _logger = entry
        head = encode_fields((("MESSAGE", message), ("PRIORITY", str(prio))))
        if isinstance(extra, FieldSet):
            tail = extra.wire
        else:
            tail = encode_fields((k, str(v)) for k, v in extra.items()) if extra else b""
        return head + fset.wire + tail

    def send(self, batch: list[Entry]) -> None:
        for entry in batch:
            data = self.encode(entry)
            try:
                self._sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
                    raise
                self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-record", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
            self._sock.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    """True when a journald listens on ``path`` (an empty datagram is a no-op for journald)."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def choose_target(target: Target, path: str = JOURNAL_SOCKET) -> str:
    """``auto``: journal for a systemd service with a journal; stderr for a terminal or a test."""
    if target != "auto":
        return target
    service = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    return "journal" if service and journal_available(path) else "stderr"


def make_sender(target: str, path: str = JOURNAL_SOCKET) -> Sender:
    """The sender of a chosen target (``journal`` or ``stderr``)."""
    return JournalSender(path) if target == "journal" else StderrSender()

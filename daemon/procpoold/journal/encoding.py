"""What a journal record is made of: MESSAGE_IDs, priorities, journald's field encoding, and the
compact binary records the daemon hands to the journal forwarder through a shared-memory ring.

Both sides import this module: the daemon packs (:mod:`procpoold.journal.sink`,
:mod:`procpoold.journal.handle`), the forwarder unpacks (:mod:`procpoold.journal.forwarder`). It
imports nothing else of the daemon.

Ring records (little-endian; the first byte is the kind):

=========  ======================================================================================
kind       layout
=========  ======================================================================================
JOB        ``<BxxxI`` job key, then the job's fields (journald-encoded: JOB_ID, JOB_NAME, USER...)
TASK       ``<BxxxII`` task key, job key, then the task's fields (TASK_ID, TASK_NAME)
SITE       ``<BxH`` site id, then code-location fields (CODE_FILE, CODE_LINE, CODE_FUNC, LOGGER)
LINE       ``<BBBxIIIIQd`` prio, stream, task key, attempt, worker pid, message length, seq, time;
           then the message (UTF-8) and extra fields a worker gave (journald-encoded, may be empty)
EVENT      ``<BBBxIIIHxxQd`` event code, prio, task key, attempt, worker pid, site, seq, time; then
           a text (a reason or an error message; empty for started and completed)
RECORD     ``<BBHIQd`` prio, logger length, message length, seq, time; then logger, message and
           every field (journald-encoded): the daemon's own records, and rare task records
FORGET     ``<BxxxI`` job key: the forwarder drops the job's and its tasks' tables
STOP       ``<B``: write everything before it, acknowledge, exit
=========  ======================================================================================

Names travel once (a JOB and a TASK record per job and per task, before the first record that
uses them); an attempt's lines and lifecycle events carry only integer keys. Every record that
reaches journald carries a ``seq``, in the order the daemon produced them: the forwarder
acknowledges the highest one it has written (``ACK``: ``<QQQQ`` seq, written, errors, fallbacks,
counts since the previous acknowledgement), which is also the seam for replaying a durable log of
events after a crash (records above the last acknowledged ``seq`` are the ones not yet written).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterable, Iterator
from typing import Final

SYSLOG_IDENTIFIER: Final = "procpoold"
#: Longest message sent as one record (characters); longer ones are split into several records.
MAX_MESSAGE: Final = 16 * 1024


class MessageId:
    """``MESSAGE_ID`` of each lifecycle event (``journalctl MESSAGE_ID=<id>`` finds them all)."""

    JOB_SUBMITTED = "43fda09ad12645e083f78f4505cd7e23"
    JOB_FINISHED = "f86bc8c11a0e44ab8beb0fd928f496ad"
    TASK_STARTED = "a62e7c6239454af496320d943dbd884a"
    TASK_COMPLETED = "356fdfae06c046729a61b9365db4f10a"
    TASK_FAILED = "a0f41f512d3849a4a3ce90af32e1b3f2"
    TASK_RETRIED = "d76b0238c49946bf86cc7bd501de228a"
    TASK_TIMED_OUT = "e169234f15bd454d82ecdb99cf143275"
    TASK_CANCELLED = "a5d8c777b9904ea3b8dc1a115fa5d6ff"
    TASK_SKIPPED = "cbda29f95fe84a71b3bbeb0f5118519f"
    WORKER_SPAWNED = "30e2c150721741e48c4d6ad589f6aab4"
    WORKER_DIED = "745dde1e386340a99e5d88d367879dda"
    WORKER_REPLACED = "896aa54975264c90a373cfd574a35ceb"
    DAEMON_READY = "b7e4a2f0c41d4a0e9a6f2d8c3e5b1a70"
    DAEMON_STOPPING = "d443cedd6cb14258a645e56a8f406e64"
    LOG_DROPPED = "0b2dee34cd1b4b10b1c0689c56c5793a"
    LOG_STALLED = "ede317794a464965af7bb52e3eceb131"


def message_ids() -> dict[str, str]:
    """Event name -> MESSAGE_ID, for documentation and tests."""
    return {k.lower(): v for k, v in vars(MessageId).items() if k.isupper()}


# -- priorities and field encoding ----------------------------------------------------------------


def priority(levelno: int) -> int:
    """The syslog priority journald expects for a ``logging`` level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


PRIORITIES: Final = {
    level: priority(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
LEVEL_NAMES: Final = {2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "NOTICE", 6: "INFO", 7: "DEBUG"}


@functools.lru_cache(maxsize=4096)
def field_name(name: str) -> str:
    """journald field names: upper-case letters, digits and underscores, not starting with '_'.

    Cached: the same few dozen names are checked for every record that carries free-form fields.
    """
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name.upper()).lstrip("_")
    return clean or "FIELD"


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """journald's native protocol: ``NAME=value\\n``, or a length-prefixed value if it has a newline."""
    out = bytearray()
    for name, value in fields:
        key = field_name(name).encode()
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def decode_fields(data: bytes | memoryview) -> Iterator[tuple[str, str]]:
    """The inverse of :func:`encode_fields` (raises ValueError on a malformed encoding)."""
    data = bytes(data)
    if data.endswith(b"\n"):
        lines = data[:-1].split(b"\n")
        if all(b"=" in line for line in lines):  # the common case: no value with a newline
            for line in lines:
                name, _, value = line.partition(b"=")
                yield name.decode(), value.decode("utf-8", "replace")
            return
    pos, end = 0, len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ValueError("a field without its newline")
        eq = data.find(b"=", pos, nl)
        if eq >= 0:
            yield data[pos:eq].decode(), data[eq + 1 : nl].decode("utf-8", "replace")
            pos = nl + 1
            continue
        key = data[pos:nl].decode()
        if nl + 9 > end:
            raise ValueError(f"field {key[:40]!r} lacks its length")
        (size,) = struct.unpack_from("<Q", data, nl + 1)
        start = nl + 9
        if start + size + 1 > end or data[start + size : start + size + 1] != b"\n":
            raise ValueError(f"field {key[:40]!r} overruns the record")
        yield key, data[start : start + size].decode("utf-8", "replace")
        pos = start + size + 1


# -- ring records -----------------------------------------------------------------------------

K_JOB: Final = 1
K_TASK: Final = 2
K_SITE: Final = 3
K_LINE: Final = 4
K_EVENT: Final = 5
K_RECORD: Final = 6
K_FORGET: Final = 7
K_STOP: Final = 8

JOB = struct.Struct("<BxxxI")
TASK = struct.Struct("<BxxxII")
SITE = struct.Struct("<BxH")
LINE = struct.Struct("<BBBxIIIIQd")
EVENT = struct.Struct("<BBBxIIIHxxQd")
RECORD = struct.Struct("<BBHIQd")
FORGET = struct.Struct("<BxxxI")
STOP = bytes([K_STOP])
ACK = struct.Struct("<QQQQ")

#: Streams of a LINE record, by code (the index).
STREAMS: Final = ("log", "stdout", "stderr", "daemon")
STREAM_CODES: Final = {name: code for code, name in enumerate(STREAMS)}

# Lifecycle events of an attempt (the code of an EVENT record).
STARTED: Final = 1
COMPLETED: Final = 2
SKIPPED: Final = 3
CANCELLED: Final = 4
FAILED: Final = 5
TIMED_OUT: Final = 6

#: event code -> (MESSAGE_ID, priority)
EVENTS: Final = {
    STARTED: (MessageId.TASK_STARTED, 6),
    COMPLETED: (MessageId.TASK_COMPLETED, 6),
    SKIPPED: (MessageId.TASK_SKIPPED, 6),
    CANCELLED: (MessageId.TASK_CANCELLED, 6),
    FAILED: (MessageId.TASK_FAILED, 4),
    TIMED_OUT: (MessageId.TASK_TIMED_OUT, 4),
}
#: a task's final state -> the event code that reports it
FINAL_EVENTS: Final = {
    "completed": COMPLETED,
    "skipped": SKIPPED,
    "cancelled": CANCELLED,
    "failed": FAILED,
    "timeout": TIMED_OUT,
}
_STATE_WORDS: Final = {SKIPPED: "skipped", CANCELLED: "cancelled", FAILED: "failed", TIMED_OUT: "timeout"}


def event_message(code: int, task_name: str, attempt: int, text: str) -> str:
    """The MESSAGE of a lifecycle event (the same words whichever side writes it)."""
    if code == STARTED:
        return f'task "{task_name}" attempt {attempt} starting'
    if code == COMPLETED:
        return f'task "{task_name}" completed'
    state = _STATE_WORDS.get(code, "ended")
    if code in (SKIPPED, CANCELLED):
        return f'task "{task_name}" {state}: {text}'
    return f'task "{task_name}" {state} after {attempt} attempt(s): {text}'


def job_record(key: int, fields: Iterable[tuple[str, str]]) -> bytes:
    return JOB.pack(K_JOB, key) + encode_fields(fields)


def task_record(key: int, job_key: int, task_id: str, name: str) -> bytes:
    """A TASK table record (one per task: built without the general encoder when it can be)."""
    tid, tname = task_id.encode("utf-8", "replace"), name.encode("utf-8", "replace")
    if b"\n" in tid or b"\n" in tname:
        fields = encode_fields((("PROCPOOL_TASK_ID", task_id), ("PROCPOOL_TASK_NAME", name)))
    else:
        fields = b"PROCPOOL_TASK_ID=" + tid + b"\nPROCPOOL_TASK_NAME=" + tname + b"\n"
    return TASK.pack(K_TASK, key, job_key) + fields


def site_record(site: int, fields: Iterable[tuple[str, str]]) -> bytes:
    return SITE.pack(K_SITE, site) + encode_fields(fields)


def plain_record(seq: int, created: float, prio: int, logger: str, message: str,
                 fields: Iterable[tuple[str, str]]) -> bytes:
    """A RECORD: a record whose every field travels with it."""
    name = logger.encode("utf-8", "replace")[:65535]
    text = message.encode("utf-8", "replace")
    head = RECORD.pack(K_RECORD, prio, len(name), len(text), seq, created)
    return head + name + text + encode_fields(fields)

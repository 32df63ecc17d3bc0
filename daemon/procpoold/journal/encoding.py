"""What a journal record is made of: MESSAGE_IDs, priorities, journald's field encoding, and the
compact binary records the daemon hands to the journal forwarder through a shared-memory ring.

Both sides import this module: the daemon packs (:mod:`procpoold.journal.sink`,
:mod:`procpoold.journal.handle`), the forwarder unpacks (:mod:`procpoold.journal.forwarder`). It
imports nothing else of the daemon.

Ring records (little-endian; the first byte is the kind):

=========  ======================================================================================
kind       layout
=========  ======================================================================================
NAMES      ``<BxxxIIII`` job, first task index, task count, length of the job's fields; then the
           job's fields (journald-encoded: PROCPOOL_JOB_ID, JOB_NAME, USER...; empty when only
           task names are added) and the names of tasks ``first`` on (UTF-8, NUL-separated)
SITE       ``<BxH`` site id, then code-location fields (CODE_FILE, CODE_LINE, CODE_FUNC, LOGGER)
LINE       ``<BBBxIIIIIQd`` prio, stream, job, task index, attempt, worker pid, message length,
           seq, time; then the message (UTF-8) and extra fields a worker gave (may be empty)
EVENTS     ``<BxxxIQd`` item count, seq of the first item, time; then the items, each
           :data:`ITEM_INTS` unsigned 32-bit integers in the machine's order (code, site, job,
           task index, count, attempt, worker pid, text length), then the items' texts (UTF-8,
           back to back): every lifecycle event of one loop iteration (a STARTED item with a
           count above 1 is a range: that many tasks from its index, with the same attempt,
           worker and seq)
RECORD     ``<BBHIQd`` prio, logger length, message length, seq, time; then logger, message and
           every field (journald-encoded): the daemon's own records, and rare task records
FORGET     ``<BxxxI`` job: the forwarder drops the job's names
MARK       ``<B`` then a path (UTF-8): from now on, write the highest seq written to that file
STOP       ``<B``: write everything before it, acknowledge, exit
=========  ======================================================================================

A job is its number (the daemon's job ids are numbers) and a task its index in the job, so an
event means the same after a restart of the daemon (see :mod:`procpoold.journal.sink` on the
replay). Names travel once (a NAMES record per job, before the first record that uses them);
lines and events carry only integers. Every record that reaches journald carries a ``seq``, in
the order the daemon produced them: the forwarder acknowledges the highest one it has written
(``ACK``: ``<QQQQ`` seq, written, errors, fallbacks, counts since the previous acknowledgement),
and writes it to its *watermark* file, so that a daemon killed with ``kill -9`` knows which of
the events its durable log holds were not written yet.
"""

from __future__ import annotations

import array
import functools
import logging
import struct
from collections.abc import Iterable, Iterator
from typing import Final

from procpool.contract.words import plural

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
    JOB_RETRIED = "b884edc2e18a4bad980756fd6f7d971b"


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

K_NAMES: Final = 1
K_SITE: Final = 3
K_LINE: Final = 4
K_EVENTS: Final = 5
K_RECORD: Final = 6
K_FORGET: Final = 7
K_STOP: Final = 8
K_MARK: Final = 9

NAMES = struct.Struct("<BxxxIIII")
SITE = struct.Struct("<BxH")
LINE = struct.Struct("<BBBxIIIIIQd")
EVENTS_HEAD = struct.Struct("<BxxxIQd")
RECORD = struct.Struct("<BBHIQd")
FORGET = struct.Struct("<BxxxI")
STOP = bytes([K_STOP])
ACK = struct.Struct("<QQQQ")
WATERMARK = struct.Struct("<Q")
#: integers per lifecycle item: code, site, job, task index, count, attempt, worker pid, text length
ITEM_INTS: Final = 8

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
RETRIED: Final = 7  # an attempt ended and the task runs again (a retry, or an interruption)

#: event code -> (MESSAGE_ID, priority)
EVENTS: Final = {
    STARTED: (MessageId.TASK_STARTED, 6),
    COMPLETED: (MessageId.TASK_COMPLETED, 6),
    SKIPPED: (MessageId.TASK_SKIPPED, 6),
    CANCELLED: (MessageId.TASK_CANCELLED, 6),
    FAILED: (MessageId.TASK_FAILED, 3),  # (ERROR: the record carries a call's traceback)
    TIMED_OUT: (MessageId.TASK_TIMED_OUT, 3),
    RETRIED: (MessageId.TASK_RETRIED, 4),
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
    if code == RETRIED:
        return f'task "{task_name}" attempt {attempt} {text}'
    state = _STATE_WORDS.get(code, "ended")
    if code in (SKIPPED, CANCELLED):
        return f'task "{task_name}" {state}: {text}'
    return f'task "{task_name}" {state} after {plural(attempt, "attempt")}: {text}'


def names_record(job: int, first: int, fields: Iterable[tuple[str, str]], names: list[str]) -> bytes:
    """A NAMES table record: the job's fields (none: only names added) and task names ``first`` on."""
    head = encode_fields(fields)
    text = "\0".join(names).encode("utf-8", "replace")
    if text.count(b"\0") != max(len(names) - 1, 0):  # a NUL inside a name: replaced
        text = "\0".join(n.replace("\0", "\ufffd") for n in names).encode("utf-8", "replace")
    return NAMES.pack(K_NAMES, job, first, len(names), len(head)) + head + text


def unpack_names(data: bytes) -> tuple[int, int, dict[str, str], list[str]]:
    """A NAMES record -> (job, first index, job fields, task names)."""
    _k, job, first, count, n = NAMES.unpack_from(data)
    start = NAMES.size
    fields = dict(decode_fields(data[start : start + n])) if n else {}
    names = data[start + n :].decode("utf-8", "replace").split("\0") if count else []
    if len(names) != count:
        raise ValueError(f"a names record of job {job} holds {len(names)} names, not {count}")
    return job, first, fields, names


def events_record(first_seq: int, created: float, items: list[int], texts: bytes) -> bytes:
    """An EVENTS record: lifecycle items (:data:`ITEM_INTS` integers each) and their texts."""
    return (EVENTS_HEAD.pack(K_EVENTS, len(items) // ITEM_INTS, first_seq, created)
            + array.array("I", items).tobytes() + texts)


def unpack_events(data: bytes | memoryview) -> tuple[int, float, array.array[int], list[bytes]]:
    """An EVENTS record -> (seq of the first item, time, the items' integers, each item's text)."""
    _k, count, first_seq, created = EVENTS_HEAD.unpack_from(data)
    start = EVENTS_HEAD.size
    end = start + count * ITEM_INTS * 4
    if end > len(data):
        raise ValueError("an events record shorter than its items")
    items = array.array("I")
    items.frombytes(bytes(data[start:end]))
    texts: list[bytes] = []
    pos = end
    for i in range(ITEM_INTS - 1, len(items), ITEM_INTS):
        n = items[i]
        texts.append(bytes(data[pos : pos + n]) if n else b"")
        pos += n
    if pos > len(data):
        raise ValueError("an events record shorter than its texts")
    return first_seq, created, items, texts


def site_record(site: int, fields: Iterable[tuple[str, str]]) -> bytes:
    return SITE.pack(K_SITE, site) + encode_fields(fields)


def plain_record(seq: int, created: float, prio: int, logger: str, message: str,
                 fields: Iterable[tuple[str, str]]) -> bytes:
    """A RECORD: a record whose every field travels with it."""
    name = logger.encode("utf-8", "replace")[:65535]
    text = message.encode("utf-8", "replace")
    head = RECORD.pack(K_RECORD, prio, len(name), len(text), seq, created)
    return head + name + text + encode_fields(fields)

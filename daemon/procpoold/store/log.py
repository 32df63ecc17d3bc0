"""The write-ahead log: append-only files of length-prefixed, checksummed records.

The loop thread appends (:class:`LogWriter`, one ``write`` per group commit); the start reads
(:func:`read_log`). Nothing else touches the files. A log is a series of *segments*,
``<stem>.log.<n>`` beside the database (n from 1, eight digits), each::

    MAGIC (8 bytes)
    record*:  length (u32 LE) | crc32 of the length's 4 bytes and the payload (u32 LE) | payload

A payload is opaque here (the store packs ``[lsn, ops]`` in it). A record is complete or it is
not there: a process killed in the middle of a ``write`` leaves a short last record, and a
power loss can leave the last records' bytes unwritten (zeros). Both are a *torn tail*: reading
stops at it, and the start cuts it off. A bad record that is followed by more data is not a
torn write but damage: :class:`LogCorrupt`, which names the file, the offset and the way out.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

MAGIC = b"PPLOG\x00\x01\n"
_HEAD = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
#: A record longer than this is damage, not a record (a group commit is far smaller).
MAX_RECORD = 1 << 30


class LogCorrupt(Exception):
    """A log segment holds damage that is not a torn tail; the message names file and offset."""


def frame(payload: bytes) -> bytes:
    """One record: the payload with its length and checksum in front."""
    length = _LENGTH.pack(len(payload))
    return _HEAD.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


class Segment(NamedTuple):
    """What one segment holds: its payloads in order, and where the valid part ends."""

    path: Path
    payloads: list[bytes]
    end: int  # offset just past the last whole record (the file's size when nothing is torn)
    torn: bool  # whether bytes follow ``end`` (a torn tail)


def read_segment(path: Path) -> Segment:
    """Every whole record of one segment; raises :class:`LogCorrupt` on damage before its end."""
    data = path.read_bytes()
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):  # created, its header not yet (fully) written
            return Segment(path, [], 0, bool(data))
        raise LogCorrupt(f"{path} is not a procpool state log (bad header)")
    if not data.startswith(MAGIC):
        raise LogCorrupt(f"{path} is not a procpool state log (bad header)")
    payloads: list[bytes] = []
    offset = len(MAGIC)
    size = len(data)
    view = memoryview(data)
    while offset < size:
        if size - offset < _HEAD.size:
            break  # a torn header
        length, crc = _HEAD.unpack_from(data, offset)
        end = offset + _HEAD.size + length
        if end > size and length <= MAX_RECORD:
            break  # a torn payload: the write did not finish
        body = view[offset + _HEAD.size : end]
        if length == 0 or length > MAX_RECORD or zlib.crc32(body, zlib.crc32(_LENGTH.pack(length))) != crc:
            if _only_zeros(view[offset:]):
                break  # a power loss left the tail's blocks unwritten
            if end >= size:
                break  # the last record, its bytes half written
            raise LogCorrupt(
                f"{path} is damaged at offset {offset}: a record with a bad checksum is followed by "
                f"{size - end} more bytes"
            )
        payloads.append(bytes(body))
        offset = end
    return Segment(path, payloads, offset, offset < size)


def _only_zeros(view: memoryview) -> bool:
    return not view.tobytes().strip(b"\0")


def segment_paths(folder: Path, stem: str) -> list[tuple[int, Path]]:
    """The log segments in ``folder``, in order: (number, path)."""
    pattern = re.compile(re.escape(stem) + r"\.log\.(\d{8})")
    found = []
    for name in os.listdir(folder):
        match = pattern.fullmatch(name)
        if match:
            found.append((int(match.group(1)), folder / name))
    return sorted(found)


def segment_path(folder: Path, stem: str, number: int) -> Path:
    return folder / f"{stem}.log.{number:08d}"


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogWriter:
    """The open segment: appends records, one ``write`` each (loop thread only).

    ``sync``: each append is on the disk (``fdatasync``) before :meth:`append` returns (the
    config's ``sync = "full"``); otherwise it is in the kernel's page cache, which a crash of the
    daemon (``kill -9``) does not lose.
    """

    def __init__(self, folder: Path, stem: str, number: int, sync: bool) -> None:
        self.folder = folder
        self.stem = stem
        self.sync = sync
        self.number = number
        self.path = segment_path(folder, stem, number)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = 0
        try:
            self._write(MAGIC)
            if sync:
                os.fdatasync(self.fd)
                fsync_folder(folder)
        except BaseException:
            os.close(self.fd)
            raise

    def append(self, payload: bytes) -> None:
        """Write one record (and wait for the disk if ``sync``); raises OSError, leaving no part."""
        self._write(frame(payload))
        if self.sync:
            os.fdatasync(self.fd)

    def _write(self, data: bytes) -> None:
        before = self.size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except BaseException:
            # A short write (a full disk) must not stay as a record's first half in the middle.
            try:
                os.ftruncate(self.fd, before)
            except OSError:
                pass  # the start cuts it as a torn tail
            raise
        self.size = before + len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

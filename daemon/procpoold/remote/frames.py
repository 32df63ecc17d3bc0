"""Frames between the runner (in a Dask worker) and the harness (the attempt's process).

A frame is a 4-byte big-endian length and a msgpack value of at most :data:`MAX_FRAME` bytes,
decoded strictly (string map keys, no extension types). The harness runs task code, so the
runner reads its frames as untrusted input: :func:`read_frame` bounds the size and the caller
checks the shape.

harness -> runner (fd 3 of the harness)::

    ["log", level, message, {field: str}]     a log record of the task
    ["progress", {report}]                    procpool.task.progress(...)
    ["req", rid, op, {args}]                  a namespace operation, answered on stdin
    ["done", ok, value]                       the result (ok) or an error map; the last frame

runner -> harness (stdin of the harness)::

    {payload}                                 the attempt (first frame)
    ["reply", rid, ok, value]                 the daemon's answer to a "req"
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

#: Largest frame either side accepts (a result, a namespace value): the daemon applies its own,
#: usually smaller, limits when the values arrive.
MAX_FRAME = 64 * 1024 * 1024
_HEAD = struct.Struct(">I")


class FrameError(ValueError):
    """A frame that is too large or not msgpack."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack extension type {code} is not allowed")


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return _HEAD.pack(len(data)) + data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext, timestamp=0)


def write_frame(fd: int, value: Any) -> None:
    """Write one frame to ``fd`` (blocking, whole)."""
    view = memoryview(pack(value))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_frame(fd: int, limit: int = MAX_FRAME) -> Any:
    """The next frame's value; raises EOFError at the end, FrameError for a bad frame."""
    head = _read_exact(fd, _HEAD.size)
    if head is None:
        raise EOFError
    (size,) = _HEAD.unpack(head)
    if size > limit:
        raise FrameError(f"a frame of {size:,} bytes, over the limit of {limit:,}")
    data = _read_exact(fd, size)
    if data is None:
        raise EOFError
    try:
        return unpack(data)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"not msgpack: {exc}") from None


class FrameReader:
    """Frames from a non-blocking fd, as they arrive (the runner's side)."""

    def __init__(self, fd: int, limit: int = MAX_FRAME) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.limit = limit
        self.buf = bytearray()
        self.eof = False

    def read(self) -> list[Any]:
        """The frames complete now (sets :attr:`eof` at the end); raises FrameError."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        out: list[Any] = []
        buf = self.buf
        while len(buf) >= _HEAD.size:
            (size,) = _HEAD.unpack_from(buf)
            if size > self.limit:
                raise FrameError(f"a frame of {size:,} bytes, over the limit of {self.limit:,}")
            end = _HEAD.size + size
            if len(buf) < end:
                break
            try:
                out.append(unpack(bytes(buf[_HEAD.size:end])))
            except FrameError:
                raise
            except Exception as exc:
                raise FrameError(f"not msgpack: {exc}") from None
            del buf[:end]
        return out

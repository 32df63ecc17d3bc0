"""Typed wrapper over the native shared-memory rings (the only importer of ``procpoold._ring``).

A :class:`Segment` is one shared mapping holding two single-producer/single-consumer rings of
variable-length messages: :attr:`Segment.request` (daemon -> worker) and :attr:`Segment.result`
(worker -> daemon). Each process that uses a segment maps it itself (:meth:`Segment.create` in the
daemon, :meth:`Segment.attach` by name or fd elsewhere, or again after ``fork``) and holds its own
process-local :class:`Ring` handles; a process is the producer or the consumer of a given ring, and a
handle is used by one thread at a time.

Waiting: the consumer of the request ring calls :meth:`Ring.wait`, which spins briefly (adaptive,
bounded by a few tens of microseconds) and then blocks on a futex in the segment, with the GIL
released. The daemon consumes result rings from its own poll loop instead: it calls
:meth:`Ring.arm` before blocking, polls the eventfd it gave the producer (:meth:`Ring.set_doorbell`
on the worker's side), and after a wakeup reads the eventfd and drains. The producer side makes a
system call only when the consumer has announced it is asleep.

Large messages: a payload longer than :attr:`Ring.spill_threshold` (by default the ring's maximum
record size) travels through the spill path implemented here, in Python: the producer stores it in a
named shm object ``procpool-spill-<pid>-<seq>`` (:mod:`procpoold.pool.shm`) and pushes a small
``PP_KIND_SPILL`` record ``<u64 size><name>``; the consumer opens the object and unlinks it before
it releases the record, then reads it. Whoever dies at whatever point, the object is either still
referenced from the ring (:meth:`Ring.discard` unlinks it) or owned by a dead pid
(:func:`procpoold.pool.shm.cleanup_leftovers` unlinks it) or only held by an fd (freed by the kernel).

A producer may be hostile (a worker runs untrusted code and its segment is mapped writable), so a
consumer handle can be told whose spill objects it may touch (:attr:`Ring.spill_from`, a name
prefix: it opens, reads and unlinks no other name, not even in :meth:`Ring.discard`) and how large
a spilled message may be (:attr:`Ring.spill_limit`). A spill record that breaks these rules, or an
object that is not a plain file of the announced size with no other name, raises
:class:`SpillError`; the object is read with ``read(2)``, never mapped, so one truncated meanwhile
gives a short read (an error), not a SIGBUS.

Sizes and constants come from the C library; nothing here repeats them.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from procpoold._ring import ffi, lib
from procpoold.pool import shm

MAGIC: Final[int] = lib.PP_SEGMENT_MAGIC
VERSION: Final[int] = lib.PP_SEGMENT_VERSION
MIN_CAPACITY: Final[int] = lib.PP_MIN_CAPACITY
MAX_CAPACITY: Final[int] = lib.PP_MAX_CAPACITY
RECORD_HEADER: Final[int] = lib.PP_RECORD_HEADER
RECORD_ALIGN: Final[int] = lib.PP_RECORD_ALIGN
KIND_DATA: Final[int] = lib.PP_KIND_DATA
KIND_SPILL: Final[int] = lib.PP_KIND_SPILL
SPIN_MIN_NS: Final[int] = lib.PP_SPIN_MIN_NS
SPIN_MAX_NS: Final[int] = lib.PP_SPIN_MAX_NS

_OK: Final[int] = lib.PP_OK
_EEMPTY: Final[int] = lib.PP_EEMPTY
_EFULL: Final[int] = lib.PP_EFULL
_ETIMEDOUT: Final[int] = lib.PP_ETIMEDOUT
_EINTR: Final[int] = lib.PP_EINTR
_EPEEK: Final[int] = lib.PP_EPEEK

#: Messages up to this size are copied out of the ring by one C call into a per-handle scratch buffer
#: (one cffi transition instead of three); larger ones are read in place with peek/release.
SMALL_MESSAGE: Final[int] = 16384

_SPILL_HEAD = struct.Struct("<Q")

# Bound C entry points, looked up once (each call goes through them on the hot path).
_push = lib.pp_ring_push
_push_many = lib.pp_ring_push_many
_peek = lib.pp_ring_peek
_pop = lib.pp_ring_pop
_pop_many = lib.pp_ring_pop_many
_release = lib.pp_ring_release
_wait = lib.pp_ring_wait
_unpack = ffi.unpack


class RingError(Exception):
    """Base class of ring errors; ``code`` is the C return code (0 when raised by Python).

    From :meth:`Ring.pop_many`, ``partial`` holds the messages popped before the error, in order.
    """

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.partial: list[bytes] = []


class SegmentMismatch(RingError):
    """The mapped segment is not a ring segment this library can use."""


class BadMagic(SegmentMismatch):
    """The segment header does not start with the ring magic."""


class BadVersion(SegmentMismatch):
    """The segment header carries another layout version."""


class BadSize(SegmentMismatch):
    """The segment sizes disagree with the header or with the mapping."""


class MessageTooLarge(RingError):
    """A message does not fit in one record and spilling is disabled for it."""


class RingCorrupt(RingError):
    """The ring holds an inconsistent record (a peer scribbled over shared memory)."""


class RingClosed(RingError):
    """The ring's segment has been closed in this process."""


class RingSystemError(RingError):
    """An unexpected system-call failure inside the ring library."""


class SpillError(RingError):
    """A spilled message could not be read back; ``partial`` holds the messages popped before it."""


    def __init__(self, message: str, partial: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or []


class SpillTooLarge(SpillError):
    """A spill record announces more than :attr:`Ring.spill_limit` bytes (``size``); not read."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


_ERRORS: Final[dict[int, type[RingError]]] = {
    lib.PP_ETOOBIG: MessageTooLarge,
    lib.PP_EINVAL: RingError,
    lib.PP_EMAGIC: BadMagic,
    lib.PP_EVERSION: BadVersion,
    lib.PP_ESIZE: BadSize,
    lib.PP_ECORRUPT: RingCorrupt,
    lib.PP_ECLOSED: RingClosed,
    lib.PP_ESYS: RingSystemError,
}


#: Seconds of one step of :meth:`Ring.spin_while_running`.
SPIN_STEP = 50e-6


def error_for(code: int) -> RingError:
    """Build the typed exception for a negative C return code."""
    message = ffi.string(lib.pp_strerror(code)).decode()
    return _ERRORS.get(code, RingError)(f"{message} (code {code})", code)


def segment_size(capacity: int) -> int:
    """Bytes of a segment whose two rings hold ``capacity`` data bytes each (a power of two)."""
    size: int = lib.pp_segment_size(capacity) if 0 <= capacity < 2**32 else 0
    if size == 0:
        raise ValueError(
            f"ring capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}], got {capacity}"
        )
    return size


def max_message(capacity: int) -> int:
    """Largest payload one record can carry in a ring of ``capacity`` bytes (larger ones spill)."""
    segment_size(capacity)
    return capacity // 2 - RECORD_HEADER


class Segment:
    """One mapped ring segment with its two rings, as seen by the calling process."""

    __slots__ = ("_buf", "_fd", "_mm", "_name", "request", "result", "size")

    def __init__(self, fd: int, name: str | None) -> None:
        """Map the segment behind ``fd`` (which this object then owns) and attach both rings."""
        self._fd = fd
        self._name = name
        self.size = shm.fd_size(fd)
        if self.size < RECORD_HEADER:
            os.close(fd)
            raise BadSize(f"segment is {self.size} bytes, smaller than any header", lib.PP_ESIZE)
        try:
            self._mm: mmap.mmap | None = shm.map_fd(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        # from_buffer exports the mmap's buffer without a copy; it pins the mapping until released.
        self._buf: Any = ffi.from_buffer(self._mm)
        try:
            rc = lib.pp_segment_check(self._buf, self.size)
            if rc != _OK:
                raise error_for(rc)
            self.request = Ring(self, lib.PP_RING_REQUEST)
            self.result = Ring(self, lib.PP_RING_RESULT)
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, capacity: int, *, named: bool = False) -> Segment:
        """Create and format a new segment (anonymous memfd, or named ``procpool-ring-*`` object)."""
        size = segment_size(capacity)
        name = shm.new_name(shm.SEGMENT_PREFIX) if named else None
        fd = shm.create_named(name, size) if name else shm.create_anonymous(size)
        try:
            with shm.map_fd(fd, size) as mm:
                buf = ffi.from_buffer(mm)
                rc = lib.pp_segment_init(buf, size, capacity)
                ffi.release(buf)
            if rc != _OK:
                raise error_for(rc)
            return cls(fd, name)
        except BaseException:
            if name:
                shm.unlink(name)
            raise

    @classmethod
    def attach(cls, *, name: str | None = None, fd: int | None = None) -> Segment:
        """Map an existing segment by name or by fd (the fd is duplicated; the caller keeps its own)."""
        if (name is None) == (fd is None):
            raise ValueError("pass exactly one of name= or fd=")
        own = shm.open_named(name) if name is not None else os.dup(fd)  # type: ignore[arg-type]
        return cls(own, name)

    @property
    def name(self) -> str | None:
        """Name of a named segment (None for a memfd)."""
        return self._name

    @property
    def fd(self) -> int:
        """File descriptor of the segment (for passing to a child or over SCM_RIGHTS)."""
        return self._fd

    @property
    def capacity(self) -> int:
        """Data bytes in each ring."""
        return int(lib.pp_segment_capacity(self._buf, self.size))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._mm is None

    def close(self) -> None:
        """Detach both rings and unmap; idempotent. Does not unlink a named segment."""
        if self._mm is None:
            return
        for attr in ("request", "result"):
            ring = getattr(self, attr, None)
            if ring is not None:
                ring._detach()
        ffi.release(self._buf)
        self._mm.close()
        self._mm = None
        os.close(self._fd)

    def unlink(self) -> bool:
        """Remove the segment's name (mappings stay valid); False if anonymous or already gone."""
        return shm.unlink(self._name) if self._name else False

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Ring:
    """Process-local handle on one ring of a :class:`Segment` (producer or consumer side)."""

    __slots__ = (
        "_h",
        "_mlens",
        "_plen",
        "_pp",
        "_scratch",
        "_scratch_size",
        "capacity",
        "max_message",
        "spill_from",
        "spill_limit",
        "spill_owner",
        "spill_tag",
        "spill_threshold",
    )

    def __init__(self, segment: Segment, index: int) -> None:
        """Attach to ring ``index`` of a mapped segment."""
        self._h: Any = ffi.new("pp_ring_t *")
        rc = lib.pp_ring_attach(self._h, segment._buf, segment.size, index)
        if rc != _OK:
            raise error_for(rc)
        #: Data bytes of the ring.
        self.capacity: int = lib.pp_segment_capacity(segment._buf, segment.size)
        #: Largest payload that fits one record.
        self.max_message: int = lib.pp_ring_max_message(self._h)
        #: Payloads longer than this go through the spill path.
        self.spill_threshold: int = self.max_message
        #: Consumer side: the only spill objects this handle opens, reads or unlinks are those whose
        #: names start with this (:func:`procpoold.pool.shm.spill_prefix` of the producer); None:
        #: any procpool spill object (a producer that is trusted).
        self.spill_from: str | None = None
        #: Consumer side: the largest spilled message it reads (None: no limit). With a limit, one
        #: :meth:`pop_many` call also returns after a spilled message, so it holds at most one.
        self.spill_limit: int | None = None
        #: (uid, gid) that spill objects written here are handed to (the consumer's user).
        self.spill_owner: tuple[int, int] | None = None
        #: Producer side: put in the names of spill objects written here (see :attr:`spill_from`).
        self.spill_tag: str = ""
        self._scratch_size = min(SMALL_MESSAGE, self.max_message)
        self._scratch: Any = ffi.new("char[]", self._scratch_size)
        self._mlens: Any = ffi.new("uint32_t[]", 1)
        self._pp: Any = ffi.new("const char **")
        self._plen: Any = ffi.new("uint32_t *")

    def _detach(self) -> None:
        lib.pp_ring_detach(self._h)

    # --- producer --------------------------------------------------------------------------

    def push(self, data: bytes | bytearray | memoryview, *, wake: bool = True) -> bool:
        """Append one message; False if the ring is full right now (nothing was written).

        Wakes the consumer only if it is asleep (no system call otherwise). Payloads longer than
        :attr:`spill_threshold` go through the spill path.
        """
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        if n > self.spill_threshold:
            return self._push_spill(data, wake)
        # bytes pass to C without a copy; other buffers go through from_buffer (no copy either).
        rc = _push(self._h, data if type(data) is bytes else ffi.from_buffer(data), n, 0, wake)
        if rc == 0:
            return True
        if rc == _EFULL:
            return False
        raise error_for(rc)

    def push_many(self, messages: Sequence[bytes], *, wake: bool = True) -> int:
        """Append messages in order, publishing them together and waking at most once.

        Returns how many were appended (a prefix of ``messages``; fewer than all when the ring
        filled up).
        """
        lens = [len(m) for m in messages]
        if not lens:
            return 0
        if max(lens) > self.spill_threshold:
            # Mixed batch: keep the order, pushing inline runs in batches and spills one by one.
            done = 0
            for i, m in enumerate(messages):
                if lens[i] > self.spill_threshold:
                    if not self._push_spill(m, False):
                        break
                    done += 1
                    continue
                if not self.push(m, wake=False):
                    break
                done += 1
            if wake and done:
                lib.pp_ring_notify(self._h)
            return done
        rc = _push_many(self._h, b"".join(messages), lens, len(lens), wake)
        if rc < 0:
            raise error_for(rc)
        return int(rc)

    def notify(self) -> bool:
        """Wake the consumer if it is asleep; True if a wakeup system call was made."""
        rc = lib.pp_ring_notify(self._h)
        if rc < 0:
            raise error_for(rc)
        return bool(rc)

    def set_doorbell(self, fd: int) -> None:
        """Producer side: eventfd to write when the consumer armed its doorbell (-1 for none)."""
        lib.pp_ring_set_doorbell(self._h, fd)

    def _push_spill(self, data: bytes | bytearray | memoryview, wake: bool) -> bool:
        # Check for room before writing a possibly huge object; only the consumer frees space,
        # so the answer can only get better until our push below.
        if self.free < 4 * RECORD_HEADER + 64:
            return False
        name = shm.write_spill(data, self.spill_owner, self.spill_tag)
        ref = _SPILL_HEAD.pack(memoryview(data).nbytes) + name.encode()
        try:
            rc = _push(self._h, ref, len(ref), KIND_SPILL, wake)
        except BaseException:
            shm.unlink(name)
            raise
        if rc == 0:
            return True
        shm.unlink(name)
        if rc == _EFULL:
            return False
        raise error_for(rc)

    # --- consumer --------------------------------------------------------------------------

    def pop(self) -> bytes | None:
        """Remove and return the next message, or None if the ring is empty."""
        h = self._h
        n = _pop(h, self._scratch, self._scratch_size)
        if n >= 0:
            return _unpack(self._scratch, n)  # type: ignore[no-any-return]
        if n == _EEMPTY:
            return None
        if n != _EPEEK:
            raise error_for(n)
        return self._pop_large()[0]

    def _pop_large(self) -> tuple[bytes | None, bool]:
        """The next record, read in place (a large one, or a spill reference); and whether it
        was spilled."""
        h = self._h
        kind = _peek(h, self._pp, self._plen)
        if kind == KIND_DATA:
            out: bytes = _unpack(self._pp[0], self._plen[0])
            _release(h)
            return out, False
        if kind == _EEMPTY:
            return None, False
        if kind == KIND_SPILL:
            ref: bytes = _unpack(self._pp[0], self._plen[0])
            return self._take_spill(ref), True
        if kind < 0:
            raise error_for(kind)
        raise RingCorrupt(f"unexpected record kind {kind}")

    def pop_many(self, max_count: int = 256) -> list[bytes]:
        """Remove and return up to ``max_count`` messages, in order (an empty list if none).

        Returns fewer than ``max_count`` only when the ring has run empty, or (with a
        :attr:`spill_limit`) right after a spilled message.
        """
        if max_count > len(self._mlens):
            self._mlens = ffi.new("uint32_t[]", max_count)
        h, scratch, size, mlens = self._h, self._scratch, self._scratch_size, self._mlens
        out: list[bytes] = []
        while len(out) < max_count:
            # Copying fast path: as many small records as fit the scratch buffer, one C call.
            n = _pop_many(h, scratch, size, mlens, max_count - len(out))
            if n > 0:
                lens: list[int] = _unpack(mlens, n)
                blob: bytes = _unpack(scratch, sum(lens))
                if n == 1:
                    out.append(blob)
                    continue
                pos = 0
                for ln in lens:
                    out.append(blob[pos : pos + ln])
                    pos += ln
                continue
            if n == 0:
                break
            try:
                if n != _EPEEK:
                    raise error_for(n)
                # The next record is large or a spill: one at a time, read in place.
                msg, spilled = self._pop_large()
            except RingError as exc:
                exc.partial = out + exc.partial  # popped (gone from the ring): not to be lost
                raise
            if msg is None:
                break
            out.append(msg)
            if spilled and self.spill_limit is not None:
                break
        return out

    def _spill_ref(self, ref: bytes) -> tuple[int, str]:
        """Size and object name of a spill record, checked against :attr:`spill_from` and
        :attr:`spill_limit` (SpillError: nothing was touched)."""
        if len(ref) <= _SPILL_HEAD.size:
            raise SpillError(f"spill record of {len(ref)} bytes names no object")
        (size,) = _SPILL_HEAD.unpack_from(ref)
        try:
            name = ref[_SPILL_HEAD.size :].decode()
            shm.check_spill_name(name, self.spill_from)
        except ValueError as exc:
            raise SpillError(str(exc)[:200]) from None
        limit = self.spill_limit
        if limit is not None and size > limit:
            raise SpillTooLarge(f"spilled message {name[:80]!r} of {size} bytes is over the limit of "
                                f"{limit} bytes", size)
        return size, name

    def _take_spill(self, ref: bytes) -> bytes:
        # Open (and so unlink) the object before the record that names it is released.
        try:
            size, name = self._spill_ref(ref)
            try:
                fd = shm.open_spill(name, size)
            except (OSError, ValueError) as exc:
                raise SpillError(f"spilled message {name[:80]!r} cannot be taken: {exc}") from exc
        finally:
            _release(self._h)
        try:
            return shm.read_spill(fd, size)
        except (OSError, ValueError) as exc:
            raise SpillError(f"spilled message {name[:80]!r} unreadable: {exc}") from exc

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a message is available: spin briefly, then block on the futex (GIL released).

        Returns True when something can be popped, False on timeout. ``timeout`` None waits
        forever; 0 only checks. Signal handlers run between the retries after an interruption.
        """
        if timeout is None:
            deadline = None
            ns = -1
        else:
            ns = max(0, int(timeout * 1e9))
            deadline = time.monotonic_ns() + ns
        while True:
            rc = _wait(self._h, ns)
            if rc == 0:
                return True
            if rc == _ETIMEDOUT:
                return False
            if rc != _EINTR:
                raise error_for(rc)
            if deadline is not None:
                ns = max(0, deadline - time.monotonic_ns())

    def spin(self, seconds: float) -> bool:
        """Spin (no system call) for at most ``seconds``; True if a message is available."""
        rc = lib.pp_ring_spin(self._h, int(seconds * 1e9))
        if rc < 0:
            raise error_for(rc)
        return bool(rc)

    def spin_while_running(self, seconds: float, step: float = SPIN_STEP) -> bool:
        """Spin for at most ``seconds``, in steps of ``step``, and stop early when this thread was
        kept off the CPU for more than half of the time so far (the machine is busy: another
        process needs the CPU more, and a sleeper is woken with priority, a spinner is not).
        True if a message is available."""
        start, cpu = time.perf_counter(), time.thread_time()
        while True:
            if self.spin(min(step, seconds)):
                return True
            wall = time.perf_counter() - start
            if wall >= seconds or time.thread_time() - cpu < wall / 2:
                return False

    def set_spin(self, min_ns: int, max_ns: int) -> None:
        """Bounds of the adaptive spin budget of :meth:`wait` (0, 0 blocks at once)."""
        lib.pp_ring_set_spin(self._h, min_ns, max_ns)

    def arm(self) -> bool:
        """Doorbell consumer: announce sleep; True if armed (blocking on the eventfd is now safe).

        False means messages are already there (not armed): drain instead of blocking. After the
        eventfd fires, read it (``os.eventfd_read``) and drain; the producer disarms as it rings.
        """
        rc = lib.pp_ring_arm(self._h)
        if rc < 0:
            raise error_for(rc)
        return bool(rc == 0)

    def disarm(self) -> None:
        """Withdraw an announcement made by :meth:`arm` (the doorbell then stays quiet)."""
        lib.pp_ring_disarm(self._h)

    def discard(self) -> int:
        """Consume and drop everything queued, unlinking spill objects; returns the count.

        For cleaning up after a dead peer: the surviving process takes over the consumer side.
        """
        count = 0
        while True:
            kind = _peek(self._h, self._pp, self._plen)
            if kind == _EEMPTY:
                break
            if kind < 0:
                raise error_for(kind)
            if kind == KIND_SPILL:
                ref: bytes = _unpack(self._pp[0], self._plen[0])
                try:  # only a name this handle may touch (see spill_from)
                    shm.unlink(self._spill_ref(ref)[1])
                except (SpillError, OSError):
                    pass
            _release(self._h)
            count += 1
        return count

    def resync(self) -> None:
        """Reload this handle's cursors from shared memory (for example in a child after fork)."""
        rc = lib.pp_ring_resync(self._h)
        if rc != _OK:
            raise error_for(rc)

    @property
    def used(self) -> int:
        """Bytes queued in the ring (an instantaneous estimate)."""
        return int(lib.pp_ring_used(self._h))

    @property
    def free(self) -> int:
        """Bytes free in the ring (an instantaneous estimate; padding may waste some)."""
        return self.capacity - self.used

    @property
    def wake_syscalls(self) -> int:
        """Wakeup system calls this producer handle has made."""
        return int(lib.pp_ring_wake_syscalls(self._h))

    @property
    def blocks(self) -> int:
        """Times this consumer handle has blocked in the kernel."""
        return int(lib.pp_ring_blocks(self._h))

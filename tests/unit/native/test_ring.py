"""Unit tests of the native ring through the ``procpoold._ring`` extension, in one process.

Edge cases of the ring (empty, full, wrap-around, maximum size, spill, batches), refusal of foreign
or damaged segment headers (every validated field), damaged record headers raising RingCorrupt, the
eventfd doorbell and futex timeouts, and the freshness of the committed generated C.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import struct
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from procpoold.pool import ring, shm
from procpoold.pool.ring import (
    BadMagic,
    BadSize,
    BadVersion,
    MessageTooLarge,
    RingClosed,
    RingCorrupt,
    RingError,
    Segment,
    SpillError,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SMALL = 4096

# struct pp_segment_header (native/src/ring.c): magic, version, header_size, segment_size,
# ring_count, ring_capacity, ctl_size, reserved, ring_offset[2].
HEADER = struct.Struct("<QIIQIIII2Q")
RECORD = struct.Struct("<II")  # a record header: payload length, kind


@pytest.fixture
def seg() -> Iterator[Segment]:
    """A fresh anonymous segment with 4 KiB rings."""
    s = Segment.create(SMALL)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail if the test leaves shared-memory objects of this process behind (and remove them)."""
    mine = f"{os.getpid()}-"
    yield
    left = [n for n in shm.list_leftovers() if n.split("-", 2)[2].startswith(mine)]
    shm.cleanup_leftovers(owners={os.getpid()})
    assert left == []


def _spills() -> list[str]:
    return [n for n in shm.list_leftovers(shm.SPILL_PREFIX) if shm.owner_pid(n) == os.getpid()]


def test_constants_come_from_c() -> None:
    assert ring.MIN_CAPACITY == SMALL
    assert ring.RECORD_HEADER == 8
    assert ring.max_message(SMALL) == SMALL // 2 - ring.RECORD_HEADER
    assert ring.segment_size(SMALL) > 2 * SMALL


@pytest.mark.parametrize("capacity", [0, 1000, 4095, 6000, 2**31, 2**40, -4096])
def test_invalid_capacity_is_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Segment.create(capacity)


def test_empty(seg: Segment) -> None:
    r = seg.request
    assert r.pop() is None
    assert r.pop_many() == []
    assert r.wait(0) is False
    assert r.used == 0
    assert r.free == SMALL


def test_zero_length_message(seg: Segment) -> None:
    assert seg.request.push(b"")
    assert seg.request.pop() == b""
    assert seg.request.pop() is None


def test_full_then_room_again(seg: Segment) -> None:
    r = seg.request
    msgs = [bytes([i]) * 100 for i in range(SMALL // 112 + 2)]  # 112-byte records, all different
    pushed = 0
    while r.push(msgs[pushed]):
        pushed += 1
    assert pushed == SMALL // 112
    assert r.free == SMALL - pushed * 112
    assert not r.push(msgs[pushed])
    assert r.pop() == msgs[0]
    # The freed record makes room for one more, which wraps (with a padding record) to the start.
    assert r.push(msgs[pushed])
    rest: list[bytes] = []
    while (m := r.pop()) is not None:
        rest.append(m)
    # Exactly the messages still queued, once each and in order: no loss, duplicate or reordering.
    assert rest == msgs[1 : pushed + 1]
    assert r.used == 0


def test_wrap_around_keeps_order_and_content(seg: Segment) -> None:
    r = seg.request
    sent: list[bytes] = []
    received: list[bytes] = []
    for i in range(5000):  # about 200 laps of the ring, padding records included
        msg = bytes([i % 251]) * (i * 37 % 700)
        assert r.push(msg)
        sent.append(msg)
        if i % 3 == 0:
            received.extend(r.pop_many(8))
        else:
            got = r.pop()
            assert got is not None
            received.append(got)
    received.extend(r.pop_many(1000))
    assert received == sent


def test_maximum_message_size_is_inline(no_leftovers: None) -> None:
    with Segment.create(1 << 20) as s:
        r = s.request
        big = bytes(range(256)) * (r.max_message // 256) + b"z" * (r.max_message % 256)
        assert len(big) == r.max_message == (1 << 19) - 8
        assert r.push(big)
        assert _spills() == []
        assert r.push(b"after")
        assert r.pop() == big
        assert r.pop() == b"after"


def test_oversize_goes_to_spill(seg: Segment, no_leftovers: None) -> None:
    r = seg.request
    msg = os.urandom(r.max_message + 1)
    assert r.push(msg)
    assert len(_spills()) == 1
    assert r.pop() == msg
    assert _spills() == []


def test_oversize_refused_when_spill_disabled(seg: Segment) -> None:
    r = seg.request
    r.spill_threshold = 2**32
    with pytest.raises(MessageTooLarge):
        r.push(b"y" * (r.max_message + 1))
    assert r.pop() is None


def test_spill_round_trip_64_mib(no_leftovers: None) -> None:
    with Segment.create(1 << 16) as s:
        r = s.result
        payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)
        assert r.push(b"small before")
        assert r.push(payload)
        assert r.push(b"small after")
        assert r.pop() == b"small before"
        got = r.pop()
        assert got is not None and len(got) == len(payload) and got == payload
        assert r.pop() == b"small after"


def test_spill_in_batches(seg: Segment, no_leftovers: None) -> None:
    r = seg.request
    big = [os.urandom(r.max_message + 1 + i) for i in range(3)]
    batch = [b"a", big[0], b"b", big[1], big[2], b"c"]
    assert r.push_many(batch) == len(batch)
    assert r.pop_many(100) == batch


def test_spill_refused_when_full(seg: Segment, no_leftovers: None) -> None:
    r = seg.request
    while r.push(b"f" * 500):
        pass
    assert r.push(b"g" * (r.max_message + 10)) is False
    assert _spills() == []
    r.discard()


def test_spill_gone_raises(seg: Segment, no_leftovers: None) -> None:
    r = seg.request
    assert r.push(b"h" * (r.max_message + 1))
    for name in _spills():
        shm.unlink(name)
    with pytest.raises(SpillError):
        r.pop()
    assert r.pop() is None


def test_discard_unlinks_spills(seg: Segment, no_leftovers: None) -> None:
    r = seg.request
    r.push(b"a")
    r.push(b"s" * (r.max_message + 5))
    assert len(_spills()) == 1
    assert r.discard() == 2
    assert _spills() == []


def test_cleanup_leftovers_of_dead_owner() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    name = f"{shm.SPILL_PREFIX}{pid}-0"
    os.close(shm.create_named(name, 10))
    try:
        assert name in shm.list_leftovers()
        assert name in shm.cleanup_leftovers()
        assert name not in shm.list_leftovers()
    finally:
        shm.unlink(name)


def test_batch_push_and_pop(seg: Segment) -> None:
    r = seg.request
    msgs = [bytes([i]) * i for i in range(40)]
    assert r.push_many(msgs) == 40
    assert r.pop_many(10) == msgs[:10]
    assert r.pop_many(100) == msgs[10:]
    assert r.push_many([]) == 0
    # A batch larger than the free space is pushed in part, as a prefix.
    many = [b"p" * 200] * 100
    n = r.push_many(many)
    assert 0 < n < 100
    assert r.pop_many(1000) == many[:n]


def test_pop_many_large_records_take_the_peek_path() -> None:
    with Segment.create(1 << 20) as s:
        r = s.request
        msgs = [b"q" * 20000, b"r" * 5, b"s" * 30000]
        assert r.push_many(msgs) == 3
        assert r.pop_many(10) == msgs


def test_bytes_like_inputs(seg: Segment) -> None:
    r = seg.request
    assert r.push(bytearray(b"ba"))
    assert r.push(memoryview(b"mv"))
    assert r.pop_many() == [b"ba", b"mv"]


def _record_size(payload: bytes) -> int:
    return RECORD.size + -(-len(payload) // ring.RECORD_ALIGN) * ring.RECORD_ALIGN


def _scribble(seg: Segment, index: int, position: int, length: int, kind: int) -> None:
    """Overwrite the header of the record at data offset ``position`` of ring ``index``.

    Writes through the segment's fd: the same pages as the mapping, as a misbehaving peer would.
    """
    fields = HEADER.unpack(os.pread(seg.fd, HEADER.size, 0))
    ctl_size, ring_offsets = fields[6], fields[8:]
    os.pwrite(seg.fd, RECORD.pack(length, kind), ring_offsets[index] + ctl_size + position)


# (length, kind) written over an intact record header, each one that pp_ring_peek must refuse.
RECORD_DAMAGE = [
    pytest.param(SMALL, 0, id="longer-than-the-ring"),
    pytest.param(1000, 0, id="longer-than-published"),
    pytest.param(0xFFFFFFF0, 0, id="huge-length"),
    pytest.param(8, 256, id="kind-out-of-range"),
    pytest.param(0, 0xFFFFFFFF, id="padding-short-of-the-end"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("length", "kind"), RECORD_DAMAGE)
@pytest.mark.parametrize("consume", ["pop", "pop_many", "discard"])
def test_corrupt_record_raises(seg: Segment, length: int, kind: int, consume: str) -> None:
    r = seg.request
    intact = [b"first", b"second message"]
    for m in intact:
        assert r.push(m)
    assert r.push(b"victim") and r.push(b"after")
    _scribble(seg, 0, sum(_record_size(m) for m in intact), length, kind)

    def take() -> list[bytes]:
        if consume == "pop":
            m = r.pop()
            return [] if m is None else [m]
        if consume == "pop_many":
            return r.pop_many(256)
        r.discard()
        return []

    # What the daemon's drain loop does: call until empty or an error. The messages before the
    # damage may come out (in order), then every call raises: nothing past the damaged record is
    # returned, the ring is never reported empty, and no call blocks or spins.
    got: list[bytes] = []
    for _ in range(len(intact) + 1):
        try:
            batch = take()
        except RingCorrupt as exc:
            error = exc
            break
        assert batch, "a corrupt ring must not look empty"
        got.extend(batch)
    else:
        pytest.fail("the damaged record was never reported")
    # What a call took off the ring before it met the damage travels with the error, so that the
    # drain loop can still hand those results over: nothing intact is lost.
    got += error.partial
    assert got == (intact if consume != "discard" else [])
    # A RingError (what Pool._drain_worker catches to kill the worker) saying what is wrong.
    assert isinstance(error, RingError)
    assert error.code < 0
    assert "corrupt record" in str(error) and f"code {error.code}" in str(error)
    for _ in range(3):  # stays refused: no garbage and no skipping past the damage later
        with pytest.raises(RingCorrupt):
            take()
    assert r.wait(0) is True  # a waiter is not put to sleep on a corrupt ring either
    assert r.used > 0
    seg.close()  # the handles can still be detached and the mapping released


@pytest.mark.parametrize("consume", ["pop", "pop_many"])
def test_foreign_record_kind_raises(seg: Segment, consume: str) -> None:
    # A well-formed record of a user kind the Python side does not speak: refused by the binding.
    r = seg.request
    assert r.push(b"odd") and r.push(b"after")
    _scribble(seg, 0, 0, 3, 7)
    with pytest.raises(RingCorrupt, match="unexpected record kind 7"):
        r.pop() if consume == "pop" else r.pop_many()
    # The record is dropped (pop_many drops the batch it came in), never returned as data and not
    # met again: the ring drains to empty instead of raising for ever.
    leftover = r.pop_many()
    assert set(leftover) <= {b"after"}
    assert r.pop() is None and r.used == 0


def _named_segment() -> tuple[Segment, str]:
    s = Segment.create(SMALL, named=True)
    assert s.name is not None and s.name.startswith(shm.SEGMENT_PREFIX)
    return s, s.name


def test_attach_by_name_and_fd(no_leftovers: None) -> None:
    s, name = _named_segment()
    try:
        with Segment.attach(name=name) as other, Segment.attach(fd=s.fd) as third:
            assert other.capacity == third.capacity == SMALL
            s.request.push(b"over")
            assert other.request.pop() == b"over"
            other.result.push(b"back")
            assert third.result.pop() == b"back"
    finally:
        s.close()
        assert s.unlink()
        assert not s.unlink()


def _flip(mask: int) -> Callable[[int], int]:
    return lambda v: v ^ mask


# (field offset, struct format, how to change the value, error): every field that
# pp_segment_check validates, each changed both by a stray bit and to a plausible wrong value.
HEADER_DAMAGE = [
    pytest.param(0, "<B", _flip(0x20), BadMagic, id="magic-first-byte"),
    pytest.param(7, "<B", _flip(0x20), BadMagic, id="magic-last-byte"),
    pytest.param(8, "<B", _flip(0x20), BadVersion, id="version-bit"),
    pytest.param(8, "<I", lambda v: v + 1, BadVersion, id="version-next"),
    pytest.param(12, "<I", _flip(0x20), BadSize, id="header_size-bit"),
    pytest.param(12, "<I", lambda v: v // 2, BadSize, id="header_size-half"),
    pytest.param(16, "<B", _flip(0x20), BadSize, id="segment_size-bit"),
    pytest.param(16, "<Q", lambda v: v + 8, BadSize, id="segment_size-plus-8"),
    pytest.param(24, "<I", _flip(0x20), BadSize, id="ring_count-bit"),
    pytest.param(24, "<I", lambda v: v - 1, BadSize, id="ring_count-one"),
    pytest.param(24, "<I", lambda v: v + 1, BadSize, id="ring_count-three"),
    pytest.param(29, "<B", _flip(0x20), BadSize, id="ring_capacity-not-power-of-two"),
    pytest.param(28, "<I", lambda v: v * 2, BadSize, id="ring_capacity-doubled"),
    pytest.param(32, "<I", _flip(0x20), BadSize, id="ctl_size-bit"),
    pytest.param(32, "<I", lambda v: v - 128, BadSize, id="ctl_size-one-line-pair-less"),
    pytest.param(40, "<Q", _flip(0x80), BadSize, id="ring_offset0-bit"),
    pytest.param(40, "<Q", lambda v: v + 128, BadSize, id="ring_offset0-shifted"),
    pytest.param(48, "<Q", _flip(0x80), BadSize, id="ring_offset1-bit"),
    pytest.param(48, "<Q", lambda v: v - SMALL, BadSize, id="ring_offset1-overlapping"),
]


def test_header_layout_matches_c() -> None:
    with Segment.create(SMALL) as s:
        fields = HEADER.unpack(os.pread(s.fd, HEADER.size, 0))
    magic, version, header_size, size, count, capacity, ctl_size, _, off0, off1 = fields
    assert (magic, version, size, capacity) == (ring.MAGIC, ring.VERSION, ring.segment_size(SMALL), SMALL)
    assert count == 2 and header_size == off0 and off1 == off0 + ctl_size + SMALL


@pytest.mark.parametrize(("offset", "fmt", "change", "error"), HEADER_DAMAGE)
def test_corrupted_header_refused(
    offset: int, fmt: str, change: Callable[[int], int], error: type[Exception], no_leftovers: None
) -> None:
    s, name = _named_segment()
    s.close()
    try:
        fd = shm.open_named(name)
        try:
            field = struct.Struct(fmt)
            (old,) = field.unpack(os.pread(fd, field.size, offset))
            new = change(old)
            assert new != old
            os.pwrite(fd, field.pack(new), offset)
        finally:
            os.close(fd)
        with pytest.raises(error) as refused:
            Segment.attach(name=name)
        assert type(refused.value) is error
        assert isinstance(refused.value, RingError) and refused.value.code < 0
    finally:
        shm.unlink(name)


def test_wrong_mapping_size_refused(no_leftovers: None) -> None:
    s, name = _named_segment()
    s.close()
    try:
        fd = shm.open_named(name)
        os.ftruncate(fd, ring.segment_size(SMALL) - 8)
        os.close(fd)
        with pytest.raises(BadSize):
            Segment.attach(name=name)
        fd = shm.open_named(name)
        os.ftruncate(fd, 0)
        os.close(fd)
        with pytest.raises(BadSize):
            Segment.attach(name=name)
    finally:
        shm.unlink(name)


def test_foreign_object_refused(no_leftovers: None) -> None:
    name = shm.new_name("procpool-test-")
    fd = shm.create_named(name, 1 << 16)
    os.write(fd, b"not a ring segment at all")
    os.close(fd)
    try:
        with pytest.raises(BadMagic):
            Segment.attach(name=name)
    finally:
        shm.unlink(name)


def test_closed_segment_refuses_work() -> None:
    s = Segment.create(SMALL)
    r = s.request
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(RingClosed):
        r.push(b"x")
    with pytest.raises(RingClosed):
        r.pop()
    with pytest.raises(RingClosed):
        r.wait(0)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_doorbell_fires_only_when_armed(seg: Segment) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        producer, consumer = seg.result, seg.result  # one process plays both sides here
        producer.set_doorbell(efd)
        assert producer.push(b"1")
        assert not _readable(efd)
        assert producer.wake_syscalls == 0
        assert consumer.arm() is False  # data present: not armed, drain instead
        assert consumer.pop() == b"1"
        assert consumer.arm() is True
        assert producer.push(b"2")
        assert producer.push(b"3")  # the flag was taken by the first push: no second write
        assert _readable(efd)
        assert os.eventfd_read(efd) == 1
        assert producer.wake_syscalls == 1
        assert consumer.pop_many() == [b"2", b"3"]
        assert consumer.arm() is True
        consumer.disarm()
        assert producer.push(b"4")
        assert not _readable(efd)
        assert producer.wake_syscalls == 1
    finally:
        os.close(efd)


def test_futex_wait_times_out(seg: Segment) -> None:
    r = seg.request
    r.set_spin(1000, 1000)
    t0 = time.monotonic()
    assert r.wait(0.05) is False
    elapsed = time.monotonic() - t0
    assert 0.05 <= elapsed < 1.0
    assert r.blocks == 1


def test_wait_wakes_on_push_from_another_thread(seg: Segment) -> None:
    producer = Segment.attach(fd=seg.fd)
    consumer = seg.request
    consumer.set_spin(0, 0)  # block at once, so the futex path is the one exercised

    def later() -> None:
        time.sleep(0.05)
        producer.request.push(b"wake up")

    thread = threading.Thread(target=later)
    thread.start()
    try:
        t0 = time.monotonic()
        assert consumer.wait(5.0) is True
        assert time.monotonic() - t0 < 2.0
        assert consumer.pop() == b"wake up"
        assert consumer.blocks >= 1
    finally:
        thread.join()
        assert producer.request.wake_syscalls == 1
        producer.close()


def test_notify_without_sleeper_makes_no_syscall(seg: Segment) -> None:
    r = seg.request
    for _ in range(100):
        r.push(b"z")
    assert r.notify() is False
    assert r.wake_syscalls == 0


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("procpool_build_ffi", ROOT / "native" / "build_ffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_c_is_fresh(tmp_path: Path) -> None:
    build = _load_build_script()
    fresh = build.emit(tmp_path / "_ring.c")
    committed = ROOT / "native" / "generated" / "_ring.c"
    assert fresh.read_bytes() == committed.read_bytes(), (
        "native/generated/_ring.c is stale: run `python native/build_ffi.py` and commit the result"
    )


def test_module_name_matches_pyproject() -> None:
    build = _load_build_script()
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    names = [ext["name"] for ext in config["tool"]["setuptools"]["ext-modules"]]
    assert build.MODULE_NAME in names
    assert ring.__name__.startswith(build.MODULE_NAME.split(".")[0])
    assert importlib.util.find_spec(build.MODULE_NAME) is not None


def test_wait_lets_signal_handlers_run() -> None:
    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with Segment.create(SMALL) as s:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            t0 = time.monotonic()
            with pytest.raises(Interrupted):
                s.request.wait(None)
            assert time.monotonic() - t0 < 2.0
            # A handler that returns: the wait goes on for the rest of its timeout.
            hits: list[int] = []
            signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            t0 = time.monotonic()
            assert s.request.wait(0.2) is False
            assert time.monotonic() - t0 >= 0.2
            assert hits == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

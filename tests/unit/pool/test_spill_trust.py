"""Spill objects from a producer that is not trusted: only its own names, only plain files of the
announced size, read with read(2) so that truncation is an error and never a signal."""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from procpoold._ring import lib

from procpoold.pool import ring as ring_module
from procpoold.pool import shm
from procpoold.pool.ring import KIND_SPILL, Segment, SpillError, SpillTooLarge

pytestmark = pytest.mark.unit


@pytest.fixture
def seg() -> Iterator[Segment]:
    s = Segment.create(1 << 16)
    yield s
    s.close()
    shm.cleanup_leftovers(owners={os.getpid()})


def push_ref(seg: Segment, size: int, name: str) -> None:
    ref = struct.pack("<Q", size) + name.encode()
    assert lib.pp_ring_push(seg.result._h, ref, len(ref), KIND_SPILL, 0) == 0


def test_a_spill_truncated_while_it_is_read_is_an_error_not_a_signal(
        seg: Segment, monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic: the writer cuts the object after the reader has opened and checked it, just
    # before the read (with a mapping, reading past the new end was a SIGBUS).
    r = seg.result
    payload = os.urandom(r.max_message * 3)
    assert r.push(payload)
    read = shm.read_spill

    def cut_then_read(fd: int, size: int) -> bytes:
        with open(f"/proc/self/fd/{fd}", "r+b") as writer:  # the writer's own handle on it
            writer.truncate(size // 3)
        return read(fd, size)

    monkeypatch.setattr(shm, "read_spill", cut_then_read)
    before = signal.getsignal(signal.SIGBUS)
    with pytest.raises(SpillError, match="truncated while it was read"):
        r.pop()
    assert signal.getsignal(signal.SIGBUS) == before and r.pop() is None


def test_read_spill_reads_whole_objects_and_closes(tmp_path: Path) -> None:
    name = shm.write_spill(b"abc" * 1000)
    fd = shm.open_spill(name, 3000)
    assert not Path("/dev/shm", name).exists()  # unlinked at open
    assert shm.read_spill(fd, 3000) == b"abc" * 1000
    with pytest.raises(OSError):
        os.fstat(fd)


def test_only_the_producers_own_names_are_opened_or_unlinked(seg: Segment) -> None:
    r = seg.result
    r.spill_from = shm.spill_prefix(1)  # a producer whose pid is 1: none of our names are its
    mine = shm.write_spill(b"x" * 100)
    for name in (mine, "procpool-ring-5-5", "passwd", "procpool-spill-../../x"):
        push_ref(seg, 100, name)
        with pytest.raises(SpillError, match="not a spill object of 'procpool-spill-1-'"):
            r.pop()
    push_ref(seg, 100, mine)
    assert r.discard() == 1  # discarding leaves a foreign name alone too
    assert Path("/dev/shm", mine).exists()
    shm.unlink(mine)


@pytest.mark.parametrize("ref", [b"", b"\x01\x02", struct.pack("<Q", 5), struct.pack("<Q", 5) + b"\xff\xfe"])
def test_a_spill_reference_that_names_nothing_is_refused(seg: Segment, ref: bytes) -> None:
    assert lib.pp_ring_push(seg.result._h, ref, len(ref), KIND_SPILL, 0) == 0
    with pytest.raises(SpillError):
        seg.result.pop()
    assert seg.result.pop() is None


def test_a_fifo_a_hard_link_or_a_wrong_size_is_refused(seg: Segment) -> None:
    r = seg.result
    r.spill_from = shm.spill_prefix(os.getpid())
    fifo = shm.new_name(shm.SPILL_PREFIX)
    os.mkfifo(f"/dev/shm/{fifo}", 0o600)
    push_ref(seg, 0, fifo)
    with pytest.raises(SpillError, match="not a plain file"):  # and no blocking open
        r.pop()
    other = shm.write_spill(b"someone else's" * 10)
    link = shm.new_name(shm.SPILL_PREFIX)
    os.link(f"/dev/shm/{other}", f"/dev/shm/{link}")
    push_ref(seg, 140, link)
    with pytest.raises(SpillError, match="one name"):
        r.pop()
    assert Path("/dev/shm", other).read_bytes() == b"someone else's" * 10
    shm.unlink(other)
    short = shm.write_spill(b"s" * 10)
    push_ref(seg, 11, short)
    with pytest.raises(SpillError, match="holds 10 bytes, not the 11 announced"):
        r.pop()
    assert shm.list_leftovers(shm.spill_prefix(os.getpid())) == []


def test_a_spill_over_the_limit_is_not_touched(seg: Segment) -> None:
    r = seg.result
    r.spill_limit = 1000
    name = shm.write_spill(b"b" * 2000)
    push_ref(seg, 2000, name)
    with pytest.raises(SpillTooLarge) as caught:
        r.pop()
    assert caught.value.size == 2000 and Path("/dev/shm", name).exists()
    shm.unlink(name)


def test_with_a_limit_pop_many_holds_one_spilled_message_at_a_time(seg: Segment) -> None:
    r = seg.result
    big = [bytes([i]) * (r.max_message + 1) for i in range(3)]
    assert r.push_many([b"a", big[0], big[1], b"b", big[2]]) == 5
    r.spill_limit = 1 << 20
    assert r.pop_many(100) == [b"a", big[0]]
    assert r.pop_many(100) == [big[1]]
    assert r.pop_many(100) == [b"b", big[2]]
    assert r.pop_many(100) == []


def test_spill_names_cannot_be_taken_first() -> None:
    a, b = shm.new_name(shm.SPILL_PREFIX), shm.new_name(shm.SPILL_PREFIX)
    assert a.startswith(shm.spill_prefix(os.getpid())) and a != b
    assert len(a.rsplit(".", 1)[1]) == 16  # 64 random bits
    assert shm.owner_pid(a) == os.getpid()
    assert ring_module.SpillTooLarge.__mro__[1] is SpillError


def test_cleanup_leaves_what_it_cannot_remove_and_goes_on() -> None:
    # A task can make a directory under a dead writer's name: the next start must not fail on it.
    dead = 2**22 + 12345  # above the default pid_max: nobody has it
    folder = Path("/dev/shm", f"{shm.spill_prefix(dead)}0.dir")
    folder.mkdir()
    plain = shm.spill_prefix(dead) + "1.x"
    os.close(shm.create_named(plain, 1))
    try:
        assert shm.cleanup_leftovers(shm.SPILL_PREFIX, owners={dead}) == [plain]
        assert folder.is_dir()
    finally:
        folder.rmdir()
        shm.unlink(plain)

"""Two-process stress test of the rings: millions of checksummed messages, both directions.

The parent streams messages of varying lengths (most small, some near the record limit so that the
rings wrap with padding all the time, a few spilled) to a forked child over the request ring. The
child checks each message's sequence number and checksum and echoes it on the result ring; the
parent checks the echoes. Any loss, duplication, reordering or corruption shows up as a sequence
or checksum mismatch. Every so often the parent pauses, so the child's futex sleep is exercised,
and the parent waits for echoes through the eventfd doorbell in some phases and the futex in
others.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import time
import traceback
import zlib
from collections.abc import Iterator

import pytest

from procpoold.pool import shm
from procpoold.pool.ring import Segment

pytestmark = pytest.mark.integration

COUNT = 2_000_000
CAPACITY = 1 << 16
HEAD = struct.Struct("<II")  # sequence number, crc32 of the body
STATS = struct.Struct("<QQ")
BODY = bytes(range(256)) * 40  # 10,240 bytes to slice bodies from
SPILL_EVERY = 250_000
SYNC_EVERY = 100_000


def _length(seq: int) -> int:
    if seq % SPILL_EVERY == 7:
        return 40_000  # larger than a 64 KiB ring's record limit: spilled
    if seq % 997 == 0:
        return 9_000 + seq % 1000  # large records force frequent padding and wrap-around
    return (seq * 7919) % 200


def _body(seq: int) -> bytes:
    n = _length(seq)
    start = seq % 256
    if n <= len(BODY) - start:
        return BODY[start : start + n]
    return (BODY * (n // len(BODY) + 2))[start : start + n]


def _message(seq: int) -> bytes:
    body = _body(seq)
    return HEAD.pack(seq, zlib.crc32(body)) + body


def _check(msg: bytes, want: int) -> None:
    seq, crc = HEAD.unpack_from(msg)
    if seq != want:
        raise AssertionError(f"expected message {want}, got {seq}")
    body = memoryview(msg)[HEAD.size :]
    if len(body) != _length(seq) or zlib.crc32(body) != crc:
        raise AssertionError(f"message {seq} corrupted (length {len(body)})")


def _child_main(seg_fd: int, doorbell: int, count: int) -> None:
    seg = Segment.attach(fd=seg_fd)
    req, res = seg.request, seg.result
    res.set_doorbell(doorbell)
    expected = 0
    while expected < count:
        batch = req.pop_many(128)
        if not batch:
            req.wait(10.0)
            continue
        for msg in batch:
            _check(msg, expected)
            expected += 1
        done = 0
        while done < len(batch):
            done += res.push_many(batch[done:])
    while not res.push(STATS.pack(req.blocks, res.wake_syscalls)):
        pass
    seg.close()


@pytest.fixture
def child_reaper() -> Iterator[list[int]]:
    """Pids appended here are killed if still running and always reaped; spills are removed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    leftovers = shm.cleanup_leftovers(shm.SPILL_PREFIX, owners={os.getpid(), *pids})
    assert leftovers == []


@pytest.mark.timeout(90)
def test_two_process_stress(child_reaper: list[int]) -> None:
    seg = Segment.create(CAPACITY)
    efd = os.eventfd(0, os.EFD_NONBLOCK)  # inherited by the child, which rings it
    seg.result.set_spin(2_000, 10_000)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            _child_main(seg.fd, efd, COUNT)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    child_reaper.append(pid)
    req, res = seg.request, seg.result
    poller = select.poll()
    poller.register(efd, select.POLLIN)
    sent = received = 0
    doorbell_waits = syncs = 0
    limit = SYNC_EVERY  # send no further than this until every echo is back
    must_block = False
    deadline = time.monotonic() + 80
    try:
        while received < COUNT:
            assert time.monotonic() < deadline, f"stalled at sent={sent} received={received}"
            # Send a batch of varying size (sometimes one by one).
            n = min(1 + sent % 97, limit - sent)
            if n > 0:
                batch = [_message(s) for s in range(sent, sent + n)]
                if n % 5 == 0:  # one by one: the index of the first refused push is the count
                    pushed = next((i for i, m in enumerate(batch) if not req.push(m)), len(batch))
                else:
                    pushed = req.push_many(batch)
                sent += pushed
            # Drain echoes.
            echoes = res.pop_many(min(256, COUNT - received)) if not must_block else []
            for msg in echoes:
                _check(msg, received)
                received += 1
            if received == limit and limit < COUNT:
                # Sync point: the child runs dry and sleeps on its futex; right after, we wait for
                # the first echo, which takes a futex wakeup of the child, so we block as well.
                time.sleep(0.002)
                limit = min(COUNT, limit + SYNC_EVERY)
                syncs += 1
                must_block = True
                continue
            if echoes or (not must_block and sent < limit and req.free > 0):
                continue
            must_block = False
            # Nothing to do until the child answers: block, alternating the two kinds of wait.
            if syncs % 2:
                if res.arm():
                    doorbell_waits += 1
                    assert poller.poll(10_000), "doorbell never rang"
                    os.eventfd_read(efd)
            else:
                assert res.wait(10.0)
        assert sent == received == COUNT
        stats = None
        while stats is None:
            stats = res.pop()
            if stats is None:
                res.wait(10.0)
        child_blocks, child_wakes = STATS.unpack(stats)
        _, status = os.waitpid(pid, 0)
        child_reaper.remove(pid)
        assert os.waitstatus_to_exitcode(status) == 0
        assert res.pop() is None and req.used == 0
        assert child_blocks > 0, "the child never blocked: the futex path was not exercised"
        assert doorbell_waits > 0, "the eventfd doorbell was never used"
        assert res.blocks > 0, "the parent never blocked on the futex"
        assert child_wakes > 0
    finally:
        seg.close()
        os.close(efd)


@pytest.mark.timeout(30)
def test_idle_consumer_uses_no_cpu(child_reaper: list[int]) -> None:
    with Segment.create(1 << 12) as seg:
        pid = os.fork()
        if pid == 0:  # child: wait idle for a second with the default (adaptive) spin budget
            code = 0
            try:
                child = Segment.attach(fd=seg.fd)
                for _ in range(10):
                    child.request.wait(0.1)
                code = 0 if child.request.blocks == 10 else 2
                child.close()
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        child_reaper.append(pid)
        _, status, usage = os.wait4(pid, 0)
        child_reaper.remove(pid)
    assert os.waitstatus_to_exitcode(status) == 0
    # Ten waits of 100 ms: at most ten short spins of CPU, the rest asleep in the kernel.
    assert usage.ru_utime + usage.ru_stime < 0.05

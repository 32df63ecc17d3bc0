"""Benchmark of the shared-memory rings through the cffi binding, between two processes.

Run from the repository root (with the extension built): ``python bench/ring_bench.py``.

Scenarios, each in a freshly forked child (the "worker") that echoes or consumes:

* round trip, both sides spinning: the parent pushes a request, the child (spinning in
  ``Ring.wait``) pops it and pushes it back on the result ring, the parent spins for it;
* round trip, adaptive: the default spin budget (spin up to tens of microseconds, then futex);
* round trip, blocking: no spinning at all, every hand-off is a futex wakeup;
* round trip, daemon style: the worker blocks on the futex; the parent arms the result ring's
  eventfd doorbell and blocks in ``select.poll`` as the daemon's event loop does;
* throughput: one-way messages per second, one by one and with ``push_many``/``pop_many`` batches.

Prints p50/p99 latencies in microseconds and messages per second.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import time
from collections.abc import Callable

from procpoold.pool.ring import Ring, Segment

CAPACITY = 1 << 20
SPIN_FOREVER = 4_000_000_000  # ns; the C budget is a uint32


def _child(seg_fd: int, body: Callable[[Ring, Ring], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            seg = Segment.attach(fd=seg_fd)
            body(seg.request, seg.result)
            seg.close()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench child failed with status {status}")


def _echo(spin: tuple[int, int], count: int, doorbell: int = -1) -> Callable[[Ring, Ring], None]:
    def body(req: Ring, res: Ring) -> None:
        req.set_spin(*spin)
        if doorbell >= 0:
            res.set_doorbell(doorbell)
        for _ in range(count):
            while True:
                msg = req.pop()
                if msg is not None:
                    break
                req.wait()
            while not res.push(msg):
                pass

    return body


def round_trip(mode: str, count: int, size: int) -> list[float]:
    """Round trips in microseconds for one scenario."""
    spins = {
        "spinning": (SPIN_FOREVER, SPIN_FOREVER),
        "adaptive": (2_000, 50_000),
        "blocking": (0, 0),
        "daemon": (2_000, 50_000),
    }
    spin = spins[mode]
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if mode == "daemon" else -1
    seg = Segment.create(CAPACITY)
    pid = _child(seg.fd, _echo(spin, count + 1, efd))
    req, res = seg.request, seg.result
    res.set_spin(*spin)
    poller = select.poll()
    if efd >= 0:
        poller.register(efd, select.POLLIN)
    msg = os.urandom(size)
    times: list[float] = []
    clock = time.perf_counter_ns
    try:
        for i in range(count + 1):
            t0 = clock()
            req.push(msg)
            if efd >= 0:
                while True:
                    got = res.pop()
                    if got is not None:
                        break
                    if res.arm():
                        poller.poll()
                        os.eventfd_read(efd)
            else:
                while True:
                    got = res.pop()
                    if got is not None:
                        break
                    res.wait()
            t1 = clock()
            if i:  # the first one includes the child's start-up
                times.append((t1 - t0) / 1000)
            if got != msg:
                raise SystemExit("echo mismatch")
    finally:
        _reap(pid)
        seg.close()
        if efd >= 0:
            os.close(efd)
    return times


def throughput(count: int, size: int, batch: int) -> float:
    """One-way messages per second, pushing ``batch`` at a time (1: one by one)."""
    seg = Segment.create(CAPACITY)

    def body(req: Ring, res: Ring) -> None:
        got = 0
        while got < count:
            if batch > 1:
                got += len(req.pop_many(batch))
            elif req.pop() is not None:
                got += 1
            else:
                req.wait()
        res.push(b"done")

    pid = _child(seg.fd, body)
    req, res = seg.request, seg.result
    msgs = [os.urandom(size)] * batch
    try:
        t0 = time.perf_counter()
        sent = 0
        if batch > 1:
            while sent < count:
                sent += req.push_many(msgs[: min(batch, count - sent)])
        else:
            msg = msgs[0]
            while sent < count:
                if req.push(msg):
                    sent += 1
        while res.pop() is None:
            res.wait()
        elapsed = time.perf_counter() - t0
    finally:
        _reap(pid)
        seg.close()
    return count / elapsed


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000, help="round trips per scenario")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--messages", type=int, default=2_000_000, help="messages per throughput run")
    args = parser.parse_args(argv)

    print(f"ring round trip, two processes, {args.size}-byte messages, {args.count} round trips each")
    print(f"{'scenario':<34}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    for mode, label in [
        ("spinning", "both spinning"),
        ("adaptive", "adaptive spin then futex"),
        ("blocking", "futex only (no spin)"),
        ("daemon", "worker futex, parent eventfd+poll"),
    ]:
        n = args.count if mode in ("spinning", "adaptive") else max(1000, args.count // 10)
        times = round_trip(mode, n, args.size)
        print(
            f"{label:<34}{_pct(times, 0.5):>10.2f}{_pct(times, 0.99):>10.2f}{statistics.fmean(times):>10.2f}"
        )
    print()
    print(f"one-way throughput, {args.size}-byte messages, {args.messages} messages")
    print(f"{'batch':<34}{'msgs/s':>14}")
    for batch in (1, 16, 256):
        rate = throughput(args.messages, args.size, batch)
        print(f"{batch:<34}{rate:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

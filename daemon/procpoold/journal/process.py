"""The forwarder process, as the daemon runs it: the channel it reads, its start, its reaping, its stop.

The forwarder (:mod:`procpoold.journal.forwarder`) is a child process of the daemon, started with
fork and exec (so it is safe after ZeroMQ's threads exist) on a :class:`Channel`: a shared-memory
segment (a memfd the daemon keeps: nothing is named in /dev/shm) and a doorbell eventfd. It starts
from a snapshot of the sink's name tables (passed in a memfd), is reaped through a pidfd watched
by the loop, and is started again by the sink if it dies, at most :data:`MAX_RESTARTS` times in
:data:`RESTART_WINDOW` seconds. :class:`ForwarderProcess` owns the process; the sink
(:mod:`procpoold.journal.sink`) decides when to start, restart or stop it, and what becomes of
the records in the ring. Everything here runs in the daemon, on its loop thread (``stop`` also
at shutdown, after the loop).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from procpoold.journal import encoding as enc
from procpoold.pool.ring import MAX_CAPACITY, Ring, Segment

#: Bytes of ring per record of ``queue_size`` (a line of output is about 50 bytes with its header).
_BYTES_PER_RECORD = 128
_MIN_RING = 256 * 1024
#: A forwarder that dies this often within RESTART_WINDOW seconds is not started again: the daemon
#: writes its records itself from then on.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class LoopLike(Protocol):
    def add_reader(self, source: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, source: int) -> None: ...
    def call_last(self, callback: Callable[[], None]) -> None: ...
    def call_soon(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


def ring_capacity(queue_size: int) -> int:
    """Bytes of ring for a log queue of ``queue_size`` records (a power of two, within bounds)."""
    want = max(_MIN_RING, queue_size * _BYTES_PER_RECORD)
    size = 1
    while size < want:
        size *= 2
    return min(size, MAX_CAPACITY)


class Channel:
    """The segment shared with the forwarder: its request ring (records, the daemon produces), its
    result ring (acknowledgements, the daemon consumes), the doorbell eventfd, and a second
    mapping whose request ring the daemon consumes itself when it takes over from a dead
    forwarder (a ring handle is either a producer or a consumer)."""

    def __init__(self, capacity: int) -> None:
        self.segment = Segment.create(capacity)
        self.ring = self.segment.request
        self.acks = self.segment.result
        self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.consumer = Segment.attach(fd=self.segment.fd)

    def close(self) -> None:
        os.close(self.efd)
        self.consumer.close()
        self.segment.close()


class ForwarderProcess:
    """One forwarder process at a time: started, watched through a pidfd, reaped, stopped.

    Holds no records and decides nothing about them: the sink calls :meth:`spawn` (with its lock
    held), is called back by the loop when the process exits (and then calls :meth:`reap`), and
    calls :meth:`send_stop` and :meth:`wait_stopped` at its stop.
    """

    def __init__(self, target: str, journal_path: str) -> None:
        self.target = target
        self.journal_path = journal_path
        #: the forwarder's watermark file (see procpoold.journal.forwarder); None: none
        self.watermark: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._loop: LoopLike | None = None
        #: when it died lately (within RESTART_WINDOW)
        self._deaths: list[float] = []
        #: how many times it died (and was reaped) so far
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The pid of the running forwarder (None: none runs)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a forwarder was started and has not been reaped yet."""
        return self._proc is not None

    @property
    def deaths(self) -> int:
        """How many times it died within the last RESTART_WINDOW seconds (as of the last reap)."""
        return len(self._deaths)

    def spawn(self, chan: Channel, tables: bytes, loop: LoopLike | None, on_exit: Callable[[], None]) -> None:
        """Start a forwarder on ``chan`` with the name tables ``tables``; watch its pidfd in
        ``loop`` (``on_exit`` is called there when it exits). Raises what starting it raises."""
        fd = os.memfd_create("procpool-journal-tables", os.MFD_CLOEXEC)
        try:
            os.write(fd, tables)
            os.lseek(fd, 0, os.SEEK_SET)
            fds = (chan.segment.fd, chan.efd, fd)
            argv = [sys.executable, "-m", "procpoold.journal", "--segment-fd", str(fds[0]),
                    "--doorbell-fd", str(fds[1]), "--tables-fd", str(fds[2]), "--target", self.target,
                    "--journal-path", self.journal_path, "--parent", str(os.getpid())]
            if self.watermark is not None:
                argv += ["--watermark", self.watermark]
            self._proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(fd)
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._loop = loop
        if loop is not None:
            loop.add_reader(self._pidfd, on_exit)

    def _unwatch(self) -> None:
        if self._pidfd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def reap(self) -> tuple[int, str, bool]:
        """The forwarder exited (its pidfd is readable): wait for it and stop watching it.

        Returns its pid, how it ended, and whether it died too often to be started again
        (more than MAX_RESTARTS times within RESTART_WINDOW seconds).
        """
        proc = self._proc
        assert proc is not None
        code = proc.wait()
        self._unwatch()
        self._proc = None
        self.restarts += 1
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW] + [now]
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return proc.pid, how, len(self._deaths) > MAX_RESTARTS

    def send_stop(self, ring: Ring, deadline: float) -> None:
        """Put a STOP record into ``ring`` (waiting for room until ``deadline``, or until the
        forwarder exits): it writes what precedes it, then exits."""
        proc = self._proc
        assert proc is not None
        while not ring.push(enc.STOP) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until ``deadline`` for the forwarder to exit, SIGKILL it if it has not, reap it."""
        proc = self._proc
        assert proc is not None
        with contextlib.suppress(ValueError, OSError):
            select.select([self._pidfd], [], [], max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._unwatch()
        self._proc = None

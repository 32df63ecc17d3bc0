"""The daemon's single-threaded event loop: one poll set, timers, signals.

One loop owns all mutable state of the daemon. It blocks in a single
``zmq.Poller.poll`` over the control socket, the signal wakeup fd and any fd an
executor registers (worker doorbells, process pidfds, output pipes), with a
timeout set by the nearest timer. An idle daemon therefore sleeps in the
kernel: no periodic wakeups, no CPU.

Signal handlers do nothing but let CPython write the signal number to the
wakeup fd (``signal.set_wakeup_fd``); the loop reads it and dispatches to the
callback registered for that signal, in the loop's own context.

Every callback is contained: an exception that escapes one (a reader, a timer,
a ``call_soon``/``call_last`` callback or a signal handler) is logged with its
traceback and the loop goes on with the next one. Callbacks that belong to a
request or an attempt catch their own exceptions first, so that only that
request or attempt fails (see the control server and the scheduler); this is
the last line, so that no input ever stops the daemon.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

log = logging.getLogger("procpoold.loop")

Callback = Callable[[], None]
Pollable = zmq.Socket[Any] | int

#: A callback that keeps raising is logged with its traceback at most once per this many seconds
#: (with the number of failures in between), so that it cannot flood the journal.
FAILURE_LOG_INTERVAL = 10.0

#: The longest single poll (ms): a far-future timer (a timeout of ten years) is waited for in
#: steps, so the poll timeout always fits the C int that zmq_poll takes.
MAX_POLL_MS = 3_600_000


@dataclass(order=True)
class Timer:
    """A pending call; :meth:`cancel` makes it a no-op."""

    when: float
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    #: the loop's timer heap, which counts its cancelled timers (see EventLoop._compact)
    heap: _TimerHeap | None = field(default=None, compare=False, repr=False)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _noop  # what the callback holds (a waiter's reply) is freed now
            if self.heap is not None:
                self.heap.cancelled += 1


def _noop() -> None:
    pass


class _TimerHeap(list[Timer]):
    """The loop's timers (a heap) and how many of them are cancelled but not yet removed."""

    cancelled: int = 0


#: A heap with more cancelled timers than this, and more than half of it cancelled, is rebuilt
#: without them: a timer cancelled long before it is due (a wait answered early, with a timeout of
#: years) would otherwise stay in the heap, and the heap would grow with every one.
COMPACT_AT = 256


class EventLoop:
    """Readers, timers and signals on one thread. Times are ``time.monotonic()`` seconds."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._readers: dict[Pollable, Callback] = {}
        self._timers = _TimerHeap()
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self._last: list[Callback] = []
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._sig_r: socket.socket | None = None
        self._sig_w: socket.socket | None = None
        self._old_wakeup_fd = -1
        self._stopping = False
        #: monotonic time of the last completed loop iteration (the pool uses it to tell iterations apart).
        self.last_tick = time.monotonic()
        #: per failing callback: when its traceback was last logged, and failures not logged since
        self._failures: dict[str, tuple[float, int]] = {}

    # -- registration -------------------------------------------------------------------------

    def add_reader(self, source: Pollable, callback: Callback) -> None:
        """Call ``callback`` whenever ``source`` (a zmq socket or an fd) is readable."""
        self._readers[source] = callback
        self._poller.register(source, zmq.POLLIN)

    def remove_reader(self, source: Pollable) -> None:
        if self._readers.pop(source, None) is not None:
            self._poller.unregister(source)

    def call_at(self, when: float, callback: Callback) -> Timer:
        """Call ``callback`` at monotonic time ``when`` (an infinity is never; NaN is refused)."""
        if math.isnan(when):
            raise ValueError("a timer cannot be set at NaN")
        timers = self._timers
        if timers.cancelled > COMPACT_AT and timers.cancelled * 2 > len(timers):
            self._compact()
        timer = Timer(when, next(self._seq), callback, heap=timers)
        heapq.heappush(timers, timer)
        return timer

    def _compact(self) -> None:
        """Drop the cancelled timers from the heap (O(n), and only once half of it is cancelled)."""
        timers = self._timers
        timers[:] = [t for t in timers if not t.cancelled]
        heapq.heapify(timers)
        timers.cancelled = 0

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback`` at the end of the current iteration (before the next poll)."""
        self._soon.append(callback)

    def call_last(self, callback: Callback) -> None:
        """Run ``callback`` once nothing else is due in this iteration (after every call_soon,
        including those scheduled meanwhile): for work that batches what the iteration did."""
        self._last.append(callback)

    def add_signal_handler(self, signum: int, handler: Callable[[int], None]) -> None:
        """Dispatch ``signum`` to ``handler`` from the loop (never from the signal context)."""
        if self._sig_r is None:
            self._sig_r, self._sig_w = socket.socketpair()
            self._sig_r.setblocking(False)
            self._sig_w.setblocking(False)
            self._old_wakeup_fd = signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
            self.add_reader(self._sig_r.fileno(), self._read_signals)
        self._signal_handlers[signum] = handler
        # The Python-level handler only has to exist; the wakeup fd carries the news.
        signal.signal(signum, lambda _n, _f: None)

    def _read_signals(self) -> None:
        assert self._sig_r is not None
        try:
            data = self._sig_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                try:
                    handler(signum)
                except Exception:
                    self._failed(f"signal {signum} handler", handler)

    # -- running ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Leave :meth:`run` after the current iteration."""
        self._stopping = True

    def _next_timeout_ms(self) -> int | None:
        if self._soon or self._last:
            return 0
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
            self._timers.cancelled -= 1
        if not self._timers:
            return None  # block until something happens: an idle daemon uses no CPU
        delay = self._timers[0].when - time.monotonic()
        if not delay * 1000 < MAX_POLL_MS:  # far away, or infinite
            return MAX_POLL_MS
        return max(0, int(delay * 1000) + 1)

    def run_once(self, timeout_ms: int | None = None) -> None:
        """Poll once and run everything that became due (each callback contained: see above)."""
        events = self._poller.poll(self._next_timeout_ms() if timeout_ms is None else timeout_ms)
        for source, _mask in events:
            callback = self._readers.get(source)
            if callback is not None:
                try:
                    callback()
                except Exception:
                    self._failed("reader", callback)
        now = time.monotonic()
        while self._timers and (self._timers[0].cancelled or self._timers[0].when <= now):
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                self._timers.cancelled -= 1
            else:
                timer.heap = None  # out of the heap: a late cancel() no longer counts
                try:
                    timer.callback()
                except Exception:
                    self._failed("timer", timer.callback)
        while self._soon or self._last:
            while self._soon:
                soon, self._soon = self._soon, []
                for callback in soon:
                    try:
                        callback()
                    except Exception:
                        self._failed("call_soon", callback)
            last, self._last = self._last, []
            for callback in last:
                try:
                    callback()
                except Exception:
                    self._failed("call_last", callback)
        self.last_tick = time.monotonic()

    def run(self) -> None:
        """Run until :meth:`stop`."""
        self._stopping = False
        while not self._stopping:
            try:
                self.run_once()
            except InterruptedError:  # pragma: no cover - PEP 475 retries most of these
                continue

    def _failed(self, kind: str, callback: Callable[..., Any]) -> None:
        """Log the exception being handled, with its traceback; the loop goes on.

        The same callback failing again within FAILURE_LOG_INTERVAL is only counted."""
        name = getattr(callback, "__qualname__", None) or type(callback).__name__
        key = f"{kind}:{name}"
        now = time.monotonic()
        last, skipped = self._failures.get(key, (-math.inf, 0))
        if now - last < FAILURE_LOG_INTERVAL:
            self._failures[key] = (last, skipped + 1)
            return
        self._failures[key] = (now, 0)
        more = f" ({skipped} more failure(s) not logged since the last)" if skipped else ""
        log.exception("a %s callback (%s) raised; the loop goes on%s", kind, name, more)

    def close(self) -> None:
        """Restore signal dispositions and release the wakeup socket pair."""
        for signum in self._signal_handlers:
            signal.signal(signum, signal.SIG_DFL)
        self._signal_handlers.clear()
        if self._sig_r is not None and self._sig_w is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self.remove_reader(self._sig_r.fileno())
            self._sig_r.close()
            self._sig_w.close()
            self._sig_r = self._sig_w = None
        for source in list(self._readers):
            self.remove_reader(source)

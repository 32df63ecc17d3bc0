"""The event loop: timers, readers, signals, and blocking when idle."""

from __future__ import annotations

import os
import signal
import time

from procpoold.loop import EventLoop


def test_timers_run_in_order_and_cancel() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.call_later(0.02, lambda: seen.append("b"))
    loop.call_later(0.01, lambda: seen.append("a"))
    t = loop.call_later(0.015, lambda: seen.append("x"))
    t.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    loop.close()
    assert seen == ["a", "b"]


def test_reader_and_signal_dispatch() -> None:
    loop = EventLoop()
    r, w = os.pipe()
    got: list[object] = []

    def on_read() -> None:
        got.append(os.read(r, 10))

    loop.add_reader(r, on_read)
    loop.add_signal_handler(signal.SIGUSR1, lambda n: (got.append(n), loop.stop()))
    os.write(w, b"hi")
    loop.run_once(0)
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.run()
    loop.close()
    os.close(r)
    os.close(w)
    assert got == [b"hi", signal.SIGUSR1]


def test_idle_loop_has_no_timeout() -> None:
    loop = EventLoop()
    assert loop._next_timeout_ms() is None  # blocks in poll: no periodic wakeups
    loop.call_at(time.monotonic() + 5, lambda: None)
    timeout = loop._next_timeout_ms()
    assert timeout is not None and 4000 < timeout <= 5001
    loop.close()


def test_call_last_runs_after_every_soon_callback_of_the_iteration() -> None:
    loop = EventLoop()
    order: list[str] = []

    def first() -> None:
        order.append("soon")
        loop.call_soon(lambda: order.append("soon, scheduled by soon"))

    def last() -> None:
        order.append("last")
        loop.call_soon(lambda: order.append("soon, scheduled by last"))

    loop.call_last(last)
    loop.call_soon(first)
    assert loop._next_timeout_ms() == 0
    loop.run_once(0)
    assert order == ["soon", "soon, scheduled by soon", "last", "soon, scheduled by last"]
    assert loop._next_timeout_ms() is None
    loop.close()

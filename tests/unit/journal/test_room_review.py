"""A producer whose resume callback raises does not strand the other paused producers: each
of them is still resumed (the loop logs the one exception)."""

from __future__ import annotations

import logging

import pytest

from procpoold.journal import LogSink, StderrSender
from procpoold.loop import EventLoop


def test_a_resume_callback_that_raises_does_not_strand_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink(sender=StderrSender(), queue_size=100, policy="block")
    loop = EventLoop()
    sink.start(loop)
    woken: list[str] = []

    def bad() -> None:
        woken.append("bad")
        raise RuntimeError("injected")

    try:
        sink.when_room(lambda: woken.append("first"))
        sink.when_room(bad)
        sink.when_room(lambda: woken.append("last"))
        with caplog.at_level(logging.ERROR, logger="procpoold.loop"):
            for _ in range(5):
                loop.run_once(50)
        assert woken == ["first", "bad", "last"]
        assert any(r.exc_info for r in caplog.records)
    finally:
        sink.close()
        loop.close()

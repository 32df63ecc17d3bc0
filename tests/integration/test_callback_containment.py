"""A daemon in this process, with an executor injected through its constructor, and an exception
injected into each kind of loop callback (reader, timer, call_soon, call_last, signal handler,
and the scheduler's own: an executor's submit and a timeout's stop). Each is logged with its
traceback; the attempt it belongs to fails with the reason; and the daemon goes on serving a
real client on its real socket throughout."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from procpool.client import Client
from procpoold.config import Config
from procpoold.engines import AttemptSpec, ExecutorEvents, Outcome, StopReason
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.supervisor import Daemon
from tests.support.stub_engine import StubEngine

pytestmark = pytest.mark.timeout(60)


class ScriptedExecutor(StubEngine):
    """Completes every attempt at once, except ``cmd: ["raise-at-submit"]`` (submit raises) and
    ``cmd: ["raise-at-stop"]`` (runs until stopped, and stopping it raises)."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.loop: EventLoop | None = None
        self.events: ExecutorEvents | None = None

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        self.loop, self.events = loop, events

    def free_slots(self) -> int:
        return 8 - len(self.running)

    def submit(self, spec: AttemptSpec) -> None:
        assert self.loop is not None and self.events is not None
        program = (spec.cmd or ["?"])[0]
        if program == "raise-at-submit":
            raise ValueError("embedded null byte")
        self.running.add(spec.attempt_id)
        self.events.attempt_started(spec.attempt_id, None, None)
        if program != "raise-at-stop":
            self.loop.call_soon(lambda: self._finish(spec.attempt_id))

    def _finish(self, attempt_id: str) -> None:
        assert self.events is not None
        self.running.discard(attempt_id)
        self.events.attempt_finished(Outcome(attempt_id, "completed", exit_code=0))

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        raise RuntimeError("the process table is on fire")

    def shutdown(self, grace: float) -> None:
        self.running.clear()


def boom() -> None:
    raise RuntimeError("injected")


def test_an_exception_in_any_callback_leaves_the_daemon_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    socket_path = tmp_path / "control.sock"
    config = Config(socket=socket_path, state_dir=tmp_path / "state", store=False, workers=1)
    executor = ScriptedExecutor()
    daemon = Daemon(config, Engines([executor]))
    results: dict[str, Any] = {}
    failures: list[BaseException] = []
    r, w = os.pipe()

    def client_side() -> None:
        try:
            with Client(socket_path, timeout=10) as client:
                results["ping"] = client.ping()["pid"]
                os.write(w, b"x")  # the reader that raises
                os.kill(os.getpid(), signal.SIGUSR2)  # the signal handler that raises
                results["ping after"] = client.ping()["pid"]
                job = client.submit({"name": "a", "root": {"cmd": ["raise-at-submit"]}}, wait=10)
                results["submit raised"] = job["status"]["tasks"][0]
                job = client.submit(
                    {"name": "b", "root": {"cmd": ["raise-at-stop"], "timeout": 0.05}}, wait=10
                )
                results["stop raised"] = job["status"]["tasks"][0]
                results["fine"] = client.submit({"name": "c", "root": {"cmd": ["ok"]}}, wait=10)["state"]
                client.call("shutdown")
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            daemon.loop.call_soon(daemon.loop.stop)  # (the loop wakes at its 0.5 s timer below)

    try:
        daemon.start()
        daemon.loop.add_reader(r, boom)
        daemon.loop.add_signal_handler(signal.SIGUSR2, lambda _n: boom())
        daemon.loop.call_soon(boom)
        daemon.loop.call_last(boom)
        daemon.loop.call_later(0.01, boom)
        daemon.loop.call_later(0.5, lambda: None)
        thread = threading.Thread(target=client_side)
        with caplog.at_level(logging.ERROR):
            thread.start()
            daemon.run()
            thread.join(10)
    finally:
        daemon.close()
        os.close(r)
        os.close(w)
    assert not failures, failures
    assert results["ping"] == results["ping after"] == os.getpid()
    submit_raised = results["submit raised"]
    assert submit_raised["state"] == "failed"
    assert "could not be started: ValueError: embedded null byte" in submit_raised["error"]["message"]
    stop_raised = results["stop raised"]
    assert stop_raised["state"] == "failed"
    assert "could not be stopped at its timeout" in stop_raised["error"]["message"]
    assert results["fine"] == "completed"
    logged = " | ".join(r.getMessage() for r in caplog.records if r.exc_info)
    for kind in ("reader", "timer", "call_soon", "call_last", "signal", "could not be started",
                 "could not be stopped"):
        assert kind in logged, logged

"""The daemon object: owns the event loop, the control socket and (later) the scheduler.

Everything here runs on the loop's thread. The lifecycle is::

    start()  -> bind the control socket, install signal handlers, READY=1
    run()    -> the loop, until a signal or a shutdown request
    close()  -> STOPPING=1, close the socket (its file is removed)
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import zmq

from procpool.contract.errors import ProcpoolError
from procpool.contract.version import PROTOCOL_VERSION, __version__
from procpoold import systemd
from procpoold.config import Config
from procpoold.control.handlers import build_handlers
from procpoold.control.server import ControlServer, Deferred
from procpoold.engines import Executor
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler

log = logging.getLogger("procpoold")


class Daemon:
    """One running procpoold."""

    def __init__(self, config: Config, executors: dict[str, Executor], inherited_fd: int | None = None) -> None:
        self.config = config
        self.loop = EventLoop()
        self.executors = executors
        # Executors that fork (the worker pool's zygote) must do it before any thread exists,
        # and the ZeroMQ context below starts I/O threads.
        for executor in {id(e): e for e in executors.values()}.values():
            executor.prefork()
        self.scheduler = Scheduler(self.loop, executors, aging=config.priority_aging)
        self.scheduler.listeners.append(self._on_finished)
        self._waits: dict[str, list[Deferred]] = {}
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.stop_reason: str | None = None
        self.control = ControlServer(
            self.ctx,
            config.socket,
            build_handlers(self),
            config.max_message_size,
            group=config.group,
            inherited_fd=inherited_fd,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def _unique_executors(self) -> list[Executor]:
        return list({id(e): e for e in self.executors.values()}.values())

    def start(self) -> None:
        """Bind the socket and announce readiness."""
        for executor in self._unique_executors():
            executor.start(self.loop, self.scheduler)
        self.control.bind()
        self.loop.add_reader(self.control.sock, self.control.on_readable)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.handle_stop_signal)
        log.info(
            "procpoold %s ready on %s (pid %d, %d workers)",
            __version__,
            self.config.socket,
            os.getpid(),
            self.config.workers,
        )
        systemd.notify(READY=1, STATUS="ready")

    def run(self) -> None:
        self.loop.run()

    def close(self) -> None:
        """Release everything the daemon holds."""
        systemd.notify(STOPPING=1, STATUS=f"stopping: {self.stop_reason or 'closing'}")
        self.scheduler.stop_accepting()
        for executor in self._unique_executors():
            try:
                executor.shutdown(self.config.drain_timeout)
            except Exception:
                log.exception("executor %s did not shut down cleanly", executor.name)
        self.control.close()
        self.loop.close()
        self.ctx.term()
        log.info("procpoold stopped (%s)", self.stop_reason or "closed")

    def handle_stop_signal(self, signum: int) -> None:
        self.request_shutdown(f"received {signal.Signals(signum).name}")

    # -- DaemonAPI ----------------------------------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        """Stop after the current iteration (so a shutdown request still gets its reply)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        self.loop.call_soon(self.loop.stop)

    def info(self) -> dict[str, Any]:
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}

    def summary(self) -> dict[str, Any]:
        return {
            **self.info(),
            "started_at": self.started_at,
            "uptime": time.monotonic() - self._started_mono,
            "socket": os.fspath(self.config.socket),
            "workers": {"configured": self.config.workers},
            "executors": {e.name: e.info() for e in self._unique_executors()},
            "jobs": {"by_state": self.scheduler.by_state(), "queued": self.scheduler.queued(),
                     "running": self.scheduler.running()},
            "counters": dict(self.scheduler.counters),
            "requests": {"served": self.control.requests_served, "errors": self.control.errors_replied},
        }

    def submit(self, job: dict[str, Any], uid: int | None, after: list[str] | None) -> dict[str, Any]:
        accepted, existing = self.scheduler.submit(job, uid, after)
        return {"id": accepted.id, "name": accepted.spec.name, "existing": existing,
                "tasks": len(accepted.tasks)}

    def job_status(self, ref: str) -> dict[str, Any]:
        job, index = self.scheduler.resolve(ref)
        if index is not None:
            return self.scheduler.finished_status(ref)
        return job.status()

    def job_list(self, state: str | None, since: float | None, limit: int | None) -> list[dict[str, Any]]:
        return self.scheduler.job_list(state, since, limit)

    def cancel(self, ref: str) -> dict[str, Any]:
        return self.scheduler.cancel(ref)

    def wait(self, ref: str, timeout: float) -> dict[str, Any] | Deferred:
        """Answer now if ``ref`` has finished, else when it finishes or ``timeout`` runs out."""
        status = self.scheduler.finished_status(ref)
        if status["finished"] or timeout <= 0:
            return status
        deferred = Deferred()
        self._waits.setdefault(ref, []).append(deferred)

        def expire() -> None:
            waits = self._waits.get(ref, [])
            if deferred in waits:
                waits.remove(deferred)
            try:
                deferred.resolve(self.scheduler.finished_status(ref))
            except ProcpoolError as exc:
                deferred.reject(exc)

        self.loop.call_later(timeout, expire)
        return deferred

    def _on_finished(self, ref: str) -> None:
        for deferred in self._waits.pop(ref, []):
            deferred.resolve(self.scheduler.finished_status(ref))

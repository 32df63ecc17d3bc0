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

from procpool.contract.version import PROTOCOL_VERSION, __version__
from procpoold import systemd
from procpoold.config import Config
from procpoold.control.handlers import build_handlers
from procpoold.control.server import ControlServer
from procpoold.loop import EventLoop

log = logging.getLogger("procpoold")


class Daemon:
    """One running procpoold."""

    def __init__(self, config: Config, inherited_fd: int | None = None) -> None:
        self.config = config
        self.loop = EventLoop()
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

    def start(self) -> None:
        """Bind the socket and announce readiness."""
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
            "jobs": {"by_state": {}},
            "requests": {"served": self.control.requests_served, "errors": self.control.errors_replied},
        }

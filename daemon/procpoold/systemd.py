"""sd_notify and socket activation: READY, STATUS, STOPPING, RELOADING, WATCHDOG. A no-op outside systemd.

Uses libsystemd through systemd-python; :func:`notify` returns False when there
is no ``NOTIFY_SOCKET``, which is the normal case in a terminal or a test.

The small helpers below send exactly one datagram each, in the forms
``systemd.service(5)`` and ``sd_notify(3)`` document:

==========================  ==================================================
``ready(status)``           ``READY=1`` (+ ``STATUS=``): start-up is complete
``status(text)``            ``STATUS=text``: shown by ``systemctl status``
``stopping(text)``          ``STOPPING=1`` (+ ``STATUS=``): a stop has begun
``reloading()``             ``RELOADING=1`` + ``MONOTONIC_USEC=`` (systemd >= 253
                            wants the timestamp; older versions ignore it)
``reloaded(status)``        ``READY=1`` (+ ``STATUS=``): the reload is done
``extend_timeout(seconds)`` ``EXTEND_TIMEOUT_USEC=``: push the start/stop timeout
``watchdog()``              ``WATCHDOG=1``: the keep-alive ping
==========================  ==================================================
"""

from __future__ import annotations

import os
import time

import systemd.daemon as _sd


def notify(**fields: str | int) -> bool:
    """Send ``KEY=value`` lines to the service manager; False when none listens."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    message = "\n".join(f"{key}={value}" for key, value in fields.items())
    try:
        return bool(_sd.notify(message))
    except OSError:  # the manager went away (or a test's socket did): never fatal
        return False


def listen_fds() -> list[int]:
    """File descriptors passed by socket activation (empty when not socket-activated)."""
    return list(_sd.listen_fds(unset_environment=True))


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None when no watchdog applies.

    systemd sets ``WATCHDOG_USEC`` (the timeout) and ``WATCHDOG_PID`` (the process
    it expects the pings from) when the unit has ``WatchdogSec=``. A child that
    merely inherited the environment is not the watched process and gets None.
    """
    raw = os.environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def _with_status(fields: dict[str, str | int], text: str | None) -> dict[str, str | int]:
    if text is not None:
        fields["STATUS"] = _one_line(text)
    return fields


def _one_line(text: str) -> str:
    # A newline would start another KEY=value assignment in the datagram.
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Start-up is complete: ``READY=1``, with a status line when given."""
    return notify(**_with_status({"READY": 1}, status))


def status(text: str) -> bool:
    """Update the free-form status shown by ``systemctl status``."""
    return notify(STATUS=_one_line(text))


def stopping(text: str | None = None) -> bool:
    """A graceful stop has begun: ``STOPPING=1``, with a status line when given."""
    return notify(**_with_status({"STOPPING": 1}, text))


def reloading() -> bool:
    """A reload has begun: ``RELOADING=1`` with ``MONOTONIC_USEC`` (needed by Type=notify-reload)."""
    return notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)


def reloaded(status: str | None = None) -> bool:
    """The reload is done: ``READY=1`` again, with a status line when given."""
    return ready(status)


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the current start/stop/reload timeout fires."""
    return notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))


def watchdog() -> bool:
    """The watchdog keep-alive ping."""
    return notify(WATCHDOG=1)

"""sd_notify: READY, STATUS, STOPPING, WATCHDOG. A no-op outside systemd.

Uses libsystemd through systemd-python; ``notify`` returns False when there is
no ``NOTIFY_SOCKET``, which is the normal case in a terminal or a test.
"""

from __future__ import annotations

import os

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

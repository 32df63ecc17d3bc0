"""Default locations, resolved the same way by the daemon and the client.

Precedence for the control socket: an explicit ``--socket`` option, then the
``PROCPOOL_SOCKET`` environment variable, then ``/run/procpoold/control.sock``
for root or ``$XDG_RUNTIME_DIR/procpoold/control.sock`` for anyone else.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_ENV = "PROCPOOL_SOCKET"
SOCKET_NAME = "control.sock"


def runtime_dir() -> Path:
    """The folder that holds the control socket by default."""
    if os.geteuid() == 0:
        return Path("/run/procpoold")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "procpoold"
    return Path(f"/tmp/procpoold-{os.geteuid()}")


def default_socket() -> Path:
    """The control socket path when none is given: the environment, then the runtime dir."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    return runtime_dir() / SOCKET_NAME


def default_state_dir() -> Path:
    """Where the daemon keeps its state when neither --state-dir nor $STATE_DIRECTORY is set."""
    env = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if env:
        return Path(env.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/procpoold")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "procpoold"


def endpoint(path: Path | str) -> str:
    """The ZeroMQ endpoint for a socket path."""
    return f"ipc://{os.fspath(path)}"

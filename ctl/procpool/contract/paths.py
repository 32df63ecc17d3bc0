"""Default locations, resolved the same way by the daemon and the client.

Precedence for the control socket: an explicit ``--socket`` option, then the
``PROCPOOL_SOCKET`` environment variable, then ``/run/procpoold/control.sock``
for root or ``$XDG_RUNTIME_DIR/procpoold/control.sock`` for anyone else.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
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


#: Symbolic links followed at most while walking a path (the kernel's limit).
MAX_SYMLINKS = 40


class SymlinkLoop(OSError):
    """More than :data:`MAX_SYMLINKS` symbolic links on the way."""


def walk(path: os.PathLike[str] | str) -> Iterator[tuple[str, os.stat_result, bool]]:
    """Every component of ``path`` as the kernel resolves it: ``(entry, its lstat, last)``.

    A symbolic link is yielded itself, then the components of its target; ``..`` goes to the
    parent of where the walk stands (after a link: the target's parent, where ``abspath`` would
    cut ``link/..`` out lexically). ``last`` marks the final component (never a link). For the
    checks of who could swap the control socket, in the client (procpool.trust) and the daemon
    (procpoold.control.socketdir). Raises what ``lstat`` or ``readlink`` raise (a missing entry:
    FileNotFoundError naming it) and :class:`SymlinkLoop`.
    """
    pending = list(Path(path if os.path.isabs(path) else Path(os.getcwd(), path)).parts[1:])
    current = "/"
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        st = os.lstat(entry)
        if not stat.S_ISLNK(st.st_mode):
            yield entry, st, not pending
            current = entry
            continue
        yield entry, st, False
        hops += 1
        if hops > MAX_SYMLINKS:
            raise SymlinkLoop(errno.ELOOP, "too many symbolic links", os.fspath(path))
        target = os.readlink(entry)
        if os.path.isabs(target):
            current = "/"
        pending[:0] = list(Path(target).parts[1:] if os.path.isabs(target) else Path(target).parts)

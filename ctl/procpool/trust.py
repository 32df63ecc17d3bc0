"""Is the process behind a control socket one this client may talk to?

A client sends what it submits (commands, their environment, perhaps a token) to whatever listens
on the socket's path. Before the first byte is sent, :class:`procpool.Client` checks two things:

1. **The path.** Every folder from ``/`` down to the socket belongs to a trusted user (root, the
   service user ``procpool``, the client's own user, or a uid the caller trusts) and is writable by
   nobody else unless the sticky bit protects its entries (as in ``/tmp``); symlinks on the way
   must belong to a trusted user too, and so must the socket file. Then nobody else can replace
   the socket between this check and the connection, or when ZeroMQ reconnects later.
2. **The listener.** A plain Unix-socket connection reads the kernel's credentials of the process
   that listens (``SO_PEERCRED``, taken when it called ``listen()``): its uid must be trusted. A
   socket created by systemd (socket activation) reports root's.

The first alone lets a trusted user's daemon be any process that user runs; the second alone
could be raced by someone able to swap the file between the check and ZeroMQ's connection. Both
together leave the socket in trusted hands. Trust a further uid with ``trust_uids`` (``procctl
--trust-uid``) or ``PROCPOOL_TRUST_UID`` (comma-separated uids or user names).
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from procpool.contract.limits import clip
from procpool.contract.paths import SymlinkLoop, walk

TRUST_ENV = "PROCPOOL_TRUST_UID"
#: The user the packaged system service runs as (systemd/sysusers.d).
SERVICE_USER = "procpool"


@dataclass(frozen=True, slots=True)
class Listener:
    """The kernel's credentials of the process listening on a socket."""

    pid: int
    uid: int
    gid: int


class UntrustedSocket(Exception):
    """The socket's path or its listener is not in trusted hands; the message says which."""


def trusted_uids(extra: Iterable[int] = (), env: dict[str, str] | None = None) -> frozenset[int]:
    """Root, this process's user, the service user (if it exists), ``extra`` and ``$PROCPOOL_TRUST_UID``."""
    uids = {0, os.geteuid(), *extra}
    try:
        uids.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    except KeyError:
        pass
    raw = (os.environ if env is None else env).get(TRUST_ENV, "")
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        uids.add(parse_uid(item))
    return frozenset(uids)


def parse_uid(text: str) -> int:
    """A uid from a number or a user name (raises ValueError naming it)."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):
        raise ValueError(f"{TRUST_ENV} / --trust-uid: no user named {text[:64]!r}") from None


def describe(uid: int) -> str:
    """``alice (uid 1000)``, or ``uid 1000`` for a uid without a name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def who_is_trusted(trusted: frozenset[int]) -> str:
    """For messages: "root, procpool (uid 998), you" and any extra uids."""
    me = os.geteuid()
    names = ["root"]
    try:
        service = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        service = None
    if service is not None:
        names.append(f"the service user {describe(service)}")
    names.append("you")
    names.extend(describe(u) for u in sorted(trusted - {0, me, service}))
    return ", ".join(names)


def unsafe_path(path: Path, trusted: frozenset[int], complete: bool = False) -> str | None:
    """Why someone untrusted could replace the socket at ``path`` (a clause), or None.

    A missing component is no problem here (the connection then fails with its own message),
    unless ``complete``: once a listener answered, every component must be there.
    Raises PermissionError when a folder cannot be read (the caller reports it).
    """
    problem = _unsafe_folder("/", trusted)
    if problem:
        return problem
    try:
        for entry, st, last in walk(path):
            if st.st_uid not in trusted:
                return f"{clip(entry)} belongs to {describe(st.st_uid)}, who could replace the socket"
            if stat.S_ISLNK(st.st_mode):
                continue
            if last or not stat.S_ISDIR(st.st_mode):
                return None  # the socket itself (its owner is checked above), or not a folder
            problem = _unsafe_folder(entry, trusted, st)
            if problem:
                return problem
    except FileNotFoundError as exc:
        return f"{clip(str(exc.filename))} disappeared while it was checked" if complete else None
    except SymlinkLoop:
        return f"too many symbolic links in {clip(os.fspath(path))}"
    return None


def _unsafe_folder(folder: str, trusted: frozenset[int], st: os.stat_result | None = None) -> str | None:
    st = st or os.lstat(folder)
    if st.st_uid not in trusted:
        return f"{clip(folder)} belongs to {describe(st.st_uid)}, who could replace the socket"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"{clip(folder)} is writable by others (mode {mode:04o}), who could replace the socket"
    return None


def probe(path: Path) -> Listener | None:
    """The listener's credentials, or None when nothing accepts connections on ``path``.

    A plain Unix-socket connection, closed at once (no ZeroMQ: it connects lazily and retries
    forever, so without this a client would wait out its whole timeout in front of a missing
    daemon). Raises PermissionError when the socket may not be opened.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOTDIR):
            return None
        raise
    finally:
        s.close()
    pid, uid, gid = struct.unpack("3i", raw)
    return Listener(pid, uid, gid)


def check(path: Path, trusted: frozenset[int]) -> Listener | None:
    """Check the path, then the listener; None when nothing listens. Raises :class:`UntrustedSocket`."""
    problem = unsafe_path(path, trusted)
    if problem is not None:
        raise UntrustedSocket(f"refusing to use the socket {clip(os.fspath(path))}: {problem}")
    listener = probe(path)
    if listener is not None and listener.uid not in trusted:
        raise UntrustedSocket(
            f"refusing to talk to the process on {clip(os.fspath(path))} (pid {listener.pid}): it runs "
            f"as {describe(listener.uid)}, not as {who_is_trusted(trusted)}"
        )
    if listener is not None:
        # Again, all of it: a component missing at the first check may have appeared since (someone
        # else's symlink to a trusted daemon, to be repointed before ZeroMQ connects).
        problem = unsafe_path(path, trusted, complete=True)
        if problem is not None:
            raise UntrustedSocket(f"refusing to use the socket {clip(os.fspath(path))}: {problem}")
    return listener


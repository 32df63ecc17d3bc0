"""Could another user replace a control socket in this folder? (The daemon's side of the check.)

Called once at start, before the daemon binds its socket (never under socket activation, where
systemd made the socket). The client makes its own check of the socket's path and listener
(``procpool.trust``); this one lets a daemon refuse, with one line, a folder that is not its own.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from procpool.contract.limits import clip
from procpool.contract.paths import SymlinkLoop, walk


def unsafe_socket_folder(folder: Path, uid: int | None = None) -> str | None:
    """Why another user could replace a socket in ``folder`` (one clause), or None when they cannot.

    ``folder`` (resolved) must belong to ``uid`` (this process's by default) or root and be
    writable by nobody else, sticky or not; each folder above it must belong to root or ``uid``
    and be writable by nobody else unless the sticky bit stops others renaming its entries.
    """
    owner = os.geteuid() if uid is None else uid
    trusted = (0, owner)
    problem = foreign_path(folder, owner)
    if problem is not None:
        return problem
    real = os.path.realpath(folder)
    current = real
    while True:
        try:
            st = os.stat(current)
        except OSError as exc:
            return f"cannot check {clip(current)} ({exc.strerror})"
        mode = stat.S_IMODE(st.st_mode)
        above = "" if current == real else f" (above {clip(real)})"
        if st.st_uid not in trusted:
            return (
                f"{clip(current)}{above} belongs to {_user(st.st_uid)}, who could replace the socket"
            )
        if mode & 0o022:
            if current == real and mode & stat.S_ISVTX:
                return (
                    f"it is a shared folder (mode {mode:04o}): anyone could take the socket's name "
                    "while the daemon is down"
                )
            if not mode & stat.S_ISVTX:
                return (
                    f"{clip(current)}{above} is writable by others (mode {mode:04o}), "
                    "who could replace the socket"
                )
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def foreign_path(folder: Path, uid: int | None = None) -> str | None:
    """Why ``folder`` as named (not resolved) is in someone else's hands: a symlink on the way that
    another user owns, who could repoint it (the resolved folders are judged by
    :func:`unsafe_socket_folder`); None if there is none."""
    trusted = (0, os.geteuid() if uid is None else uid)
    try:
        for entry, st, _last in walk(folder):
            if stat.S_ISLNK(st.st_mode) and st.st_uid not in trusted:
                return f"{clip(entry)} belongs to {_user(st.st_uid)}, who could replace the socket"
    except SymlinkLoop:
        return f"too many symbolic links in {clip(os.fspath(folder))}"
    except OSError as exc:
        return f"cannot check {clip(str(exc.filename))} ({exc.strerror})"
    return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


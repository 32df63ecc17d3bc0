"""The state directory's lock: one daemon per state directory, for the daemon's whole life.

Runs on the loop's thread (taken once, in the daemon's constructor, before the store is opened).
An ``flock`` on ``<state-dir>/procpoold.lock``: the kernel releases it when the daemon's process
dies, however it dies, so a crash never leaves a stale lock behind. The file names the holder
(its pid and socket) so that a second daemon can say who holds it. Its descriptor is
close-on-exec, so commands do not inherit it; the worker zygote is forked before it is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from procpoold.store.protocol import StoreError
from procpoold.store.sqlite import check_state_folder, disk_full, full_disk_hint

LOCK_NAME = "procpoold.lock"


class StateLocked(StoreError):
    """Another procpoold holds the state directory; the message names it."""

    hint = "stop the other procpoold first, or give this one a --state-dir of its own"


class StateLock:
    """Held from :meth:`acquire` until :meth:`release` or the process's end."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, socket: Path | str) -> StateLock:
        """Lock ``state_dir`` for this process or raise :class:`StateLocked` naming the holder."""
        path = state_dir / LOCK_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Before the file is opened (and truncated): in a folder another user may write, the
            # lock file could be their symlink to any file this daemon may write.
            check_state_folder(state_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if disk_full(exc):  # a new state folder on a full disk: one line and a hint, as the store's
                raise StoreError(
                    f"cannot open the lock file {path}: the disk is full ({exc.strerror})",
                    full_disk_hint(path),
                ) from None
            raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateLocked(
                f"another procpoold is already running on the state directory {state_dir}"
                f" ({holder or 'holder unknown'}; lock file {path})"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # naming the holder is a courtesy: a full disk is not fatal here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, socket {socket}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    """What the holder wrote in the lock file (at most 200 bytes of it, printable)."""
    try:
        data = os.pread(fd, 200, 0)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else "?" for c in text)

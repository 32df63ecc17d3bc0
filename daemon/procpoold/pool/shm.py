"""Shared-memory objects of procpool: creation, mapping, naming, and removal of leftovers.

Two kinds of object exist, and every name starts with ``procpool-`` so that leftovers can be found
under ``/dev/shm`` and removed:

* ring segments (``procpool-ring-<pid>-<seq>.<random>``), either named POSIX shm objects or anonymous memfds
  (``memfd:procpool-ring`` in ``/proc/<pid>/fd``; nothing to unlink, they vanish with the last fd);
* spill objects (``procpool-spill-<pid>-<seq>.<random>``) that carry one message too large for a
  ring.

``<pid>`` is the creating process; the random part makes a name that nobody can take first.
:func:`cleanup_leftovers` removes the objects whose creator is dead, which covers every crash: a
writer that died before handing a spill over, a daemon that died with segments still named. Named
objects live in ``/dev/shm``, which is what ``shm_open`` uses on Linux, so plain ``os.open`` gives
the same objects without a private module.

The pid in a spill object's name is also its writer's identity: a reader that does not trust the
writer (the daemon reading a worker's result ring) opens, reads and unlinks only names with that
writer's prefix (:func:`spill_prefix`, :func:`check_spill_name`), takes only a plain file with no
other name and of the announced size (:func:`open_spill`), and reads it with ``read(2)``
(:func:`read_spill`): an object truncated meanwhile is a short read, never a SIGBUS.

This module runs in the daemon and in workers; it only does file-descriptor and mmap work.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import stat
from pathlib import Path

#: Where named POSIX shared-memory objects live on Linux.
SHM_DIR = Path("/dev/shm")
#: Prefix of every shared-memory object procpool creates.
PREFIX = "procpool-"
#: Prefix of named ring segments.
SEGMENT_PREFIX = "procpool-ring-"
#: Prefix of spill objects.
SPILL_PREFIX = "procpool-spill-"

_NAME_RE = re.compile(r"^procpool-[A-Za-z0-9._-]{1,200}$")
_OWNER_RE = re.compile(r"^procpool-[a-z]+-(\d+)-")
_counter = itertools.count()


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"not a procpool shared-memory name: {name!r}")


def new_name(prefix: str, tag: str = "") -> str:
    """Return a fresh object name ``<prefix><pid>-[<tag>-]<seq>.<random>`` for the calling process.

    The random part (64 bits) keeps another process from creating the name first; a ``tag``
    (letters and digits) names whom the object is for (see :func:`write_spill`).
    """
    return f"{prefix}{os.getpid()}-{tag + '-' if tag else ''}{next(_counter)}.{os.urandom(8).hex()}"


def spill_prefix(pid: int) -> str:
    """The start of the names of the spill objects that process ``pid`` writes."""
    return f"{SPILL_PREFIX}{pid}-"


def check_spill_name(name: str, prefix: str | None = None) -> None:
    """ValueError unless ``name`` is a spill object's name (starting with ``prefix`` if given)."""
    if not _NAME_RE.match(name) or not name.startswith(prefix or SPILL_PREFIX):
        raise ValueError(f"not a spill object of {prefix or SPILL_PREFIX!r}: {name[:80]!r}")


def create_named(name: str, size: int) -> int:
    """Create the named object ``name`` of ``size`` bytes (it must not exist) and return its fd."""
    _check_name(name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(SHM_DIR / name, flags, 0o600)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    return fd


def open_named(name: str, *, writable: bool = True) -> int:
    """Open the existing named object ``name`` and return its fd (FileNotFoundError if absent)."""
    _check_name(name)
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(SHM_DIR / name, flags)


def create_anonymous(size: int, label: str = "procpool-ring") -> int:
    """Create an anonymous memfd of ``size`` bytes (close-on-exec, survives fork) and return its fd."""
    fd = os.memfd_create(label, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink(name: str) -> bool:
    """Remove the named object ``name``; return False if it did not exist."""
    _check_name(name)
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        return False
    return True


def fd_size(fd: int) -> int:
    """Size in bytes of the object behind ``fd``."""
    return os.fstat(fd).st_size


def map_fd(fd: int, size: int) -> mmap.mmap:
    """Map ``size`` bytes of ``fd`` shared and read-write."""
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def list_leftovers(prefix: str = PREFIX) -> list[str]:
    """Names of the existing named objects that start with ``prefix`` (sorted)."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"prefix must start with {PREFIX!r}")
    try:
        return sorted(entry.name for entry in os.scandir(SHM_DIR) if entry.name.startswith(prefix))
    except FileNotFoundError:
        return []


def owner_pid(name: str) -> int | None:
    """The creator pid encoded in a procpool object name, or None if the name carries none."""
    match = _OWNER_RE.match(name)
    return int(match.group(1)) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (pid reuse makes this conservative, never unsafe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers(prefix: str = PREFIX, *, owners: set[int] | None = None) -> list[str]:
    """Unlink leftover objects under ``prefix`` and return their names.

    With ``owners`` None, remove the objects whose creator process is dead. With a set of pids,
    remove the objects created by those pids whether or not they are alive (for example a dead
    worker's pid, or the daemon's own pid at shutdown). What cannot be removed (a directory a
    task made under such a name, another user's object) is left alone.
    """
    removed = []
    for name in list_leftovers(prefix):
        pid = owner_pid(name)
        if pid is None:
            continue
        doomed = pid in owners if owners is not None else not pid_alive(pid)
        try:
            if doomed and unlink(name):
                removed.append(name)
        except (OSError, ValueError):
            continue
    return removed


def write_spill(data: bytes | bytearray | memoryview, owner: tuple[int, int] | None = None,
                tag: str = "") -> str:
    """Store ``data`` in a new spill object and return its name.

    ``owner`` (uid, gid): hand the object (mode 0600) to the reader's user, a worker running as
    another user than the writer; nobody else can read it. ``tag``: part of the name that says
    whom it is for, so that cleaning up after one reader never touches another's.

    The object holds exactly the payload; its size is the message length. The reader unlinks it
    (see :func:`take_spill`); if this process dies first, :func:`cleanup_leftovers` removes it.
    """
    name = new_name(SPILL_PREFIX, tag)
    fd = create_named(name, 0)
    try:
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    return name


def open_spill(name: str, size: int) -> int:
    """Open the spill object ``name`` and unlink it at once, returning the fd.

    From here the payload lives only as long as the fd, so a reader that dies leaks nothing.
    ValueError (fd closed) unless the object is a plain file of ``size`` bytes that had no other
    name: a FIFO, a directory or a hard link to someone else's object is refused, without blocking.
    """
    _check_name(name)
    fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / name)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 0:
            raise ValueError("not a plain file with one name")
        if st.st_size != size:
            raise ValueError(f"it holds {st.st_size} bytes, not the {size} announced")
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Longest read(2) of a regular file on Linux.
_MAX_READ = 0x7FFFF000


def read_spill(fd: int, size: int) -> bytes:
    """Read ``size`` bytes from a spill fd opened by :func:`open_spill` and close it.

    With ``read(2)``, not a mapping: if the writer truncates the object meanwhile, this is a short
    read and a ValueError, not a SIGBUS.
    """
    try:
        chunks: list[bytes] = []
        left = size
        while left:
            chunk = os.read(fd, min(left, _MAX_READ))  # one read, into the bytes object returned
            if not chunk:
                # A regular file reads whole up to its end: a short read means it shrank meanwhile.
                raise ValueError(f"truncated while it was read ({size - left} of {size} bytes)")
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)

"""Large values in files beside the database: ``<root>/<job id>/<name>``, with spare files.

A value of :data:`LARGE_VALUE` bytes or more (a job with a big argument, a task with a big
result) is written to a file, and its column or log op holds an empty blob that points there:
SQLite writes such a value about 15 times slower than a plain file.

Writing a new file costs its blocks and fresh page-cache pages; overwriting a file whose blocks
are there costs less. So the files of dropped values (a job deleted, a task log replaced) are not
unlinked but recycled, by rename, as *spare* files in ``<root>/.spare/`` (up to :data:`SPARES`):
the next value that fits is written into one (cut to its length), synced when ``fsync``, and
renamed to its name: the name appears only once the value is whole, as with a new file. (Spares
written ahead with zeros, off the loop, were tried: with the pages of written values handed back,
below, a new file costs ~0.3 ms per MiB, and writing the zeros cost the compactor thread more CPU
than the loop saved: W4 ran at 80 MB/s with them and 114 MB/s without, medians of five
interleaved pairs on a 2-vCPU machine.)

A value file is written once and seldom read again (a finished job read back, a restart), but its
page-cache pages would stay as long as the kernel has memory to spare, and each new value would
take fresh pages: on a virtual machine whose host reclaims the guest's free memory, a fresh page
costs a fault in the host, about ten times the copy (a 1 MiB value file written in ~3 ms instead
of ~0.3 ms, ``docs/state.md``). So the compactor hands the pages of written values back
(:meth:`LargeValues.release`): ``POSIX_FADV_DONTNEED`` once to start their write-back (dirty
pages are not dropped), and again after its first batch :data:`COOL_SECONDS` or more later,
when they are clean, to drop them (no timer: an idle daemon leaves the last ones cached); the
next values reuse those pages while they are still warm. A value read later comes from the disk.

Threads: :meth:`put` and :meth:`get` run on the loop thread; :meth:`drop_job`,
:meth:`drop_logs` and :meth:`release` on the compactor thread (after the commit that dropped or
wrote the values); the spare list is shared under a lock.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from pathlib import Path

from procpoold.store.log import fsync_folder

#: Values this large or larger go to files beside the database.
LARGE_VALUE = 64 * 1024
#: Spare files (recycled from dropped values) kept at most.
SPARES = 4
#: A written value's pages are dropped this long after their write-back was started.
COOL_SECONDS = 0.1
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class LargeValues:
    """Files for values of LARGE_VALUE bytes or more (see the module's docstring)."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync
        self.spare_dir = root / ".spare"
        self._lock = threading.Lock()
        self._spares: list[tuple[int, Path]] = []  # (size, path)
        self._counter = 0
        #: values written into a spare, and into a new file
        self.reused = 0
        self.fresh = 0
        #: values written and not yet released (loop thread appends, compactor thread pops)
        self._written: collections.deque[Path] = collections.deque()
        #: values whose write-back was started: (when, path), oldest first (compactor thread)
        self._cooling: collections.deque[tuple[float, Path]] = collections.deque()
        shutil.rmtree(self.spare_dir, ignore_errors=True)  # their sizes are not known: start anew

    def put(self, job_id: str, name: str, data: bytes) -> bytes:
        """What the column holds: ``data`` itself, or b"" once it is in a file (loop thread)."""
        if len(data) < LARGE_VALUE:
            return data
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / name
        spare = self._take(len(data))
        if spare is not None:
            tmp = spare
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        else:
            tmp = folder / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if spare is not None:
                os.ftruncate(fd, len(data))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.fsync:
            fsync_folder(folder)
        if spare is not None:
            self.reused += 1
        else:
            self.fresh += 1
        if _DONTNEED is not None:
            self._written.append(final)
        return b""

    def _take(self, size: int) -> Path | None:
        with self._lock:
            for i, (spare_size, path) in enumerate(self._spares):
                if spare_size >= size:
                    del self._spares[i]
                    return path
        return None

    @property
    def spares(self) -> int:
        with self._lock:
            return len(self._spares)

    def release(self) -> None:
        """Hand back the page-cache pages of written values (compactor thread; see the module's
        docstring): start the write-back of those written since the last call, and drop the
        pages of those whose write-back was started COOL_SECONDS ago or more."""
        if _DONTNEED is None:
            return
        written, cooling = self._written, self._cooling
        now = time.monotonic()
        while cooling and cooling[0][0] <= now - COOL_SECONDS:
            _advise(cooling.popleft()[1])
        while written:
            path = written.popleft()
            if _advise(path) and not self.fsync:  # (a synced file's pages are clean: dropped now)
                cooling.append((now, path))

    @property
    def unreleased(self) -> int:
        """Written values whose pages have not been handed back yet."""
        return len(self._written) + len(self._cooling)

    def _recycle(self, path: Path) -> None:
        """A dropped value's file becomes a spare if one is wanted, else it is removed."""
        try:
            size = path.stat().st_size
        except OSError:
            return
        with self._lock:
            keep = len(self._spares) < SPARES and size >= LARGE_VALUE
            if keep:
                self._counter += 1
                spare = self.spare_dir / f"{self._counter}"
        if keep:
            try:
                self.spare_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.rename(path, spare)
            except OSError:
                path.unlink(missing_ok=True)
                return
            with self._lock:
                self._spares.append((size, spare))
        else:
            path.unlink(missing_ok=True)

    def get(self, job_id: str, name: str, column: bytes) -> bytes:
        if column:
            return column
        try:
            return (self.root / job_id / name).read_bytes()
        except OSError as exc:
            raise ValueError(f"its large value file {self.root / job_id / name} is missing ({exc})") from None

    def drop_job(self, job_id: str) -> None:
        folder = self.root / job_id
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        for name in names:
            if not name.startswith("."):
                self._recycle(folder / name)
        shutil.rmtree(folder, ignore_errors=True)

    def drop_logs(self, job_id: str, before: int) -> None:
        """Remove the job's task log files with a sequence number below ``before``."""
        try:
            names = os.listdir(self.root / job_id)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("log-") and int(name[4:]) < before:
                self._recycle(self.root / job_id / name)

    def close(self) -> None:
        """Remove the spare files (they hold nothing; a stopped daemon keeps no disk for them)."""
        with self._lock:
            self._spares.clear()
        shutil.rmtree(self.spare_dir, ignore_errors=True)

    def sweep(self, known: set[str]) -> None:
        """Remove the folders of jobs the database does not have (left by a crash or a delete)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if name not in known and not name.startswith("."):
                shutil.rmtree(self.root / name, ignore_errors=True)


def _advise(path: Path) -> bool:
    """POSIX_FADV_DONTNEED on the whole file (False if it is gone: a job deleted meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, _DONTNEED)  # type: ignore[arg-type]
    except OSError:
        return False
    finally:
        os.close(fd)
    return True

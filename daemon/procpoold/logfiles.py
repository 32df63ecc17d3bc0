"""Each job's log in a file of the state directory, for ``procctl logs`` when the daemon does not
write to journald (a terminal, ``make run``, the tests).

One file per job, ``logs/<job number>.log`` in the state directory (the folder mode 0700, the files
0600, both the daemon's). A file name is made from the job's number, the daemon's own integer:
nothing a client sends names a path. The file lives as long as the daemon keeps the job: retention
and ``procctl clean`` remove it (:meth:`JobLogFiles.remove`), and a start removes the files of jobs
the daemon no longer has (:meth:`JobLogFiles.sweep`).

Format
    An 8-byte header (:data:`MAGIC`), then frames: ``<u32 length> record <u32 length>`` (the length
    at both ends: a file is read forwards from a cursor and backwards from its end, for ``-n``).
    A record is the journal's own packed record (:mod:`procpoold.journal.encoding`): a LINE (an
    output line or a task's log record), an EVENTS batch (lifecycle events, only of this job) or a
    RECORD (the daemon's records of the job). Nothing is encoded twice: the sink writes the bytes
    it hands to the forwarder.

Writing
    On the loop thread, :meth:`JobLogFiles.add` appends a frame to the job's buffer; once per loop
    iteration (``call_last``) :meth:`JobLogFiles.flush` hands each buffer to the writer thread
    (a ``SimpleQueue``), which writes it with one ``write`` to the job's file (``O_APPEND``; at
    most :data:`MAX_OPEN` files stay open) and alone opens, closes and removes files: making a
    file took 0.25-2 ms on the development machine's ext4, which the loop must not wait for once
    per job. The thread spends its time in system calls (the GIL released)
    and sleeps on the queue when there is nothing to write. A record logged on another thread is
    handed over at once. A read first waits until the writer has written everything handed over
    (:meth:`JobLogFiles.sync`). No fsync: what was written survives a crash of the daemon (it is in
    the page cache), not necessarily a crash of the machine; what was handed over and not yet
    written (at most a few loop iterations' worth) is lost with the daemon. A frame cut short by a
    crash is cut off when the file is next opened for writing, and a reader stops before it.

A job that prints nothing
    gets no file: making one costs the kernel about 250 us of CPU there, a one-task job's whole
    cost is about 650 us. Its records stay in its buffer while it runs (up to
    :data:`QUIET_BYTES`), and once it has finished in a bounded memory store (``quiet_bytes`` in
    all, the oldest forgotten first), which ``procctl logs`` reads and retention and ``clean``
    empty; they are gone after a restart (its status holds its outcome). Its first output record
    makes its file, with everything before it.

The cap
    A job's file holds at most ``max_bytes`` (``log_job_max_bytes``) of output: the start is kept.
    The record that would cross the cap is dropped, and so is every output record after it;
    in its place one record says that the cap was reached. Lifecycle events and the daemon's
    records of the job are still kept, up to twice the cap (a job of many tasks then still shows
    how each ended). When the job finishes, a last record says how many records and bytes were
    not kept. A task that floods its output fills its job's file to the cap, never the disk.

Reading
    :meth:`JobLogFiles.read` pages: forwards from a cursor (a byte offset in the file: the reply's
    ``cursor``, the ``after`` of the next request), or backwards from the end for the last N
    records (``lines``; ``older`` continues further back). A request scans at most
    :data:`SCAN_BYTES` of the file and returns at most ``page_bytes`` of records, so that one
    request costs the loop a few milliseconds whatever the file's size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from procpoold.journal import encoding as enc

log = logging.getLogger("procpoold.logfiles")

#: The first bytes of every job's log file (format version 1).
MAGIC = b"PPLOG01\n"
_FRAME = struct.Struct("<I")
_LEN = _FRAME.size
#: Largest record kept in a file (a bigger one is dropped and counted).
MAX_FRAME = 16 * 1024 * 1024
#: Bytes of lifecycle and daemon records a job that has printed nothing keeps in memory before its
#: file is made; a job that finishes below it keeps them in memory (:attr:`JobLogFiles.quiet_bytes`
#: in all), not in a file: making a file costs about 250 us of CPU on the development machine's ext4
#: (a one-task job costs the daemon about 650 us in all).
QUIET_BYTES = 16 * 1024
#: Files kept open for writing at once (the least recently written is closed first).
MAX_OPEN = 64
#: Bytes of a file one ``logs`` request reads at most (and reads at a time).
SCAN_BYTES = 256 * 1024
#: What a record costs in a reply besides its message (keys, numbers, task id), for the page bound.
_WIRE_OVERHEAD = 96
_NAME = re.compile(r"(\d{1,18})\.log")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_WRITE_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_get_ident = threading.get_ident


#: (n, offset) -> up to n bytes of a job's log from offset: a file's, or one held in memory
_Pread = Callable[[int, int], bytes]


class LoopLike(Protocol):
    def call_last(self, callback: Callable[[], None]) -> None: ...


def file_name(job: int) -> str:
    """The file of job number ``job`` (an integer the daemon gave; never a client's text)."""
    return f"{int(job)}.log"


class _JobFile:
    """A job's file as the loop sees it: its buffer and size (the writer thread has its fd)."""

    __slots__ = ("buf", "capped", "dirty", "dropped", "dropped_bytes", "failed", "job", "opened", "size")

    def __init__(self, job: int, size: int) -> None:
        self.job = job
        self.buf = bytearray()
        self.dirty = False
        self.size = size  # bytes in the file, queued for it, and in the buffer
        self.capped = False  # the cap was reached (the record saying so is written)
        self.dropped = 0  # records not kept (by this daemon)
        self.dropped_bytes = 0
        self.failed = False  # a write failed (set by the writer): nothing more is written for the job
        #: its records go to its file (it has one, or it has printed): until then they stay in the
        #: buffer (most jobs that print nothing finish with a few hundred bytes of lifecycle records)
        self.opened = size > len(MAGIC)


# what the loop hands the writer thread: (op, job, data or file, its _JobFile or None)
_WRITE, _CLOSE, _REMOVE, _SYNC, _STOP = range(5)


class JobLogFiles:
    """The log files of the daemon's jobs (see the module's docstring)."""

    def __init__(self, folder: Path, max_bytes: int, seq: Callable[[], int] | None = None) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        self.dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(self.dir_fd)
        if st.st_uid != os.geteuid():
            os.close(self.dir_fd)
            raise PermissionError(f"{folder} belongs to uid {st.st_uid}, not to procpoold's user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(self.dir_fd, 0o700)
        self.max_bytes = max_bytes
        self.hard_bytes = 2 * max_bytes
        #: the seq the daemon's records of the cap carry (the sink's newest; see LogSink.keep_files)
        self.current_seq = seq or (lambda: 0)
        self._jobs: dict[int, _JobFile] = {}
        #: the records of finished jobs that printed nothing (MAGIC + frames), oldest first, at
        #: most ``quiet_bytes`` in all (the oldest are forgotten first)
        self._quiet: OrderedDict[int, bytes] = OrderedDict()
        self._quiet_size = 0
        self.quiet_bytes = 16 * 1024 * 1024
        self._dirty: list[_JobFile] = []
        self._due = False
        self._loop: LoopLike | None = None
        self._loop_thread = 0
        # The writer thread: it alone opens, writes, closes and removes files (making a file took
        # 0.25-2 ms on the development machine's ext4: not for the loop to wait for, once per job).
        self._queue: queue.SimpleQueue[tuple[int, int, Any, _JobFile | None]] = queue.SimpleQueue()
        self._fds: OrderedDict[int, int] = OrderedDict()  # (the writer's) job -> fd, oldest first
        self._writer = threading.Thread(target=self._write_loop, name="procpoold-logfiles", daemon=True)
        self._writer.start()
        # counters (``procctl status --json``: ``logging.files``; the writer's are its own)
        self.bytes_written = 0
        self.dropped = 0
        self.errors = 0

    def set_max_bytes(self, max_bytes: int) -> None:
        """A new cap (a reload): for the records from now on."""
        self.max_bytes = max_bytes
        self.hard_bytes = 2 * max_bytes

    def attach(self, loop: LoopLike) -> None:
        """Buffer on ``loop``'s thread (the caller's) and hand over once per iteration."""
        self._loop = loop
        self._loop_thread = _get_ident()

    # -- writing (the loop's side) -------------------------------------------------------------

    def add(self, job: int, record: bytes, own: bool = False) -> None:
        """Keep one packed record of job number ``job``. ``own``: a lifecycle or daemon record
        (kept up to twice the cap); else output (kept up to the cap)."""
        if _get_ident() != self._loop_thread or self._loop is None:
            head = _FRAME.pack(len(record))  # another thread: handed over at once, whole
            self._queue.put((_WRITE, job, head + record + head, None))
            return
        f = self._jobs.get(job)
        if f is None:
            f = self._start(job)
        n = len(record) + 2 * _LEN
        size = f.size + n
        if (size > self.max_bytes and (size > self.hard_bytes or not own)) or f.failed or n > MAX_FRAME:
            self._drop(f, n)
            return
        f.size = size
        head = _FRAME.pack(len(record))
        buf = f.buf
        buf += head
        buf += record
        buf += head
        if not f.opened:
            if own and len(buf) < QUIET_BYTES:
                return  # (a job that has printed nothing: no file yet)
            f.opened = True
        if not f.dirty:
            f.dirty = True
            self._dirty.append(f)
            if not self._due:
                self._due = True
                self._loop.call_last(self.flush)

    def add_events(self, first: int, created: float, items: Sequence[int], texts: list[bytes],
                   record: bytes) -> None:
        """One loop iteration's lifecycle events (``record`` packs them all): each job's go to its
        file, as one EVENTS record per run of consecutive events of one job (exact seqs)."""
        jobs = items[2 :: enc.ITEM_INTS]
        if not jobs:
            return
        if jobs.count(jobs[0]) == len(jobs):
            self.add(jobs[0], record, True)
            return
        start = 0
        for n in range(1, len(jobs) + 1):
            if n == len(jobs) or jobs[n] != jobs[start]:
                sub = list(items[start * enc.ITEM_INTS : n * enc.ITEM_INTS])
                record = enc.events_record(first + start, created, sub, b"".join(texts[start:n]))
                self.add(jobs[start], record, True)
                start = n

    def _start(self, job: int) -> _JobFile:
        """The loop's record of a job's file: its size so far (the writer makes the file)."""
        try:
            st = os.stat(file_name(job), dir_fd=self.dir_fd, follow_symlinks=False)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            size = 0
        f = self._jobs[job] = _JobFile(job, max(size, len(MAGIC)))
        f.capped = f.size >= self.max_bytes
        return f

    def _drop(self, f: _JobFile, n: int) -> None:
        f.dropped += 1
        f.dropped_bytes += n
        self.dropped += 1
        if not f.capped and not f.failed and n <= MAX_FRAME:
            f.capped = True
            message = (f"this job's log file reached log_job_max_bytes ({self.max_bytes:,} bytes): its "
                       "further output is not kept (lifecycle records still are)")
            self._force(f, self._note(f.job, message))

    def _note(self, job: int, message: str) -> bytes:
        return enc.plain_record(self.current_seq(), time.time(), 4, "procpoold.logfiles", message,
                                (("PROCPOOL_JOB_ID", str(job)),))

    def _force(self, f: _JobFile, record: bytes) -> None:
        """Append ``record`` whatever the cap (the records that tell about the cap; one or two a job)."""
        head = _FRAME.pack(len(record))
        f.buf += head + record + head
        f.size += len(record) + 2 * _LEN
        f.opened = True
        if not f.dirty:
            f.dirty = True
            self._dirty.append(f)
            if not self._due and self._loop is not None:
                self._due = True
                self._loop.call_last(self.flush)

    def flush(self) -> None:
        """Hand what the loop iteration added to the writer (``call_last``; on the loop thread)."""
        self._due = False
        dirty, self._dirty = self._dirty, []
        for f in dirty:
            self._hand_over(f)

    def _hand_over(self, f: _JobFile) -> None:
        f.dirty = False
        if f.buf:
            self._queue.put((_WRITE, f.job, f.buf, f))
            f.buf = bytearray()

    def flush_job(self, job: int) -> None:
        """Hand over what is buffered for job ``job``, and wait until the writer has written it
        (before the job's file is read; a few milliseconds at most, unless the disk hangs)."""
        f = self._jobs.get(job)
        if f is not None and f.dirty:
            self._dirty.remove(f)
            self._hand_over(f)
        if not self.sync(2.0):  # (a disk that hangs: the reply is short, the loop goes on)
            log.warning("the log files' writer has not written job %d's records within 2 s", job)

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until the writer has written everything handed over so far."""
        if not self._writer.is_alive():
            return False
        done = threading.Event()
        self._queue.put((_SYNC, 0, done, None))
        return done.wait(timeout)

    def finish(self, job: int) -> None:
        """The job has finished: say what its cap dropped, write, close its file."""
        f = self._jobs.pop(job, None)
        if f is None:
            return
        if f.dropped and not f.failed:
            mb = f.dropped_bytes / 1e6
            self._force(f, self._note(job, (
                f"{f.dropped:,} record(s) of this job were not kept ({mb:,.1f} MB of log file): its log "
                f"file reached log_job_max_bytes ({self.max_bytes:,} bytes)")))
        if f.dirty:
            self._dirty.remove(f)
        if not f.opened:
            self._keep_quiet(job, MAGIC + f.buf)
            return
        self._hand_over(f)
        self._queue.put((_CLOSE, job, None, None))

    def _keep_quiet(self, job: int, data: bytes | bytearray) -> None:
        old = self._quiet.pop(job, None)
        if old is not None:
            self._quiet_size -= len(old)
        self._quiet[job] = bytes(data)
        self._quiet_size += len(data)
        while self._quiet_size > self.quiet_bytes and self._quiet:
            self._quiet_size -= len(self._quiet.popitem(last=False)[1])

    def remove(self, jobs: Sequence[int]) -> None:
        """The daemon no longer keeps these jobs (retention, ``clean``): remove their files."""
        for job in jobs:
            f = self._jobs.pop(job, None)
            if f is not None and f.dirty:
                self._dirty.remove(f)
            held = self._quiet.pop(job, None)
            if held is not None:
                self._quiet_size -= len(held)
            if held is None or f is not None:
                self._queue.put((_REMOVE, job, None, None))

    def sweep(self, known: Callable[[int], bool]) -> int:
        """At start: remove the files of jobs the daemon does not have (removed while it was down, or
        by a crash between a job's removal and its file's); returns how many."""
        gone = []
        for name in os.listdir(self.dir_fd):
            match = _NAME.fullmatch(name)
            if match is not None and not known(int(match[1])):
                gone.append(int(match[1]))
        self.remove(gone)
        return len(gone)

    def detach(self) -> None:
        """The loop stops: hand over and write what is buffered; later records are handed over at once."""
        for f in self._jobs.values():
            if not f.opened and f.buf:  # (running jobs that printed nothing: their file now)
                f.opened = True
                if not f.dirty:
                    f.dirty = True
                    self._dirty.append(f)
        self.flush()
        for job in list(self._jobs):
            self._queue.put((_CLOSE, job, None, None))
        self._jobs.clear()
        self._loop = None
        self.sync()

    def close(self) -> None:
        """Write what is buffered, stop the writer, close every file and the folder."""
        self.detach()
        self._queue.put((_STOP, 0, None, None))
        self._writer.join(10)
        os.close(self.dir_fd)

    def info(self, job: int) -> dict[str, Any]:
        """What a ``logs`` reply tells of the job's file: its size, the cap, what was dropped."""
        f = self._jobs.get(job)
        held = self._quiet.get(job)
        if held is not None:
            return {"bytes": len(held), "max_bytes": self.max_bytes, "capped": False, "dropped": 0,
                    "dropped_bytes": 0}
        if f is not None:
            return {"bytes": f.size, "max_bytes": self.max_bytes, "capped": f.capped,
                    "dropped": f.dropped, "dropped_bytes": f.dropped_bytes}
        try:
            size = os.stat(file_name(job), dir_fd=self.dir_fd, follow_symlinks=False).st_size
        except OSError:
            size = 0
        return {"bytes": size, "max_bytes": self.max_bytes, "capped": size >= self.max_bytes,
                "dropped": None, "dropped_bytes": None}

    def stats(self) -> dict[str, Any]:
        capped = sum(1 for f in self._jobs.values() if f.capped)
        return {"folder": os.fspath(self.folder), "max_job_bytes": self.max_bytes, "open": len(self._fds),
                "jobs_writing": len(self._jobs), "capped": capped, "bytes_written": self.bytes_written,
                "dropped": self.dropped, "errors": self.errors, "quiet_jobs": len(self._quiet),
                "quiet_bytes": self._quiet_size}

    # -- writing (the writer thread) -----------------------------------------------------------

    def _write_loop(self) -> None:
        get = self._queue.get
        while True:
            op, job, data, f = get()
            try:
                if op == _WRITE:
                    self._write(job, data, f)
                elif op == _CLOSE:
                    fd = self._fds.pop(job, -1)
                    if fd >= 0:
                        os.close(fd)
                elif op == _REMOVE:
                    self._remove(job)
                elif op == _SYNC:
                    data.set()
                else:
                    for fd in self._fds.values():
                        os.close(fd)
                    self._fds.clear()
                    return
            except Exception:  # (the thread must go on: one job's file is not worth the others')
                self.errors += 1
                log.exception("the log files' writer failed on job %d", job)

    def _fd(self, job: int) -> int:
        """The job's file, open for appending (made, with its header, if new; a cut-off frame at its
        end cut off first)."""
        fd = self._fds.get(job)
        if fd is not None:
            self._fds.move_to_end(job)
            return fd
        fd = os.open(file_name(job), _WRITE_FLAGS | os.O_CREAT, 0o600, dir_fd=self.dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"not a regular file (mode {st.st_mode:o})")
            if st.st_size < len(MAGIC) or os.pread(fd, len(MAGIC), 0) != MAGIC:
                if st.st_size:
                    log.warning("the log file of job %d has no valid header: started again", job)
                    os.ftruncate(fd, 0)
                os.write(fd, MAGIC)
            else:
                size = _valid_end(fd, st.st_size)
                if size != st.st_size:
                    log.warning("the log file of job %d ended in a cut-off record (%d bytes): removed",
                                job, st.st_size - size)
                    os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fds[job] = fd
        while len(self._fds) > MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _write(self, job: int, data: bytes | bytearray, f: _JobFile | None) -> None:
        if f is not None and f.failed:
            return
        fd = -1
        start = 0
        try:
            fd = self._fd(job)
            start = os.lseek(fd, 0, os.SEEK_END)
            done = os.write(fd, data)
            while done < len(data):  # (a regular file: a short write is followed by the error)
                done += os.write(fd, memoryview(data)[done:])
        except OSError as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # back to the last whole frame
            self.errors += 1
            if f is not None:
                f.failed = True
            log.warning("cannot write the log file of job %d (%s): its further output is not kept", job,
                        exc.strerror or exc)
            return
        self.bytes_written += len(data)

    def _remove(self, job: int) -> None:
        fd = self._fds.pop(job, -1)
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(file_name(job), dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.errors += 1
            log.warning("cannot remove the log file of job %d: %s", job, exc.strerror or exc)

    # -- reading -----------------------------------------------------------------------------

    def read(
        self,
        job: int,
        names: Callable[[int], str],
        *,
        task: int | None = None,
        attempt: int | None = None,
        after: int = 0,
        lines: int | None = None,
        before: int | None = None,
        page_bytes: int = 4 * 1024 * 1024,
    ) -> dict[str, Any]:
        """A page of the job's records (all, or task ``task``'s; of ``attempt``).

        Forwards from ``after`` (a cursor: 0 for the start), or with ``lines`` the last ``lines``
        records before ``before`` (the end of the file by default) and after ``after``. Returns
        ``records`` (as ``Record.to_wire``), ``cursor`` (where a forward read goes on; after the
        last record returned, or the file's end when reading backwards), ``more`` (more follows
        the cursor now) and ``older`` (with ``lines``: where to read further back for more, or None).
        """
        match = _Match(job, names, task, attempt)
        f = self._jobs.get(job)
        held = MAGIC + f.buf if f is not None and not f.opened else self._quiet.get(job)
        if held is not None:  # a job that has printed nothing: its records are in memory
            data = bytes(held)
            return _page(lambda n, pos: data[pos : pos + n], len(data), match, after, lines, before,
                         page_bytes)
        self.flush_job(job)
        try:
            fd = os.open(file_name(job), _READ_FLAGS, dir_fd=self.dir_fd)
        except OSError:  # none (no record yet), or not a file this daemon made
            return {"records": [], "cursor": after, "more": False, "older": None}
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return {"records": [], "cursor": after, "more": False, "older": None}
            return _page(lambda n, pos: os.pread(fd, n, pos), st.st_size, match, after, lines, before,
                         page_bytes)
        finally:
            os.close(fd)


class _Match:
    """Which records of a job's file a request wants, and their words (as dicts for the reply)."""

    __slots__ = ("attempt", "job", "job_id", "names", "task", "task_id", "task_ids")

    def __init__(self, job: int, names: Callable[[int], str], task: int | None, attempt: int | None) -> None:
        self.job = job
        self.job_id = str(job)
        self.names = names
        self.task = task
        self.task_id = None if task is None else f"{job}.{task}"
        self.attempt = attempt
        self.task_ids: dict[int, str] = {}

    def records(self, payload: bytes) -> list[dict[str, Any]]:
        """The records of one frame the request wants (an EVENTS frame may hold many)."""
        kind = payload[0]
        if kind == enc.K_LINE:
            _k, prio, stream, _job, index, attempt, _pid, length, seq, ts = enc.LINE.unpack_from(payload)
            if (self.task is not None and index != self.task) or (
                    self.attempt is not None and attempt != self.attempt):
                return []
            message = payload[enc.LINE.size : enc.LINE.size + length].decode("utf-8", "replace")
            name = enc.STREAMS[stream] if stream < len(enc.STREAMS) else "log"
            return [{"seq": seq, "ts": ts, "priority": prio, "stream": name, "attempt": attempt,
                     "task_id": f"{self.job_id}.{index}", "message": message}]
        if kind == enc.K_EVENTS:
            return self._events(payload)
        if kind == enc.K_RECORD:
            _k, prio, nlen, mlen, seq, ts = enc.RECORD.unpack_from(payload)
            start = enc.RECORD.size + nlen
            fields = dict(enc.decode_fields(payload[start + mlen :]))
            task_id = fields.get("PROCPOOL_TASK_ID")
            digits = fields.get("PROCPOOL_ATTEMPT", "0")
            attempt = int(digits) if digits.isdigit() and len(digits) < 10 else 0
            if (self.task_id is not None and task_id != self.task_id) or (
                    self.attempt is not None and attempt != self.attempt):
                return []
            stream = fields.get("PROCPOOL_STREAM", "daemon")
            message = payload[start : start + mlen].decode("utf-8", "replace")
            return [{"seq": seq, "ts": ts, "priority": prio, "stream": stream, "attempt": attempt,
                     "task_id": task_id, "message": message}]
        raise ValueError(f"a record of unknown kind {kind}")

    def _events(self, payload: bytes) -> list[dict[str, Any]]:
        first, ts, items, texts = enc.unpack_events(payload)
        out: list[dict[str, Any]] = []
        task = self.task
        for n, i in enumerate(range(0, len(items), enc.ITEM_INTS)):
            code, job, index, count, attempt = (items[i], items[i + 2], items[i + 3], items[i + 4],
                                                items[i + 5])
            if job != self.job or (self.attempt is not None and attempt != self.attempt):
                continue
            if task is not None and not index <= task < index + count:
                continue
            prio = enc.EVENTS.get(code, ("", 6))[1]
            text = texts[n].decode("utf-8", "replace") if texts[n] else ""
            for t in (task,) if task is not None else range(index, index + count):
                out.append({"seq": first + n, "ts": ts, "priority": prio, "stream": "daemon",
                            "attempt": attempt, "task_id": f"{self.job_id}.{t}",
                            "message": enc.event_message(code, self.names(t), attempt, text)})
        return out


def _page(pread: _Pread, end: int, match: _Match, after: int, lines: int | None, before: int | None,
          page_bytes: int) -> dict[str, Any]:
    if lines is None:
        return _forwards(pread, max(after, len(MAGIC)), end, match, page_bytes)
    stop = end if before is None else min(max(before, len(MAGIC)), end)
    return _backwards(pread, max(after, len(MAGIC)), stop, end, lines, match, page_bytes)


def _cost(records: list[dict[str, Any]]) -> int:
    return sum(len(r["message"]) + _WIRE_OVERHEAD for r in records)


def _valid_end(fd: int, size: int) -> int:
    """The end of the last whole frame of a file of ``size`` bytes (its size when it ends well)."""
    if size == len(MAGIC):
        return size
    if size >= len(MAGIC) + 2 * _LEN:
        (n,) = _FRAME.unpack(os.pread(fd, _LEN, size - _LEN))
        start = size - 2 * _LEN - n
        if start >= len(MAGIC) and _FRAME.unpack(os.pread(fd, _LEN, start) or b"\xff" * _LEN)[0] == n:
            return size
    # Cut off (a crash in the middle of a write): walk the frames from the start.
    pos = len(MAGIC)
    while pos + 2 * _LEN <= size:
        (n,) = _FRAME.unpack(os.pread(fd, _LEN, pos))
        end = pos + 2 * _LEN + n
        if end > size or os.pread(fd, _LEN, end - _LEN) != _FRAME.pack(n):
            break
        pos = end
    return pos


def _frame_at(pread: _Pread, pos: int, end: int) -> tuple[bytes, int] | None:
    """The record of the frame at ``pos`` read on its own (one bigger than a scan), and its end."""
    head = pread(_LEN, pos)
    if len(head) < _LEN:
        return None
    (n,) = _FRAME.unpack(head)
    if n > MAX_FRAME or pos + n + 2 * _LEN > end:
        return None
    data = pread(n + _LEN, pos + _LEN)
    if len(data) != n + _LEN or data[n:] != head:
        return None
    return data[:n], pos + n + 2 * _LEN


def _forwards(pread: _Pread, pos: int, end: int, match: _Match, page_bytes: int) -> dict[str, Any]:
    """At most :data:`SCAN_BYTES` of frames from ``pos`` (a frame bigger than that on its own)."""
    out: list[dict[str, Any]] = []
    budget = page_bytes
    pos = min(pos, end)
    data = pread(min(SCAN_BYTES, end - pos), pos) if pos < end else b""
    size = len(data)
    frame = _FRAME.unpack_from
    line, head, k_line, streams = enc.LINE.unpack_from, enc.LINE.size, enc.K_LINE, enc.STREAMS
    task, attempt_wanted, task_ids = match.task, match.attempt, match.task_ids
    i = 0
    bad = False
    try:
        while i + 2 * _LEN <= size and budget > 0:
            (n,) = frame(data, i)
            stop = i + n + 2 * _LEN
            if stop > size:
                if i == 0:  # a frame bigger than what was read: on its own
                    found = _frame_at(pread, pos, end)
                    if found is None:
                        bad = True
                    else:
                        out += match.records(found[0])
                        i = found[1] - pos
                break
            if frame(data, stop - _LEN)[0] != n:
                bad = True  # not a frame's end: a cut-off write (or a cursor not at a frame)
                break
            p = i + _LEN
            if data[p] == k_line and n >= head:  # (most records: an output line, decoded here)
                _k, prio, stream, _job, index, attempt, _pid, length, seq, ts = line(data, p)
                if (task is None or index == task) and (attempt_wanted is None or attempt == attempt_wanted):
                    task_id = task_ids.get(index)
                    if task_id is None:
                        task_id = task_ids[index] = f"{match.job_id}.{index}"
                    out.append({"seq": seq, "ts": ts, "priority": prio,
                                "stream": streams[stream] if stream < len(streams) else "log",
                                "attempt": attempt, "task_id": task_id,
                                "message": data[p + head : p + head + length].decode("utf-8", "replace")})
                    budget -= length + _WIRE_OVERHEAD
            else:
                got = match.records(data[p : stop - _LEN])
                if got:
                    out += got
                    budget -= _cost(got)
            i = stop
    except (ValueError, struct.error, IndexError):
        bad = True  # (not a record this daemon wrote: read from a cursor not at a frame)
    if i == 0:
        bad = True  # (not even one frame: a cut-off one, or a cursor not at a frame)
    pos += i
    return {"records": out, "cursor": pos, "more": pos < end and not bad, "older": None}


def _backwards(pread: _Pread, floor: int, pos: int, end: int, lines: int, match: _Match,
               page_bytes: int) -> dict[str, Any]:
    found: list[list[dict[str, Any]]] = []  # per frame, newest frame first
    count = 0
    budget = page_bytes
    scanned = 0
    bad = False
    while pos > floor and count < lines and budget > 0 and scanned < SCAN_BYTES and not bad:
        start = max(floor, pos - SCAN_BYTES)
        data = pread(pos - start, start)
        p = len(data)
        while p >= 2 * _LEN and count < lines and budget > 0:
            (n,) = _FRAME.unpack_from(data, p - _LEN)
            s = p - n - 2 * _LEN
            if s < 0:
                if p == len(data):  # a frame bigger than what was read: on its own
                    frame_start = pos - n - 2 * _LEN
                    got_frame = _frame_at(pread, frame_start, end) if frame_start >= floor else None
                    if got_frame is None:
                        bad = True
                        break
                    try:
                        got = match.records(got_frame[0])
                    except (ValueError, struct.error, IndexError):
                        bad = True
                        break
                    p = frame_start - start  # (negative: the next scan starts at the frame)
                    found.append(got)
                    count += len(got)
                    budget -= _cost(got)
                break
            if data[s : s + _LEN] != data[p - _LEN : p]:
                bad = True
                break
            try:
                got = match.records(data[s + _LEN : p - _LEN])
            except (ValueError, struct.error, IndexError):
                bad = True
                break
            if got:
                found.append(got)
                count += len(got)
                budget -= _cost(got)
            p = s
        if p == len(data):
            break
        scanned += len(data) - p
        pos = start + p
    records = [r for frame in reversed(found) for r in frame]
    if len(records) > lines:
        records = records[len(records) - lines :]
    older = pos if pos > floor and count < lines and not bad else None
    return {"records": records, "cursor": end, "more": False, "older": older}

"""Runs ``cmd`` tasks as child processes of the daemon (executor name ``commands``).

Runs on the daemon's loop thread. Each attempt is one child in its own session
and process group (so a timeout or cancel reaches everything it started), with
stdin from /dev/null and stdout/stderr on pipes read by the loop, line by line,
into the attempt's log. Exit is noticed through a pidfd registered with the
loop (no SIGCHLD handler, no polling), and the child is reaped right there, so
there are never zombies. When the main process exits, whatever is left of its
process group is killed: a task leaves nothing behind.

An attempt whose spec names a user (:attr:`AttemptSpec.user`) runs as that user: its supplementary
groups, gid and uid are set before the command is executed, it gets that user's ``HOME``, ``USER``
and ``LOGNAME``, and it keeps no fd of the daemon's but its 0, 1 and 2, and no capability (a daemon
that is not root but holds ``CAP_SETUID`` has ``setpriv`` clear its own). If the switch fails, the
attempt fails: a command never runs as the daemon's user by mistake. A working directory is entered
*after* the switch (through ``/bin/sh``), so the kernel checks the user's own right to enter it
rather than the daemon's.

The switch is made by util-linux's ``setpriv``, started with ``posix_spawn`` like any command
(it sets the ids, each checked, then executes the command; if one fails it exits without running
it). ``setpriv`` starts as root, so its environment holds none of what a root process would read
(the job's ``LD_PRELOAD`` or ``GLIBC_TUNABLES`` would otherwise run the job's code as root; see
:data:`_ROOT_READS`): those variables are set by ``env -- NAME=VALUE... COMMAND``, which ``setpriv``
executes once it runs as the user. The rest of the task's environment travels in the environment,
never in an argv: every user may read every process's command line, and a job's API token would
be there while the command starts. Python's
own way (``Popen(user=...)``) must ``fork`` rather than ``vfork``, which copies the daemon's page
tables for every command. Measured through this executor (8 slots, ``/bin/true``, a shared 2-core
machine): with 35 MB resident, 489-755 commands/s as the daemon's user, 441-542 through ``setpriv``
and 181-196 with ``Popen(user=...)``; with 200 MB, 565, 502 and 60. ``Popen`` remains the way
where either program is missing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from procpool.contract.limits import shorten
from procpool.contract.signals import signal_label
from procpoold import failures, journal, oom
from procpoold.engines import (
    STOP_STATUS,
    AttemptSpec,
    ExecutorEvents,
    Health,
    LeftAttempt,
    Outcome,
    StopReason,
    Stream,
    TaskError,
)
from procpoold.identity import Identity
from procpoold.loop import EventLoop, Timer

log = logging.getLogger("procpoold.commands")

#: Longest line passed on as one record; longer lines are split (never dropped).
MAX_LINE = 16 * 1024
_READ = 65536


#: Enters the working directory as the task's user, then runs the command (``$1`` the folder,
#: the rest the argv). A folder the user may not enter fails the attempt with status 126.
_CHDIR_THEN_EXEC = 'cd -- "$1" || exit 126; shift; exec "$@"'
#: Signals Python ignores that a command gets back at their default, as ``Popen`` does (an
#: ignored disposition survives ``exec``: ``yes | head`` would print "Broken pipe").
_RESTORED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))
#: Where the user switch is looked for (a fixed, root-owned path: never the daemon's PATH).
_SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class Switcher:
    """The programs that start a command as another user: ``setpriv`` (util-linux) sets the ids,
    then ``env`` (coreutils), already running as the user, sets the task's environment."""

    setpriv: str
    env: str

    @classmethod
    def find(cls) -> Switcher | None:
        """Both programs from the system's own folders, or None if either is missing."""
        setpriv = shutil.which("setpriv", path=_SYSTEM_PATH)
        env = shutil.which("env", path=_SYSTEM_PATH)
        return cls(setpriv, env) if setpriv and env else None

    def command(
        self, user: Identity, env: dict[str, str], argv: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and the environment that run ``argv`` as ``user`` with ``env``.

        ``setpriv`` fails rather than run anything with other ids. Its environment is ``env``
        without what a root process reads (:func:`_root_reads`); ``env``, already the user's, adds
        those from its argv (their values are paths and settings, not secrets) and takes the first
        word without "=" as the command (one with "=" goes through ``sh``).
        """
        groups = f"--groups={','.join(map(str, user.groups))}" if user.groups else "--clear-groups"
        # Root's capabilities go with the change to another uid; those of a daemon that is not root
        # (but holds CAP_SETUID) would stay, and let the command become root: clear them.
        caps = [] if os.geteuid() == 0 else ["--inh-caps=-all", "--ambient-caps=-all"]
        if "=" in argv[0]:
            argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]
        safe = {k: v for k, v in env.items() if not _root_reads(k)}
        assignments = [f"{k}={v}" for k, v in env.items() if k not in safe]
        return [self.setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", groups, *caps, "--",
                self.env, "--", *assignments, *argv], safe


#: Variables that a process running as root (``setpriv``) would read: the dynamic loader's, and those
#: the C library drops or restricts for set-user-ID programs (its list), locale and time zone included.
_ROOT_READS = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH", "NLSPATH",
    "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZ", "TZDIR", "LANG", "LANGUAGE", "POSIXLY_CORRECT",
    "OUTPUT_CHARSET",
})
_ROOT_READS_PREFIXES = ("LD_", "GLIBC_", "MALLOC_", "LC_")


def _root_reads(name: str) -> bool:
    return name in _ROOT_READS or name.startswith(_ROOT_READS_PREFIXES) or name.endswith("_DEBUG")


def attempt_env(
    spec: AttemptSpec, base: dict[str, str], identity: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a task: ``base`` (the daemon's), the user's ``HOME``, ``USER`` and
    ``LOGNAME`` when it runs as another user, the job's and task's additions, and its identity
    (``identity`` adds the daemon's: see :meth:`CommandExecutor.set_daemon_id`)."""
    user = spec.user
    if user is not None:
        base = {**base, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    return {**base, **spec.env, **(identity or {}), **spec.identity_env()}


def _no_fd_inherited() -> None:
    """Mark every fd above 2 close-on-exec: commands are started with ``posix_spawn``, which keeps
    inheritable fds, and an fd this process inherited from whoever started it is inheritable.
    (The fds the daemon opens itself are close-on-exec already: Python's, libzmq's and SQLite's.)"""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # pragma: no cover - /proc not mounted
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own fd is gone by now
                os.set_inheritable(fd, False)


@functools.lru_cache(maxsize=256)
def _candidates(program: str, path: str) -> tuple[str, ...]:
    """Where ``posix_spawnp`` would look for ``program`` on ``path``, in order (an empty entry is
    the current folder)."""
    return tuple(f"{folder or '.'}/{program}" for folder in path.split(":"))


def _search_path(program: str, path: str | None) -> str | None:
    """The file ``posix_spawnp`` would execute for ``program`` (no slash) on ``path``: the first
    one the daemon may execute that is not a folder, or None. Searched at every start (one
    ``access`` per folder, ~1 us each): a program installed meanwhile is found as by
    ``posix_spawnp``."""
    if path is None:
        return None
    access, x_ok = os.access, os.X_OK
    for candidate in _candidates(program, path):
        if access(candidate, x_ok):
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.stat(candidate).st_mode):
                    return candidate
    return None


def _kill_and_reap(pid: int) -> None:
    """Kill a command just started (its own process group) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class _Process(Protocol):
    """What the executor needs of a child: ``subprocess.Popen`` or :class:`_Spawned`."""

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...


class _Spawned:
    """A child started with ``posix_spawn``: reaped once its pidfd is readable."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.pidfd = os.pidfd_open(pid)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if timeout is not None and not select.select([self.pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass
class _Running:
    spec: AttemptSpec
    proc: _Process
    pidfd: int
    pipes: dict[int, Stream] = field(default_factory=dict)
    partial: dict[int, bytes] = field(default_factory=dict)
    paused: set[int] = field(default_factory=set)  # pipes not read while the log queue is full
    held: dict[int, list[bytes]] = field(default_factory=dict)  # lines read but not yet passed on
    closed: set[int] = field(default_factory=set)  # pipes read to the end (kept in pipes for the stream)
    stop_reason: StopReason | None = None
    kill_timer: Timer | None = None


class CommandExecutor:
    """Runs at most ``slots`` commands at once."""

    name = "commands"
    kinds = frozenset({"cmd"})
    #: a command is the leader of its own session: it goes on running when the daemon dies
    outlives_daemon = True

    def __init__(
        self,
        slots: int,
        kill_grace: float = 5.0,
        sink: journal.LogSink | None = None,
        switcher: Switcher | Literal["find"] | None = "find",
    ) -> None:
        self.slots = slots
        #: how a command starts as another user ("find": look for the programs; None: use Popen)
        self._switcher = Switcher.find() if switcher == "find" else switcher
        self.kill_grace = kill_grace
        #: The log queue: output is not read while it is full (policy block); see procpoold.journal.
        self._sink = sink
        self._running: dict[str, _Running] = {}
        #: the daemon's environment, read once at start (iterating os.environ decodes every variable)
        self._base_env: dict[str, str] = {}
        self._identity: dict[str, str] = {}
        self._loop: EventLoop | None = None
        self._events: ExecutorEvents | None = None
        self.started_total = 0

    # -- Executor -----------------------------------------------------------------------------

    def prefork(self) -> None:
        """Nothing to prepare: commands are spawned with fork+exec from C (thread-safe)."""

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        self._loop = loop
        self._events = events
        self._base_env = dict(os.environ)
        _no_fd_inherited()
        oom.shared()  # read the count of OOM kills now, before any command can die

    def set_daemon_id(self, daemon_id: str) -> None:
        """Give every command ``PROCPOOL_DAEMON_ID``: with its attempt's ids, it lets the next start
        of the same daemon (same state) find the command if this one crashes (:meth:`recover`)."""
        self._identity = {"PROCPOOL_DAEMON_ID": daemon_id}

    def recover(self, daemon_id: str, attempts: list[LeftAttempt]) -> int:
        """Kill what the previous daemon's commands left running (see :func:`kill_leftovers`)."""
        return kill_leftovers(attempts, daemon_id)

    def resize(self, workers: int) -> bool:
        """Run at most ``workers`` commands at once (those running above it finish first)."""
        self.slots = workers
        return True

    def health(self) -> Health:
        return Health(busy=len(self._running))

    def workers(self) -> list[dict[str, Any]]:
        """None: each command is a process of its own, listed by ``procctl status``."""
        return []

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running))

    def expect_work(self, uid: int | None) -> None:
        """Nothing to wake: each attempt starts its own process."""

    def submit(self, spec: AttemptSpec) -> None:
        assert self._loop is not None and self._events is not None
        argv: list[str] = ["/bin/sh", "-c", spec.cmd] if isinstance(spec.cmd, str) else list(spec.cmd or [])
        try:
            proc, pidfd, fds = self._spawn(spec, argv)
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte that slipped through
            # Report asynchronously, like any other outcome.
            why = getattr(exc, "strerror", None) or exc
            if spec.cwd is not None and isinstance(exc, OSError) and exc.filename == spec.cwd:
                why = failures.cwd_problem(spec.cwd, exc)  # (Popen names the folder it failed to enter)
            error = TaskError(type(exc).__name__, f"cannot start {shorten(argv[0])}: {why}")
            outcome = Outcome(spec.attempt_id, "failed", error=error)
            self._loop.call_soon(lambda: self._finish(outcome))
            return
        self.started_total += 1
        run = _Running(spec, proc, pidfd)
        self._running[spec.attempt_id] = run
        for fd, stream in zip(fds, ("stdout", "stderr"), strict=True):
            os.set_blocking(fd, False)
            run.pipes[fd] = stream  # type: ignore[assignment]
            self._loop.add_reader(fd, functools.partial(self._on_output, run, fd))
        self._loop.add_reader(run.pidfd, functools.partial(self._on_exit, run))
        self._events.attempt_started(spec.attempt_id, proc.pid, None)

    def _spawn(self, spec: AttemptSpec, argv: list[str]) -> tuple[_Process, int, tuple[int, int]]:
        """Start the command in its own session; its pid's pidfd and the read ends of its pipes.

        ``posix_spawn`` (vfork and exec in C, no Python in the child) where it can, also for
        another user (through ``setpriv``, see the module docstring); ``Popen`` (fork and exec
        in C) when the task sets a working directory as the daemon's user, which Python's
        ``posix_spawn`` cannot do, or runs as another user where there is no ``setpriv``.
        """
        env = attempt_env(spec, self._base_env, self._identity)
        user = spec.user
        if user is not None and self._switcher is not None:
            if "/" not in argv[0] or os.path.isabs(argv[0]):  # (a relative one depends on the cwd)
                self._check_program(argv[0], env)  # a missing program is "cannot start", as for others
            if spec.cwd is not None:
                argv = ["/bin/sh", "-c", _CHDIR_THEN_EXEC, "procpool-cwd", spec.cwd, *argv]
            # Nothing a process that still runs as root would read; nothing of the job's in an argv.
            return self._posix_spawn(*self._switcher.command(user, env, argv))
        if spec.cwd is not None or user is not None:
            cwd: str | None = spec.cwd
            ids: dict[str, Any] = {}
            if user is not None and os.geteuid() != 0:
                # Popen cannot clear the capabilities of a daemon that is not root: they would
                # pass to the command (CAP_SETUID: it could become root).
                raise PermissionError(
                    errno.EPERM, "no setpriv to clear this daemon's capabilities for another user"
                )
            if user is not None:
                # Groups, then gid, then uid, each checked: a failure raises OSError here and
                # fails the attempt (never a command left running as the daemon's user).
                ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
                if cwd is not None:
                    argv = ["/bin/sh", "-c", _CHDIR_THEN_EXEC, "procpool-cwd", cwd, *argv]
                    cwd = None
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=env, start_new_session=True, close_fds=True, **ids,
            )
            fds: list[int] = []
            try:
                for pipe in (popen.stdout, popen.stderr):
                    assert pipe is not None
                    fds.append(os.dup(pipe.fileno()))  # non-inheritable, like every fd we open
                    pipe.close()
                return popen, os.pidfd_open(popen.pid), (fds[0], fds[1])
            except BaseException:  # out of fds: a command nobody watches must not go on running
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
                for fd in fds:
                    os.close(fd)
                for pipe in (popen.stdout, popen.stderr):
                    if pipe is not None:
                        pipe.close()
                raise
        program = argv[0]
        if "/" not in program:
            if env.get("PATH") != self._base_env.get("PATH"):
                # posix_spawnp would search the daemon's PATH; the task's own PATH decides.
                program = self._check_program(program, env)
            else:
                # Searched here rather than by posix_spawnp in the child, where each folder of
                # the PATH before the program's costs a failed execve while the daemon waits
                # (vfork): ~40 us per command with a PATH of 10 folders. Not found: posix_spawnp
                # searches and fails as it always did.
                program = _search_path(program, env.get("PATH")) or program
        return self._posix_spawn(argv, env, program)

    @staticmethod
    def _check_program(program: str, env: dict[str, str]) -> str:
        """``program`` found on the task's PATH (or as given, with a slash); FileNotFoundError if not."""
        found = program if "/" in program else shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None or not os.path.exists(found):
            raise FileNotFoundError(2, "No such file or directory", program)
        return found

    @staticmethod
    def _posix_spawn(
        argv: list[str], env: dict[str, str], program: str | None = None
    ) -> tuple[_Process, int, tuple[int, int]]:
        """Start ``argv`` with ``posix_spawn`` in its own session, stdin /dev/null, output on pipes."""
        program = program or argv[0]
        out_r, out_w = os.pipe()  # created close-on-exec: the child keeps only its 0, 1 and 2
        err_r, err_w = os.pipe()
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ]
            spawn = os.posix_spawnp if "/" not in program else os.posix_spawn
            pid = spawn(program, argv, env, file_actions=actions, setsid=True, setsigdef=_RESTORED)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            child = _Spawned(pid)
        except BaseException:  # out of fds: a command nobody watches must not go on running
            _kill_and_reap(pid)
            os.close(out_r)
            os.close(err_r)
            raise
        return child, child.pidfd, (out_r, err_r)

    def stop_attempt(
        self, attempt_id: str, reason: StopReason, signum: int | None = None, grace: float | None = None
    ) -> None:
        """Send ``signum`` (SIGTERM) to the command's process group, SIGKILL ``grace`` seconds later
        (the attempt's ``kill_grace``, else the engine's). A second stop sends its signal too, and
        its grace shortens the wait for SIGKILL (never lengthens it)."""
        run = self._running.get(attempt_id)
        if run is None:
            return
        signum = signal.SIGTERM if signum is None else signum
        if grace is None:
            grace = self.kill_grace if run.spec.kill_grace is None else run.spec.kill_grace
        first = run.stop_reason is None
        if first:
            run.stop_reason = reason
        self._signal_group(run, signum)
        if signum == signal.SIGKILL:
            if run.kill_timer is not None:
                run.kill_timer.cancel()
            return
        assert self._loop is not None
        if not first and run.kill_timer is not None:
            if run.kill_timer.when <= time.monotonic() + grace:
                return  # SIGKILL comes sooner already
            run.kill_timer.cancel()
        run.kill_timer = self._loop.call_later(grace, lambda: self._signal_group(run, signal.SIGKILL))

    def shutdown(self, grace: float) -> None:
        """Stop every command: SIGTERM, up to ``kill_grace`` seconds, then SIGKILL; reap all."""
        for attempt_id in list(self._running):
            self.stop_attempt(attempt_id, "shutdown")
        for run in list(self._running.values()):
            try:
                run.proc.wait(self.kill_grace)
            except subprocess.TimeoutExpired:
                self._signal_group(run, signal.SIGKILL)
                run.proc.wait()
            self._on_exit(run, wait_for_room=False)

    def info(self) -> dict[str, Any]:
        return {"slots": self.slots, "running": len(self._running), "started": self.started_total}

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _signal_group(run: _Running, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signum)

    def _on_output(self, run: _Running, fd: int) -> None:
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(run, fd)
            return
        if not self._emit_lines(run, fd, data):
            # Backpressure (log_policy block): the log queue is full. Stop reading this pipe until
            # it drains; the task blocks on its full pipe meanwhile. Unsent lines wait in run.held.
            assert self._loop is not None and self._sink is not None
            self._loop.remove_reader(fd)
            run.paused.add(fd)
            self._sink.when_room(functools.partial(self._resume, run, fd))

    def _resume(self, run: _Running, fd: int) -> None:
        if fd not in run.paused or fd in run.closed or self._running.get(run.spec.attempt_id) is not run:
            return
        assert self._loop is not None and self._sink is not None
        if not self._emit(run, fd, []):
            self._sink.when_room(functools.partial(self._resume, run, fd))
            return
        run.paused.discard(fd)
        self._loop.add_reader(fd, functools.partial(self._on_output, run, fd))

    def _emit_lines(self, run: _Running, fd: int, data: bytes) -> bool:
        """Pass complete lines on; False if the log queue filled up (the rest waits in run.held)."""
        buf = run.partial.get(fd, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:  # a line with no end in sight: pass it on in pieces
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        run.partial[fd] = rest
        return self._emit(run, fd, lines)

    def _emit(self, run: _Running, fd: int, lines: list[bytes], force: bool = False) -> bool:
        assert self._events is not None
        held = run.held.pop(fd, None)
        if held:
            lines = held + lines
        stream = run.pipes[fd]
        level = logging.INFO if stream == "stdout" else logging.WARNING
        sink = None if force else self._sink
        for i, line in enumerate(lines):
            if sink is not None and not sink.has_room():
                run.held[fd] = lines[i:]
                return False
            for start in range(0, max(len(line), 1), MAX_LINE):
                chunk = line[start:start + MAX_LINE].decode("utf-8", "replace").rstrip("\r")
                self._events.attempt_log(run.spec.attempt_id, stream, level, chunk)
        return True

    def _close_pipe(self, run: _Running, fd: int) -> None:
        """Read what is left in the pipe into ``run.held`` (lines are passed on as the log queue has
        room, like any others) and close it; the stream stays known for those lines."""
        assert self._loop is not None
        if fd in run.closed:
            return
        chunks = [run.partial.pop(fd, b"")]
        with contextlib.suppress(BlockingIOError):
            while True:
                data = os.read(fd, _READ)
                if not data:
                    break
                chunks.append(data)
        lines = b"".join(chunks).split(b"\n")
        if not lines[-1]:
            lines.pop()  # the empty rest after the last newline
        if lines:
            run.held[fd] = run.held.get(fd, []) + lines
        self._loop.remove_reader(fd)
        run.paused.discard(fd)
        run.closed.add(fd)
        os.close(fd)
        if run.spec.attempt_id in self._running:  # else _on_exit passes them on before the outcome
            self._pass_on_held(run)

    def _emit_held(self, run: _Running) -> bool:
        """Pass on held lines of closed pipes while there is room; True when none is left."""
        for fd in list(run.held):
            if fd in run.closed and not self._emit(run, fd, []):
                return False
        return not any(fd in run.closed for fd in run.held)

    def _on_exit(self, run: _Running, wait_for_room: bool = True) -> None:
        assert self._loop is not None
        if run.spec.attempt_id not in self._running:
            return
        code = run.proc.wait()  # the pidfd said it exited: this reaps without blocking
        del self._running[run.spec.attempt_id]
        self._loop.remove_reader(run.pidfd)
        os.close(run.pidfd)
        if run.kill_timer is not None:
            run.kill_timer.cancel()
        # Whatever the task left in its process group goes with it.
        self._signal_group(run, signal.SIGKILL)
        for fd in list(run.pipes):  # what the task wrote before it exited
            self._close_pipe(run, fd)
        if run.stop_reason is not None:
            outcome = Outcome(run.spec.attempt_id, STOP_STATUS[run.stop_reason], exit_code=code)
        elif code == 0:
            outcome = Outcome(run.spec.attempt_id, "completed", exit_code=0)
        elif code == -signal.SIGKILL and oom.shared().consume():
            outcome = Outcome(run.spec.attempt_id, "failed", exit_code=code, error=TaskError(
                "CommandFailed", "command killed by the kernel's OOM killer (SIGKILL): out of memory"))
        else:
            what = f"killed by {signal_label(-code)}" if code < 0 else f"exited with status {code}"
            outcome = Outcome(run.spec.attempt_id, "failed", exit_code=code,
                              error=TaskError("CommandFailed", f"command {what}"))
        if wait_for_room:
            self._pass_on_held(run, outcome)
            return
        for fd in list(run.held):  # shutting down: nobody waits for room any more
            self._emit(run, fd, [], force=True)
        self._finish(outcome)

    def _pass_on_held(self, run: _Running, outcome: Outcome | None = None) -> None:
        """Pass on the held lines of closed pipes as the log queue has room (with log_policy block
        none is dropped for want of it); then report ``outcome``, so that a command's last lines
        come before its final record. Without an outcome (a pipe closed while the command runs),
        this stops once the command has exited: its exit takes over with the outcome."""
        if outcome is None and self._running.get(run.spec.attempt_id) is not run:
            return
        if not self._emit_held(run):
            assert self._sink is not None
            self._sink.when_room(functools.partial(self._pass_on_held, run, outcome))
        elif outcome is not None:
            self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        assert self._events is not None
        self._events.attempt_finished(outcome)


def kill_leftovers(attempts: list[LeftAttempt], daemon_id: str) -> int:
    """Kill what a crashed daemon's commands left running: each one's whole process group; returns
    how many were found.

    A command runs as the leader of its own session and carries its identity in its environment: its daemon's
    (``PROCPOOL_DAEMON_ID``, one per state file) and its attempt's (``PROCPOOL_JOB_ID``,
    ``PROCPOOL_TASK_ID``, ``PROCPOOL_ATTEMPT``). A recorded pid is killed only if its process still
    carries that identity (a reused pid is never hit), and an attempt whose pid was not written
    before the crash is found by its identity among session leaders (another daemon's commands,
    with job ids of their own, are never hit).
    """
    wanted = {(daemon_id, a.job_id, a.task_id, str(a.attempt)): a.pid for a in attempts}
    found: dict[tuple[str, str, str, str], int] = {}
    for key, pid in wanted.items():
        if pid is not None and _identity(pid) == key:
            found[key] = pid
    if len(found) < len(wanted):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            ident = _identity(int(entry.name))
            if ident is not None and ident in wanted and ident not in found:
                found[ident] = int(entry.name)
    for pid in found.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            log.warning("killed process group %d left running by the previous daemon", pid)
    return len(found)


def _identity(pid: int) -> tuple[str, str, str, str] | None:
    """``(daemon id, job id, task id, attempt)`` of a session leader started by procpoold, else None."""
    try:
        if os.getsid(pid) != pid:
            return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    fields: dict[bytes, str] = {}
    for item in env:
        name, sep, value = item.partition(b"=")
        if sep and name in _IDENTITY:
            fields[name] = value.decode("utf-8", "replace")
    if len(fields) != len(_IDENTITY):
        return None
    return tuple(fields[name] for name in _IDENTITY)  # type: ignore[return-value]


_IDENTITY = (b"PROCPOOL_DAEMON_ID", b"PROCPOOL_JOB_ID", b"PROCPOOL_TASK_ID", b"PROCPOOL_ATTEMPT")

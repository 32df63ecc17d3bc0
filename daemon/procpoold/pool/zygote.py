"""The zygote: a fork server for pool workers, and their only parent and reaper.

Two halves live here:

* :func:`start` and :class:`Zygote` run in the **daemon** (event-loop thread). ``start`` forks the
  zygote from ``Executor.prefork()``, before the daemon has any thread or ZeroMQ context, so the
  zygote (and every worker it forks) starts from a single-threaded image.
* :func:`_main` runs in the **zygote process** (single-threaded). It preloads what workers need,
  then serves requests on a ``SOCK_SEQPACKET`` socket pair: ``spawn`` (forks a worker, with the
  segment memfd and eventfds passed over ``SCM_RIGHTS``) and ``kill`` (signals a live child). It
  reaps its children on ``SIGCHLD`` and reports every exit with its status.

Process tree and reaping: the daemon reaps the zygote, the zygote reaps the workers. Because the
zygote is the workers' parent, a pid it reports as live cannot have been reused, so all signals
to workers go through it (``kill`` requests) rather than ``os.kill`` from the daemon.

Users: a worker is bound to one identity for its whole life. The forked child drops privileges
(supplementary groups, gid, uid, in that order, then every capability) and checks that it cannot
get them back (``setuid(0)`` must fail) before it maps the segment beyond what the daemon set up,
imports or decodes anything of a task's; then it puts ``/dev/null`` on its stdin, stdout and
stderr, which are the daemon's (a terminal, the journal's stream). The zygote itself stays the
daemon's user (it must fork workers of every user and signal them).

Dying with the parent: workers set ``PR_SET_PDEATHSIG`` to ``SIGKILL`` (their parent is the
zygote). The zygote sets it to ``SIGTERM`` and also treats end-of-file on its socket as the
daemon's death; either way it SIGKILLs and reaps its workers, unlinks the spill objects the daemon
and the workers left in ``/dev/shm``, and exits. After ``prctl`` each child compares
``os.getppid()`` with the expected parent: a parent that died before ``prctl`` took effect would
never deliver the signal.

Wire format (one msgpack map per packet, both directions):

* daemon -> zygote: ``{"op": "spawn", "slot", "gen", "cfg", "user"}`` + fds ``[segment, result
  eventfd, request eventfd]``; ``user`` is None (the daemon's own user) or ``{"uid", "gid",
  "groups", "name", "home"}``: the worker drops to it before anything else (:func:`drop_privileges`);
  ``{"op": "kill", "pid", "sig"}``; ``{"op": "exit"}``.
* zygote -> daemon: ``{"ev": "spawned", "slot", "gen", "pid"}``; ``{"ev": "failed", "slot",
  "gen", "message"}``; ``{"ev": "exited", "pid", "code", "signal"}`` (one of the two is None).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

import msgpack

from procpoold.identity import Identity
from procpoold.pool import shm

#: ``prctl`` option number of PR_SET_PDEATHSIG (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: Largest control packet (spawn requests carry a small config map).
_MAX_PACKET = 65536
#: Exit code of a zygote or worker that hit an internal error.
EXIT_INTERNAL = 70
#: Exit code of a worker that could not become its user (EX_NOPERM).
EXIT_NO_USER = 77


def set_pdeathsig(sig: int, expected_parent: int) -> None:
    """Ask the kernel for ``sig`` when our parent dies; exit at once if it already has.

    The check after ``prctl`` closes the race where the parent died between ``fork`` and here (we
    would then have been re-parented, and the death signal would never come).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected_parent:
        os._exit(EXIT_INTERNAL)


class PrivilegeError(RuntimeError):
    """The worker could not become its user, or could become root again."""


#: ``capset`` header version (linux/capability.h, _LINUX_CAPABILITY_VERSION_3).
_CAP_VERSION_3 = 0x20080522
#: ``prctl`` options: PR_CAP_AMBIENT and its PR_CAP_AMBIENT_CLEAR_ALL.
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
#: Variables of the daemon's service that mean nothing (or too much) to another user's task.
_SERVICE_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                "WATCHDOG_PID", "CREDENTIALS_DIRECTORY", "INVOCATION_ID", "MAINPID")


def _clear_capabilities() -> None:
    """Empty the effective, permitted, inheritable and ambient capability sets.

    ``setuid`` from root to another uid clears them already; a daemon that is not root but holds
    ``CAP_SETUID`` keeps them across ``setuid``, and would then be able to become root again.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # fails harmlessly on old kernels
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} triples, all zero
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")


def drop_privileges(user: dict[str, Any]) -> None:
    """Become ``user`` for good (runs in a freshly forked worker, before any task code).

    Supplementary groups, then the gid, then the uid (each step needs the privilege the next one
    takes away), then every capability; then proves the way back is closed: ``setuid(0)`` must
    fail and the real, effective and saved ids must all be the user's. Sets ``HOME``, ``USER``
    and ``LOGNAME``, drops the service's own variables, and moves to the user's home (``/`` when
    the home cannot be entered), so that the daemon's folder is not the task's starting point.
    Raises :class:`PrivilegeError` (the worker then exits before running anything).
    """
    uid, gid = int(user["uid"]), int(user["gid"])
    groups = [int(g) for g in user.get("groups") or [gid]]
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    _clear_capabilities()
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PrivilegeError("setuid(0) succeeded after dropping privileges")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeError(f"ids are {os.getresuid()}/{os.getresgid()}, not {uid}/{gid}")
    if sorted(set(os.getgroups())) != sorted(set(groups)):
        raise PrivilegeError(f"supplementary groups are {os.getgroups()}, not {groups}")
    for key in _SERVICE_ENV:
        os.environ.pop(key, None)
    name = str(user.get("name") or uid)
    home = str(user.get("home") or "/")
    os.environ.update(HOME=home, USER=name, LOGNAME=name)
    try:
        os.chdir(home)
    except OSError:
        os.chdir("/")


def _leave_stdio() -> None:
    """Put ``/dev/null`` on fds 0, 1 and 2 of a worker of another user.

    They are the daemon's: a terminal (that the user could read, or push keystrokes into as if
    typed at it), the journal's stream of the service, a log file. Such a worker's own words
    outside an attempt (a failure of its runtime) are lost; its tasks' output goes through its ring.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]


class Zygote:
    """The daemon's handle on its zygote: send requests, read reports, stop and reap it."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True

    def fileno(self) -> int:
        """The socket to register with the event loop."""
        return self.sock.fileno()

    def spawn(self, slot: int, gen: int, cfg: dict[str, Any], fds: list[int],
              user: Identity | None = None) -> None:
        """Ask for a worker for ``slot`` running as ``user`` (None: the daemon's own user); ``fds``
        are duplicated into the zygote by the kernel."""
        wire = None if user is None else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups),
                                          "name": user.name, "home": user.home}
        msg = {"op": "spawn", "slot": slot, "gen": gen, "cfg": cfg, "user": wire}
        socket.send_fds(self.sock, [_pack(msg)], fds)

    def kill(self, pid: int, sig: int) -> None:
        """Ask the zygote to signal its child ``pid`` (ignored if that child is already reaped)."""
        with contextlib.suppress(OSError):
            self.sock.send(_pack({"op": "kill", "pid": pid, "sig": int(sig)}))

    def read(self) -> list[dict[str, Any]] | None:
        """Reports waiting on the socket (non-blocking); None once the zygote is gone (EOF)."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                data = self.sock.recv(_MAX_PACKET)
            except BlockingIOError:
                return out
            except OSError:
                data = b""
            if not data:
                self.alive = False
                return out or None
            out.append(msgpack.unpackb(data, raw=False))

    def stop(self, timeout: float = 5.0) -> int | None:
        """Tell the zygote to kill and reap its workers and exit; reap it. Returns its wait status.

        The zygote SIGKILLs whatever workers remain, so call this after giving them a chance to
        exit. If it does not exit within ``timeout`` it is SIGKILLed (its workers then die of
        their death signal).
        """
        with contextlib.suppress(OSError):
            self.sock.send(_pack({"op": "exit"}))
        status = _reap(self.pid, timeout)
        self.sock.close()
        self.alive = False
        return status


def _reap(pid: int, timeout: float) -> int | None:
    """Wait for our child ``pid`` up to ``timeout``, then SIGKILL and wait for it for good."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got == pid:
            return status
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def start() -> Zygote:
    """Fork the zygote (call before any thread or ZeroMQ context exists) and return its handle."""
    parent_pid = os.getpid()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Flush before forking so buffered output is not written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the zygote (measured by the pool tests)
        code = EXIT_INTERNAL
        try:
            ours.close()
            code = _main(theirs, parent_pid)
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    ours.setblocking(False)
    return Zygote(pid, ours)


# -- the zygote process ----------------------------------------------------------------------------


def _close_inherited(keep: set[int]) -> None:
    """Close every fd inherited from the daemon except stdio and ``keep``.

    The daemon's control socket, listening fds and files must not stay open in a process that
    outlives nothing but could keep them alive. Python objects still wrapping those numbers are
    never collected here (everything is frozen below, and we never return to their frames).
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _preload() -> None:
    """Import what workers need, so they share it copy-on-write instead of each importing it."""
    import asyncio  # noqa: F401
    import logging  # noqa: F401
    import threading  # noqa: F401
    import traceback  # noqa: F401

    import procpool.task  # noqa: F401
    from procpoold.pool import ring, worker  # noqa: F401

    worker.snapshot()  # what a worker restores between jobs, shared by all of them


class _ZygoteServer:
    """State of the zygote process: its socket, children and signal wakeups."""

    def __init__(self, sock: socket.socket, parent_pid: int) -> None:
        self.sock = sock
        self.parent_pid = parent_pid
        self.children: dict[int, int] = {}  # pid -> slot
        self.exited: set[int] = set()  # every worker pid seen, for spill cleanup at exit
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        #: The daemon said "exit"; stopping for any other reason (our parent-death signal, EOF on
        #: the socket) means the daemon is gone, even while the kernel still shows it alive.
        self.asked_to_exit = False
        self.selector = selectors.DefaultSelector()

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, lambda _n, _f: None)
        sel = self.selector
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(self.wake_r, selectors.EVENT_READ, "sig")
        while not self.stopping:
            for key, _ in sel.select():
                if key.data == "sig":
                    self._signals()
                else:
                    self._requests()
        sel.close()
        return self._finish()

    def _signals(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:  # PR_SET_PDEATHSIG: the daemon is gone
            self.stopping = True
        self._reap()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.pop(pid, None)
            self.exited.add(pid)
            code = os.waitstatus_to_exitcode(status)
            self._send({"ev": "exited", "pid": pid, "code": code if code >= 0 else None,
                        "signal": -code if code < 0 else None})

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.sock.send(_pack(msg))
        except OSError:  # the daemon is gone; _requests sees EOF and stops
            self.stopping = True

    def _requests(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_PACKET, 8, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, fds = b"", []
        if not data:
            self.stopping = True
            return
        try:
            msg = msgpack.unpackb(data, raw=False)
            op = msg.get("op")
            if op == "spawn":
                self._spawn(msg, fds)
            elif op == "kill":
                pid = int(msg["pid"])
                if pid in self.children:  # a reaped pid may belong to someone else by now
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, int(msg["sig"]))
            elif op == "exit":
                self.stopping = self.asked_to_exit = True
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        slot, gen = int(msg["slot"]), int(msg["gen"])
        if len(fds) != 3:
            self._send({"ev": "failed", "slot": slot, "gen": gen, "message": f"got {len(fds)} fds, not 3"})
            return
        zygote_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            self._send({"ev": "failed", "slot": slot, "gen": gen, "message": f"fork failed: {exc}"})
            return
        if pid == 0:  # pragma: no cover - runs in the worker
            code = EXIT_INTERNAL
            try:
                self.sock.close()
                self.selector.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                user = msg.get("user")
                if user is not None:
                    # First: nothing of the task's may run, or be decoded, with our privileges.
                    code = EXIT_NO_USER
                    drop_privileges(user)
                    code = EXIT_INTERNAL
                    _leave_stdio()
                # After the drop: a change of credentials clears the parent-death signal.
                set_pdeathsig(signal.SIGKILL, zygote_pid)
                from procpoold.pool import worker

                code = worker.main(slot, fds[0], fds[1], fds[2], msg.get("cfg") or {})
            except BaseException:
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children[pid] = slot
        self._send({"ev": "spawned", "slot": slot, "gen": gen, "pid": pid})

    def _finish(self) -> int:
        # Whatever is left dies now (the daemon asked workers to exit first when it could).
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)
            self.exited.add(pid)
        # Spill objects of the dead: the daemon's (if it died) and every worker's.
        owners = set(self.exited)
        # A SIGKILLed daemon's other threads may still be exiting when its main thread's death
        # signals us, so its pid can still look alive: stopping unasked is proof enough.
        if not self.asked_to_exit or not shm.pid_alive(self.parent_pid) or os.getppid() != self.parent_pid:
            owners.add(self.parent_pid)
        with contextlib.suppress(OSError):
            shm.cleanup_leftovers(shm.SPILL_PREFIX, owners=owners)
        return 0


def _main(sock: socket.socket, parent_pid: int) -> int:  # pragma: no cover - zygote process
    """Entry point of the zygote process (never returns to the daemon's code)."""
    # Freeze first: from here no daemon object is ever finalised in this process, so none can
    # close an fd number that we reuse after closing the inherited ones below.
    gc.freeze()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    # Its own process group: a Ctrl-C at the daemon's terminal must not reach tasks.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    set_pdeathsig(signal.SIGTERM, parent_pid)
    _close_inherited({sock.fileno()})
    sock.setblocking(True)
    server = _ZygoteServer(sock, parent_pid)
    _preload()
    # Everything allocated so far is shared with every worker; keep the cyclic GC from touching
    # (and so un-sharing) it.
    gc.collect()
    gc.freeze()
    return server.serve()

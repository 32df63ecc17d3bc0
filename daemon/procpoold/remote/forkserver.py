"""``python -m procpoold.remote.forkserver``: forks each attempt's process on a remote worker.

A fresh Python per attempt costs tens of milliseconds before the task's first line (the
interpreter, then the task API and its imports). The runner therefore starts one fork server per
Dask worker process, which imports all of that once and forks a child per attempt, as the pool's
zygote does on the daemon's host. The child starts a session of its own, takes the attempt's
stdin, stdout, stderr and frame pipe, environment, working directory and user, and runs
:func:`procpoold.remote.harness.main`.

Protocol on the Unix socket (SOCK_SEQPACKET, one msgpack message per packet, from the runner,
the only peer; file descriptors ride with the request):

    runner -> server  {"env": {...}, "cwd": str|None, "user": [uid, gid, [groups]]|None}
                      + SCM_RIGHTS [stdin, stdout, stderr, frames]
    server -> runner  {"t": "pid", "pid": int}          (in the order of the requests)
    server -> runner  {"t": "exit", "pid": int, "code": int}   (when a child has ended)

The server reaps its children (SIGCHLD wakes it) and reports how each ended; it exits when the
socket ends (its runner, the Dask worker, is gone). It is single-threaded, so forking is safe.
"""

from __future__ import annotations

import array
import errno
import os
import select
import signal
import socket
import sys
from typing import Any

# What every attempt needs, imported once here rather than in each child.
import msgpack

import procpool.task  # noqa: F401
from procpoold.remote import frames, harness

MAX_MESSAGE = 4 * 1024 * 1024
FDS = 4


def _child(request: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become the attempt's process and run it (never returns)."""
    code = 1
    try:
        sock.close()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 3:
                os.close(fd)
        os.closerange(4, 65536)
        env = request.get("env") or {}
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.environ["PROCPOOL_FRAMES_FD"] = "3"
        try:
            cwd = request.get("cwd")
            if cwd:
                try:
                    os.chdir(cwd)
                except OSError as exc:
                    what = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a directory"}.get(
                        exc.errno or 0, f"is not accessible ({exc.strerror})")
                    raise OSError(exc.errno, f"the working directory {cwd[:200]!r} {what}") from None
            user = request.get("user")
            if user is not None:
                uid, gid, groups = user
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
        except OSError as exc:
            message = f"cannot start the attempt on host {socket.gethostname()}: {exc.strerror or exc}"
            frames.write_frame(3, ["done", False, {"type": "StartFailed", "message": message,
                                                           "traceback": ""}])
            os._exit(1)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        code = harness.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(sock)
        if sock.fileno() not in ready:
            continue
        fds = array.array("i")
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(FDS * fds.itemsize))
        except InterruptedError:
            continue
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data:
            return  # the runner is gone
        try:
            request = msgpack.unpackb(data, raw=False)
            if type(request) is not dict or len(fds) != FDS:
                raise ValueError("a malformed request")
            pid = os.fork()
            if pid == 0:
                _child(request, list(fds), sock)
            reply: dict[str, Any] = {"t": "pid", "pid": pid}
        except Exception as exc:
            reply = {"t": "pid", "pid": -1, "error": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(msgpack.packb(reply))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(msgpack.packb({"t": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)}))


def main() -> int:
    fd = int(os.environ.pop("PROCPOOL_FORKSERVER_FD"))
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

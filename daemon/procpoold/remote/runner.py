"""What a Dask worker runs for one attempt of procpoold's Dask engine.

:func:`run_attempt` is the Dask task. It starts :mod:`procpoold.remote.harness` as the leader of a
new session (as the attempt's user when the worker runs as root), hands it the attempt, and
relays until the harness ends:

- log records and stdout/stderr lines go home as Dask events on the daemon's topic, in batches
  (``{"t": "logs", "aid": ..., "b": <msgpack bytes of the lines>}``);
- namespace operations go home as ``{"t": "req", ...}`` events; the daemon answers by running
  :func:`deliver` on this worker (``Client.run``), which writes the reply to the harness;
- progress reports go home as ``{"t": "progress", ...}``.

The Dask task's result is msgpack bytes (:func:`result`): the daemon never unpickles anything of
the attempt; Dask's own serialization carries only those bytes.

:func:`stop` (a timeout, a cancel: SIGTERM to the session, SIGKILL after the grace) and
:func:`stop_daemon` (a restarted daemon's recovery: SIGKILL to every attempt of its previous
run) also run on the worker through ``Client.run``. A stop that arrives before its attempt has
started leaves a mark, so that the attempt, if Dask still starts it, ends at once.
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import pwd
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from procpool.contract.logfields import MAX_FIELDS
from procpoold.remote import frames

#: Lines of output and log records sent home in one event at most (and bytes of their text), and
#: how long one waits. The Dask scheduler keeps the last events of each topic (1,000 by default,
#: ``distributed.admin.low-level-log-length``), so an event stays small.
BATCH_LINES = 500
BATCH_BYTES = 32 * 1024
BATCH_DELAY = 0.05
#: A result up to this size goes home as an event; a larger one as the Dask task's result (which
#: costs the daemon's client a fetch from the worker).
EVENT_RESULT = 32 * 1024
#: Longest line passed on (longer ones are cut, as in the pool).
MAX_LINE = 16 * 1024
#: Seconds to wait for the harness's exit once its frame pipe has closed, and to drain the output
#: its session left in the pipes after that.
EXIT_WAIT = 10.0
DRAIN = 1.0
#: Attempts remembered as stopped before they started (per worker process).
MAX_MARKS = 10_000


class _Run:
    """One attempt running on this worker: its process (a child of the fork server) and our ends
    of its pipes."""

    def __init__(self, aid: str, daemon: str, run: str, pid: int, stdin: int, stdout: int,
                 stderr: int) -> None:
        self.aid = aid
        self.daemon = daemon  # the state it belongs to (the daemon's id)
        self.run = run  # the daemon process that sent it (a restarted daemon has another)
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.lock = threading.Lock()
        self.stopped = False
        self.killer: threading.Timer | None = None
        #: a command's process, the leader of a session of its own under the harness (0: none)
        self.child = 0
        #: the harness has ended and its fork server has reaped it (its pid may be reused)
        self.ended = False

    def signal(self, signum: int) -> None:
        """``signum`` to the harness's session; SIGKILL also to its command's (another signal the
        harness passes on itself: sent to both, a command's trap would run twice)."""
        for pgid in (self.pid, self.child if signum == signal.SIGKILL else 0):
            if pgid:
                try:
                    os.killpg(pgid, signum)
                except ProcessLookupError:
                    if pgid == self.pid and not self.ended:
                        # Forked a moment ago, it has not made its session yet (a stop that came
                        # with the start): the process itself, which has not been reaped.
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pgid, signum)
                except PermissionError:
                    pass

    def take_child(self, pid: Any) -> bool:
        """The harness names its command's process: taken only if it is that, a child of the
        harness leading its own session (the runner may run as root: it signals no other group)."""
        if self.child or type(pid) is not int or pid <= 1 or pid == self.pid:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return True  # it has ended already: nothing to signal, nothing wrong
        if int(fields[1]) != self.pid or int(fields[3]) != pid:  # ppid, session id
            return False
        self.child = pid
        return True

    def reply(self, frame: Any) -> None:
        with self.lock:
            if self.stdin < 0:
                return
            try:
                frames.write_frame(self.stdin, frame)
            except OSError:
                pass  # the attempt has ended: nobody waits for the answer

    def close_stdin(self) -> None:
        with self.lock:
            if self.stdin >= 0:
                os.close(self.stdin)
                self.stdin = -1


class _ForkServer:
    """The fork server of this worker process (:mod:`procpoold.remote.forkserver`), started on
    first use and again if it has died; one request at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.replies: collections.deque[dict[str, Any]] = collections.deque()
        self.exits: dict[int, int] = {}
        self.alive = False

    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "PROCPOOL_FORKSERVER_FD": str(child.fileno())}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "procpoold.remote.forkserver"],
                                         stdin=subprocess.DEVNULL, pass_fds=(child.fileno(),), env=env)
        finally:
            child.close()
        self.sock = parent
        with self.cond:
            self.replies.clear()
            self.alive = True
        threading.Thread(target=self._read, args=(parent, self.proc), name="procpool-forkserver",
                         daemon=True).start()

    def _read(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                msg = frames.unpack(data)
                with self.cond:
                    if msg.get("t") == "exit":
                        self.exits[int(msg["pid"])] = int(msg["code"])
                    else:
                        self.replies.append(msg)
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            sock.close()
            proc.wait()
            with self.cond:
                if self.sock is sock:
                    self.alive = False
                    self.sock = None
                self.cond.notify_all()

    def spawn(self, env: dict[str, str], cwd: str | None, user: list[Any] | None,
              fds: list[int]) -> int:
        """Fork a child for an attempt (see the forkserver's protocol); its pid."""
        with self.lock:
            if self.sock is None or not self.alive:
                self._start()
            assert self.sock is not None
            data = frames.pack({"env": env, "cwd": cwd, "user": user})[4:]
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            with self.cond:
                if not self.cond.wait_for(lambda: self.replies or not self.alive, timeout=60.0) \
                        or not self.replies:
                    raise OSError("the attempt's fork server did not answer")
                reply = self.replies.popleft()
        pid = int(reply.get("pid", -1))
        if pid <= 0:
            raise OSError(f"the fork server could not start the attempt: {reply.get('error')}")
        return pid

    def wait(self, pid: int, timeout: float | None = None) -> int | None:
        """How ``pid`` ended; None if the fork server died before it said."""
        with self.cond:
            self.cond.wait_for(lambda: pid in self.exits or not self.alive, timeout=timeout)
            return self.exits.pop(pid, None)


_lock = threading.Lock()
_server = _ForkServer()
_running: dict[str, _Run] = {}
_marks: collections.OrderedDict[str, None] = collections.OrderedDict()


def result(ok: bool, value: Any, **extra: Any) -> bytes:
    """The Dask task's result: msgpack bytes of ``{"ok", "value", ...}``."""
    return frames.pack({"ok": ok, "value": value, **extra})[4:]


def _failure(kind: str, message: str) -> bytes:
    return result(False, {"type": kind, "message": message, "traceback": ""})


def _identity(user: str | None) -> tuple[list[Any] | None, dict[str, str]] | str:
    """The ``[uid, gid, groups]`` to switch to (None: stay) and env for running as ``user``, or why
    this worker cannot."""
    if user is None:
        return None, {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"the user {user!r} does not exist on host {socket.gethostname()}"
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if os.geteuid() == 0:
        return [pw.pw_uid, pw.pw_gid, os.getgrouplist(pw.pw_name, pw.pw_gid)], env
    if os.geteuid() == pw.pw_uid:
        return None, env
    return (f"this Dask worker runs as uid {os.geteuid()}, not as root nor as {user!r}, "
            f"so it cannot run {user!r}'s task")


def _events() -> Any:
    from distributed import get_worker

    return get_worker()


def run_attempt(payload_bytes: bytes, topic: str) -> bytes:
    """Run one attempt (the Dask task); returns :func:`result` bytes."""
    payload = frames.unpack(payload_bytes)
    aid: str = payload["attempt_id"]
    #: how this worker knows the attempt: its daemon process's tag and its id (see stop, deliver)
    tag = f"{payload.get('run', '')}/{aid}"
    worker = _events()
    host = socket.gethostname()
    who = _identity(payload.get("user"))
    if isinstance(who, str):
        return _failure("RunAsUnavailable", who)
    switch, user_env = who
    env = dict(os.environ)
    env.update(user_env)
    env.update(payload.get("env") or {})
    env.update(payload.get("tags") or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]  # stdin, stdout, stderr, frames
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
    with _lock:
        stopped = tag in _marks
    pid = -1
    try:
        if not stopped:
            pid = _server.spawn(env, payload.get("cwd") or None, switch, theirs)
    except OSError as exc:
        for fd in theirs + ours:
            os.close(fd)
        return _failure("StartFailed", f"cannot start the attempt on host {host}: {exc}")
    for fd in theirs:
        os.close(fd)
    if stopped:
        for fd in ours:
            os.close(fd)
        return result(False, None, stopped=True, not_started=True)
    run = _Run(aid, str(payload.get("daemon", "")), str(payload.get("run", "")), pid, ours[0], ours[1],
               ours[2])
    with _lock:
        _running[tag] = run
        late = tag in _marks  # a stop that came while it was being forked
    if late:
        run.stopped = True
        run.signal(signal.SIGKILL)
    worker.log_event(topic, {"t": "started", "aid": aid, "pid": pid, "worker": worker.address,
                             "host": host})
    try:
        out = _relay(run, payload, ours[3], worker, topic, host)
        if len(out) <= EVENT_RESULT:
            worker.log_event(topic, {"t": "done", "aid": aid, "b": out})
            return b""  # the daemon has it already (events and the task's end arrive in order)
        return out
    finally:
        with _lock:
            _running.pop(tag, None)
        if run.killer is not None:
            run.killer.cancel()
        run.signal(signal.SIGKILL)  # whatever the attempt left in its session goes with it
        run.close_stdin()
        for fd in (run.stdout, run.stderr):
            try:
                os.close(fd)
            except OSError:
                pass


def _relay(run: _Run, payload: dict[str, Any], r_frames: int, worker: Any, topic: str,
           host: str) -> bytes:
    aid = run.aid
    try:
        run.reply(payload)
    except Exception:
        pass
    pending: list[list[Any]] = []
    first = 0.0
    size = 0

    def flush() -> None:
        nonlocal first, size
        if pending:
            _send(worker, topic, "logs", aid, pending)
            pending.clear()
        first, size = 0.0, 0

    def add(stream: str, level: int, message: str, fields: dict[str, str] | None) -> None:
        nonlocal first, size
        if len(message) > MAX_LINE:
            message = message[: MAX_LINE - 20] + " [cut: too long]"
        if not pending:
            first = time.monotonic()
        pending.append([stream, level, message, fields])
        size += len(message) + 64
        if len(pending) >= BATCH_LINES or size >= BATCH_BYTES:
            flush()

    sel = selectors.DefaultSelector()
    partial: dict[int, bytes] = {}
    streams = {run.stdout: ("stdout", 20), run.stderr: ("stderr", 30)}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(r_frames, selectors.EVENT_READ)
    reader = frames.FrameReader(r_frames)
    done: list[Any] | None = None
    bad: str | None = None
    open_fds = len(streams) + 1
    code: int | None = None
    drain_until: float | None = None  # set once the harness has ended: what is left of the output
    try:
        while open_fds:
            now = time.monotonic()
            timeout = None if not pending else max(0.0, first + BATCH_DELAY - now)
            if drain_until is not None:
                if now >= drain_until:
                    break  # a process that left the session still holds the pipes: not waited for
                timeout = min(timeout if timeout is not None else DRAIN, drain_until - now)
            ready = sel.select(timeout)
            if not ready:
                flush()
                continue
            for key, _ in ready:
                fd = int(key.fd)
                if fd == r_frames:
                    try:
                        got = reader.read()
                    except frames.FrameError as exc:
                        bad = f"the attempt's process sent a bad frame ({exc})"
                        got = None
                        reader.eof = True
                    for msg in got or ():
                        kind = msg[0] if type(msg) is list and msg else None
                        if kind == "log" and len(msg) == 4 and type(msg[1]) is int \
                                and type(msg[2]) is str and _str_map(msg[3]):
                            add("log", msg[1], msg[2], msg[3])
                        elif kind == "req" and len(msg) == 4 and type(msg[1]) is int \
                                and type(msg[2]) is str and type(msg[3]) is dict:
                            flush()
                            _send(worker, topic, "req", aid, msg[1:])
                        elif kind == "progress" and len(msg) == 2 and type(msg[1]) is dict:
                            flush()
                            _send(worker, topic, "progress", aid, msg[1])
                        elif kind == "done" and len(msg) == 3 and type(msg[1]) is bool:
                            done = msg
                        elif kind == "child" and len(msg) == 2 and payload.get("kind") == "cmd":
                            # Sent by the harness's own code (a command cannot reach fd 3); one
                            # that does not check out is only not signalled by the runner (the
                            # harness passes signals on, and ends the command's session itself).
                            run.take_child(msg[1])
                        else:
                            bad = "the attempt's process sent a malformed frame"
                    if reader.eof:
                        sel.unregister(fd)
                        os.close(fd)
                        open_fds -= 1
                        if bad is not None:
                            run.signal(signal.SIGKILL)
                        # The harness has ended (fd 3 is its own, not its children's): how, and
                        # then whatever it left in its session goes, and its output is drained.
                        run.close_stdin()
                        code = _server.wait(run.pid, timeout=EXIT_WAIT)
                        run.ended = code is not None
                        run.signal(signal.SIGKILL)
                        drain_until = time.monotonic() + DRAIN
                    continue
                stream, level = streams[fd]
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    rest = partial.pop(fd, b"")
                    if rest:
                        add(stream, level, rest.decode("utf-8", "replace"), None)
                    sel.unregister(fd)
                    open_fds -= 1
                    continue
                data = partial.pop(fd, b"") + data
                *lines, tail = data.split(b"\n")
                for line in lines:
                    add(stream, level, line.decode("utf-8", "replace"), None)
                if len(tail) > MAX_LINE:
                    add(stream, level, tail.decode("utf-8", "replace"), None)
                elif tail:
                    partial[fd] = tail
    finally:
        sel.close()
        flush()
    if code is None:
        code = -signal.SIGKILL  # it never said how it ended: killed with its fork server
    if run.stopped:
        if payload.get("kind") != "cmd":  # (the error the stop raised in it: where it was, which signal)
            error = done[2] if done is not None and not done[1] and type(done[2]) is dict else None
            return result(False, error, stopped=True)
        if done is not None and done[1] and type(done[2]) is int:
            code = done[2]  # the command's own status (-15 after a SIGTERM), as locally
        return result(False, None, stopped=True, exit_code=code)
    if bad is not None:
        return _failure("ProtocolViolation", bad)
    if done is None:
        what = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return result(False, {"type": "WorkerDied", "message": f"the attempt's process on {host} {what} "
                              "before it reported a result", "traceback": ""}, exit_code=code)
    if payload.get("kind") == "cmd" and done[1]:
        return result(True, None, exit_code=done[2])
    return result(bool(done[1]), done[2])


def _send(worker: Any, topic: str, kind: str, aid: str, body: Any) -> None:
    """One event home: its body as msgpack bytes (Dask's own encoding of events would turn the
    task's lists into tuples)."""
    worker.log_event(topic, {"t": kind, "aid": aid, "b": frames.pack(body)[4:]})


def _str_map(value: Any) -> bool:
    # (the code site's four fields and a task's log context, at most MAX_FIELDS: checked in the daemon)
    return type(value) is dict and len(value) <= 4 + MAX_FIELDS and all(
        type(k) is str and type(v) is str for k, v in value.items())


def _mark(tag: str) -> None:
    _marks[tag] = None
    while len(_marks) > MAX_MARKS:
        _marks.popitem(last=False)


def stop(run: str, aids: list[str], grace: float, signum: int = signal.SIGTERM) -> int:
    """Stop these attempts of daemon process ``run`` on this worker (``signum``, SIGTERM by
    default, to each session, SIGKILL after ``grace``; a second stop sends its signal too); one
    not started yet never starts. Returns how many were running. Runs via ``Client.run``."""
    found = 0
    with _lock:
        runs = []
        for aid in aids:
            found_run = _running.get(f"{run}/{aid}")
            if found_run is None:
                _mark(f"{run}/{aid}")
            else:
                runs.append(found_run)
    for r in runs:
        found += 1
        r.stopped = True
        r.signal(signum)
        if signum == signal.SIGKILL:
            continue
        if r.killer is None:
            r.killer = threading.Timer(grace, r.signal, (signal.SIGKILL,))
            r.killer.daemon = True
            r.killer.start()
    return found


def stop_daemon(daemon: str, keep: str) -> int:
    """SIGKILL every attempt that a daemon of state ``daemon`` left running on this worker, but
    those of the running daemon (``keep``, its process's tag), which may already have sent some
    (recovery)."""
    with _lock:
        runs = [run for run in _running.values() if run.daemon == daemon and run.run != keep]
    for run in runs:
        run.stopped = True
        run.signal(signal.SIGKILL)
    return len(runs)


def deliver(run: str, aid: str, rid: int, ok: bool, value: Any) -> bool:
    """The daemon's answer to a namespace request of attempt ``aid`` of daemon process ``run``;
    False if it has ended."""
    with _lock:
        found = _running.get(f"{run}/{aid}")
    if found is None:
        return False
    found.reply(["reply", rid, ok, value])
    return True

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

import collections
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

from procpoold.remote import frames

#: Lines of output and log records sent home in one event at most, and how long one waits.
BATCH_LINES = 500
BATCH_DELAY = 0.05
#: Longest line passed on (longer ones are cut, as in the pool).
MAX_LINE = 16 * 1024
#: Attempts remembered as stopped before they started (per worker process).
MAX_MARKS = 10_000


class _Run:
    """One attempt running on this worker."""

    def __init__(self, aid: str, daemon: str, proc: subprocess.Popen[bytes]) -> None:
        self.aid = aid
        self.daemon = daemon
        self.proc = proc
        self.lock = threading.Lock()
        self.stopped = False
        self.killer: threading.Timer | None = None

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def reply(self, frame: Any) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            return
        with self.lock:
            try:
                frames.write_frame(stdin.fileno(), frame)
            except (OSError, ValueError):
                pass  # the attempt has ended: nobody waits for the answer


_lock = threading.Lock()
_running: dict[str, _Run] = {}
_marks: collections.OrderedDict[str, None] = collections.OrderedDict()


def result(ok: bool, value: Any, **extra: Any) -> bytes:
    """The Dask task's result: msgpack bytes of ``{"ok", "value", ...}``."""
    return frames.pack({"ok": ok, "value": value, **extra})[4:]


def _failure(kind: str, message: str) -> bytes:
    return result(False, {"type": kind, "message": message, "traceback": ""})


def _identity(user: str | None) -> tuple[dict[str, Any], dict[str, str]] | str:
    """Popen keywords and env for running as ``user``, or why this worker cannot."""
    if user is None:
        return {}, {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"the user {user!r} does not exist on host {socket.gethostname()}"
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if os.geteuid() == 0:
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}, env
    if os.geteuid() == pw.pw_uid:
        return {}, env
    return (f"this Dask worker runs as uid {os.geteuid()}, not as root nor as {user!r}, "
            f"so it cannot run {user!r}'s task")


def _events() -> Any:
    from distributed import get_worker

    return get_worker()


def run_attempt(payload_bytes: bytes, topic: str) -> bytes:
    """Run one attempt (the Dask task); returns :func:`result` bytes."""
    payload = frames.unpack(payload_bytes)
    aid: str = payload["attempt_id"]
    worker = _events()
    host = socket.gethostname()
    who = _identity(payload.get("user"))
    if isinstance(who, str):
        return _failure("RunAsUnavailable", who)
    popen_kw, user_env = who
    r_frames, w_frames = os.pipe()
    env = dict(os.environ)
    env.update(user_env)
    env.update(payload.get("env") or {})
    env.update(payload.get("tags") or {})
    env["PROCPOOL_FRAMES_FD"] = str(w_frames)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with _lock:
        if aid in _marks:
            os.close(r_frames)
            os.close(w_frames)
            return result(False, None, stopped=True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "procpoold.remote.harness"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(w_frames,), cwd=payload.get("cwd") or None, env=env,
                start_new_session=True, **popen_kw,
            )
        except OSError as exc:
            os.close(r_frames)
            os.close(w_frames)
            where = f" (cwd {payload.get('cwd')!r})" if payload.get("cwd") else ""
            return _failure("StartFailed", f"cannot start the attempt on host {host}{where}: {exc}")
        run = _running[aid] = _Run(aid, str(payload.get("daemon", "")), proc)
    os.close(w_frames)
    worker.log_event(topic, {"t": "started", "aid": aid, "pid": proc.pid, "worker": worker.address,
                             "host": host})
    try:
        return _relay(run, payload, r_frames, worker, topic, host)
    finally:
        with _lock:
            _running.pop(aid, None)
        if run.killer is not None:
            run.killer.cancel()
        run.signal(signal.SIGKILL)  # whatever the attempt left in its session goes with it
        proc.wait()


def _relay(run: _Run, payload: dict[str, Any], r_frames: int, worker: Any, topic: str,
           host: str) -> bytes:
    proc = run.proc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    aid = run.aid
    try:
        run.reply(payload)
    except Exception:
        pass
    pending: list[list[Any]] = []
    first = 0.0

    def flush() -> None:
        nonlocal first
        if pending:
            _send(worker, topic, "logs", aid, pending)
            pending.clear()
        first = 0.0

    def add(stream: str, level: int, message: str, fields: dict[str, str] | None) -> None:
        nonlocal first
        if len(message) > MAX_LINE:
            message = message[: MAX_LINE - 20] + " [cut: too long]"
        if not pending:
            first = time.monotonic()
        pending.append([stream, level, message, fields])
        if len(pending) >= BATCH_LINES:
            flush()

    sel = selectors.DefaultSelector()
    partial: dict[int, bytes] = {}
    streams = {proc.stdout.fileno(): ("stdout", 20), proc.stderr.fileno(): ("stderr", 30)}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(r_frames, selectors.EVENT_READ)
    reader = frames.FrameReader(r_frames)
    done: list[Any] | None = None
    bad: str | None = None
    open_fds = len(streams) + 1
    try:
        while open_fds:
            timeout = None if not pending else max(0.0, first + BATCH_DELAY - time.monotonic())
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
                        else:
                            bad = "the attempt's process sent a malformed frame"
                    if reader.eof:
                        sel.unregister(fd)
                        os.close(fd)
                        open_fds -= 1
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
    code = proc.wait()
    if run.stopped:
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
    return type(value) is dict and len(value) <= 32 and all(
        type(k) is str and type(v) is str for k, v in value.items())


def _mark(aid: str) -> None:
    _marks[aid] = None
    while len(_marks) > MAX_MARKS:
        _marks.popitem(last=False)


def stop(aids: list[str], grace: float) -> int:
    """Stop these attempts on this worker (SIGTERM to each session, SIGKILL after ``grace``);
    one not started yet never starts. Returns how many were running. Runs via ``Client.run``."""
    found = 0
    with _lock:
        runs = []
        for aid in aids:
            run = _running.get(aid)
            if run is None:
                _mark(aid)
            else:
                runs.append(run)
    for run in runs:
        found += 1
        run.stopped = True
        run.signal(signal.SIGTERM)
        if run.killer is None:
            run.killer = threading.Timer(grace, run.signal, (signal.SIGKILL,))
            run.killer.daemon = True
            run.killer.start()
    return found


def stop_daemon(daemon: str) -> int:
    """SIGKILL every attempt a daemon of state ``daemon`` left running on this worker (recovery)."""
    with _lock:
        runs = [run for run in _running.values() if run.daemon == daemon]
    for run in runs:
        run.stopped = True
        run.signal(signal.SIGKILL)
    return len(runs)


def deliver(aid: str, rid: int, ok: bool, value: Any) -> bool:
    """The daemon's answer to a namespace request of attempt ``aid``; False if it has ended."""
    with _lock:
        run = _running.get(aid)
    if run is None:
        return False
    run.reply(["reply", rid, ok, value])
    return True


def running() -> list[str]:
    """The attempts running on this worker (for tests and for ``procctl pool``)."""
    with _lock:
        return list(_running)

"""``python -m procpoold.remote.harness``: one attempt, in a process of its own, on a remote worker.

Started by :mod:`procpoold.remote.runner` as the leader of a new session, with the attempt's
env, cwd and user already applied. It reads the attempt (a frame, see
:mod:`procpoold.remote.frames`) from stdin, runs it and writes frames to fd 3:

- a ``call`` task: the function (sync or async) is imported and called with
  :mod:`procpool.task` installed; its log records become ``log`` frames, its namespace
  operations ``req`` frames answered on stdin, and its return value (msgpack-able, like in the
  pool) the ``done`` frame. stdout and stderr are the runner's pipes: each line is a log line.
- a ``cmd`` task: the command runs as a child in this session with stdout and stderr passed on;
  the ``done`` frame carries its exit code.

If stdin reaches its end before the attempt ended, the runner (or the Dask worker that ran it)
is gone: the harness kills its whole session, so nothing of an attempt outlives its worker.
SIGTERM (a timeout, a cancel) interrupts a sync function (``TaskInterrupted``), cancels an async
one (``CancelledError``, as in the pool) and is passed on to a command by the kernel (the
runner signals the session's process group). The other signals a cancel may choose
(``procctl cancel --signal``) do the same, but SIGINT, which raises ``KeyboardInterrupt`` in a sync
function, as Python does; a command gets each of them as it is.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from procpool import task as task_api
from procpool.contract.logfields import task_fields
from procpoold.callables import resolve, use_python_path
from procpoold.remote import frames

# asyncio, inspect, subprocess and traceback are imported where they are needed: a fresh process
# runs each attempt, and they would double its start-up time (docs/engines.md, Dask).

#: ``co_flags`` bit of a coroutine function (inspect.CO_COROUTINE)
CO_COROUTINE = 0x80

#: The fd frames go to (the runner names it in PROCPOOL_FRAMES_FD; not inherited by the task's children).
OUT_FD = 3


class TaskInterrupted(BaseException):
    """Raised in a sync task's code when the attempt is stopped (a timeout or a cancel)."""


#: The signals a stop may send that the harness handles (procpool.contract.signals.STOP_SIGNALS
#: but SIGKILL, which nothing catches): left at their default, most would end the harness
#: without its "done" frame.
_STOPS = tuple(getattr(signal, name) for name in (
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGABRT"))


def _on_stop_signals(handler: Any) -> None:
    for signum in _STOPS:
        signal.signal(signum, handler)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_map(exc: BaseException) -> dict[str, str]:
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": _type_name(exc), "message": str(exc), "traceback": text}


class _Link:
    """The harness's side of the frames: one writer lock, replies by request id, EOF watch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replies: dict[int, list[Any]] = {}
        self.cond = threading.Condition()
        self.rid = 0
        self.done = False
        #: a command's process (the leader of its own session), 0 before it starts
        self.child = 0
        #: a stop signal that came before the command existed (0: none)
        self.term = 0

    def send(self, value: Any) -> None:
        with self.lock:
            frames.write_frame(OUT_FD, value)

    def watch(self) -> None:
        """Thread: read replies from stdin; at its end (the runner is gone) end the session."""
        while True:
            try:
                msg = frames.read_frame(0)
            except (EOFError, OSError, frames.FrameError):
                break
            if type(msg) is list and len(msg) == 4 and msg[0] == "reply":
                with self.cond:
                    self.replies[msg[1]] = msg
                    self.cond.notify_all()
        if not self.done:
            if self.child:
                _killpg(self.child, signal.SIGKILL)
            os.killpg(os.getpgrp(), signal.SIGKILL)
        with self.cond:
            self.cond.notify_all()

    def request(self, op: str, args: dict[str, Any]) -> Any:
        with self.cond:
            self.rid += 1
            rid = self.rid
        self.send(["req", rid, op, args])
        with self.cond:
            while rid not in self.replies:
                self.cond.wait()
            reply = self.replies.pop(rid)
        if reply[2]:
            return reply[3]
        from procpool.contract.errors import ProcpoolError

        raise ProcpoolError.from_wire(reply[3])


class _Channel:
    """``procpool.task``'s channel: namespace operations and progress go to the runner."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def request(self, op: str, args: dict[str, Any]) -> Any:
        return self.link.request(op, args)

    def send(self, op: str, args: dict[str, Any]) -> None:
        if op != "progress":
            raise ValueError(f"unknown task message {op!r}")
        self.link.send(["progress", args])


#: The attributes every ``logging.LogRecord`` has: the others of a record are its ``extra``.
_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _LogHandler(logging.Handler):
    """Every record of the task's process becomes a ``log`` frame (fields as the pool sends them:
    the code site's, and the record's ``extra={...}`` as log context fields)."""

    def __init__(self, link: _Link) -> None:
        super().__init__(logging.NOTSET)
        self.link = link
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"CODE_FILE": str(record.pathname), "CODE_LINE": str(record.lineno),
                      "CODE_FUNC": str(record.funcName), "LOGGER": str(record.name)}
            message = self.format(record)
            attrs = record.__dict__
            if not attrs.keys() <= _RECORD_KEYS:
                fields.update(task_fields((k, v) for k, v in attrs.items() if k not in _RECORD_KEYS))
            self.link.send(["log", int(record.levelno), message, fields])
        except Exception:
            self.handleError(record)


def _resolve(call: str, python_path: list[str]) -> Any:
    # The harness stands in the attempt's cwd already: relative entries are its.
    use_python_path(python_path)
    return resolve(call)


def _run_call(link: _Link, payload: dict[str, Any]) -> list[Any]:
    root = logging.getLogger()
    root.handlers[:] = [_LogHandler(link)]
    level = payload.get("log_level")
    root.setLevel(level if type(level) is int else logging.DEBUG)  # (the daemon's choice)
    context = payload["context"]
    task_api._install(_Channel(link), context,
                      logging.getLogger(f"procpool.task.{context['task_name']}"))
    args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
    running: dict[str, Any] = {}

    def on_term(signum: int, frame: Any) -> None:
        task = running.get("task")
        if task is not None:
            running["loop"].call_soon_threadsafe(task.cancel, f"stopped by {signal.Signals(signum).name}")
            return
        if not running.get("ended"):  # the function runs, or is still being imported or set up
            name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(f"stopped by {name}")
            raise TaskInterrupted(f"stopped by {name}")

    _on_stop_signals(on_term)
    try:
        fn = _resolve(payload["call"], payload.get("python_path") or [])
        if _is_async(fn):
            import asyncio

            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            task = loop.create_task(fn(*args, **kwargs))
            running.update(task=task, loop=loop)
            result = loop.run_until_complete(task)
        else:
            result = fn(*args, **kwargs)
        running["ended"] = True
    except BaseException as exc:  # task code may raise anything, SystemExit included
        running.clear()
        running["ended"] = True
        return ["done", False, error_map(exc)]
    finally:
        task_api._clear()
    running.clear()
    running["ended"] = True
    try:
        frames.pack(result)
    except Exception as exc:
        return ["done", False, {"type": "ResultNotSerializable",
                                "message": f"the task's result cannot be sent as msgpack: {exc}",
                                "traceback": ""}]
    return ["done", True, result]


def _is_async(fn: Any) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None and type(fn).__name__ == "function":
        return bool(code.co_flags & CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(fn)


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _run_cmd(link: _Link, payload: dict[str, Any]) -> list[Any]:
    """Run the command as the leader of a session of its own (as the local commands engine does),
    pass a stop's signal on to its group, and end what it leaves in that session when it exits."""
    import subprocess

    cmd = payload["cmd"]
    shell = bool(payload.get("shell"))
    argv0 = "/bin/sh" if shell else (cmd[0] if cmd else "")
    def on_term(signum: int, frame: Any) -> None:
        if link.child:
            _killpg(link.child, signum)
        else:
            link.term = signum  # before the command exists: it gets it as soon as it does

    _on_stop_signals(on_term)
    try:
        proc = subprocess.Popen(cmd, shell=shell, stdin=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)
    except (OSError, ValueError) as exc:
        from procpool.contract.limits import shorten

        why = getattr(exc, "strerror", None) or exc
        return ["done", False, {"type": type(exc).__name__, "traceback": "",
                                "message": f"cannot start {shorten(argv0)}: {why}"}]
    link.child = proc.pid
    if link.term:
        _killpg(proc.pid, link.term)
    link.send(["child", proc.pid])  # the runner signals its group too (a stop, the final cleanup)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    _killpg(proc.pid, signal.SIGKILL)  # whatever it left in its session goes with it
    return ["done", True, code]


def main() -> int:
    global OUT_FD
    OUT_FD = int(os.environ.pop("PROCPOOL_FRAMES_FD", "3"))
    os.set_inheritable(OUT_FD, False)
    link = _Link()
    try:
        payload = frames.read_frame(0)
    except (EOFError, frames.FrameError) as exc:
        print(f"procpoold.remote.harness: no attempt to run ({exc})", file=sys.stderr)
        return 2
    threading.Thread(target=link.watch, name="procpool-link", daemon=True).start()
    out = _run_call(link, payload) if payload["kind"] == "call" else _run_cmd(link, payload)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    link.done = True
    try:
        link.send(out)
    except Exception as exc:  # a result the frame cannot carry (too large)
        link.send(["done", False, {"type": "ResultNotSerializable", "message": str(exc)[:500],
                                   "traceback": ""}])
    return 0


if __name__ == "__main__":
    sys.exit(main())

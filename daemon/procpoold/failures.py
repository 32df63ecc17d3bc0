"""How an attempt that did not complete is described: its error checked and bounded, its
traceback cut down to the task's own frames, and a timeout or a cancel said in words.

The error of a failed call comes from the task's own process (a pool worker, or the harness on a
Dask worker): untrusted text. :func:`checked` makes it a map of three bounded strings before the
daemon keeps it, logs it or sends it to a client, and drops the frames of procpool's own code
(the worker's loop, the harness, the ``procpool.task`` API) from its traceback, so that what
remains reads like a test runner's report: the user's frames and the exception.

Runs on the loop thread, only for an attempt that failed, timed out or was cancelled: a
completed attempt costs nothing here.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from typing import Any

import procpool
import procpoold
from procpool.contract.limits import shorten
from procpoold.identity import user_name

#: The longest exception type name and message kept (characters).
TYPE_CHARS = 200
MESSAGE_CHARS = 2000
#: A traceback keeps at most this many frames (the innermost ones) and characters (the last ones).
TRACEBACK_FRAMES = 30
TRACEBACK_CHARS = 8000
#: Longest line of a traceback kept (a source line or an exception message).
LINE_CHARS = 500

_FRAME = re.compile(r'^  File "(.*)", line \d+, in ')
_OWN_DIRS = (
    ("/procpoold/", os.path.dirname(os.path.abspath(procpoold.__file__))),
    ("/procpool/", os.path.dirname(os.path.abspath(procpool.__file__))),
)
#: Type names the stop of an attempt raises in its code (the pool worker's, the harness's, asyncio's).
_STOP_TYPES = ("procpoold.pool.worker.TaskInterrupted", "procpoold.remote.harness.TaskInterrupted",
               "asyncio.exceptions.CancelledError", "CancelledError")


def _text(value: Any, limit: int) -> str:
    text = value if type(value) is str else ("" if value is None else str(value))
    text = text.replace("\0", "\ufffd")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


@functools.lru_cache(maxsize=256)
def own_file(path: str) -> bool:
    """Whether ``path`` is a file of procpool's own packages: by its path below the package's
    folder, which must name a file of this daemon's copy (the path may be another machine's: a
    Dask worker's). A user's folder that happens to be called ``procpool`` is not mistaken."""
    for marker, folder in _OWN_DIRS:
        at = path.rfind(marker)
        if at >= 0 and os.path.isfile(os.path.join(folder, path[at + len(marker):])):
            return True
    return False


def user_traceback(text: str) -> str:
    """``text`` (a formatted Python traceback) without procpool's own frames, at most
    :data:`TRACEBACK_FRAMES` frames (the innermost) and :data:`TRACEBACK_CHARS` characters."""
    if not text:
        return ""
    out: list[str] = []
    frames: list[int] = []  # where each kept frame starts in ``out``
    skipping = dropped = False
    for line in text.splitlines():
        if len(line) > LINE_CHARS:
            line = line[: LINE_CHARS - 1] + "…"
        match = _FRAME.match(line)
        if match is not None:
            skipping = own_file(match.group(1))
            dropped = dropped or skipping
            if not skipping:
                frames.append(len(out))
                out.append(line)
            continue
        if skipping and line.startswith("    "):
            continue  # the source line (and the carets) of a frame left out
        skipping = False
        out.append(line)
    if dropped and not frames:
        return ""  # only procpool's own frames: the error's type and message say it all
    if len(frames) > TRACEBACK_FRAMES:
        cut_from, cut_to = frames[0], frames[-TRACEBACK_FRAMES]
        out[cut_from:cut_to] = [f"  ... {len(frames) - TRACEBACK_FRAMES} more frame(s) not shown"]
    result = "\n".join(out) + "\n"
    if len(result) > TRACEBACK_CHARS:
        result = f"... ({len(result) - TRACEBACK_CHARS} characters not shown)\n" + result[-TRACEBACK_CHARS:]
    return result


def checked(error: Any) -> dict[str, str] | None:
    """An error map from an executor, made safe to keep: a map of exactly ``type``, ``message``
    and ``traceback``, each a bounded string, the traceback cut to the task's own frames."""
    if error is None:
        return None
    if not isinstance(error, dict):
        return {"type": "Error", "message": _text(error, MESSAGE_CHARS), "traceback": ""}
    return {
        "type": _text(error.get("type"), TYPE_CHARS) or "Error",
        "message": _text(error.get("message"), MESSAGE_CHARS),
        "traceback": user_traceback(_text(error.get("traceback"), 4 * 1024 * 1024)),
    }


def stopped(error: dict[str, str] | None, kind: str, message: str) -> dict[str, str]:
    """The error of an attempt that was stopped: ``kind`` (``Timeout``, ``Cancelled``) and
    ``message`` in words; the frames the task was in when it was stopped are kept (where it
    hung), the exception the stop raised in them is not. What else an engine said of the stop
    follows the words (``timed out after 1 s; task 'spin' did not stop within 5 s...``)."""
    frames = ""
    if error and error.get("type") not in _STOP_TYPES and error.get("message"):
        message = f"{message}; {error['message']}"
    elif error and error.get("traceback") and error.get("type") in _STOP_TYPES:
        lines = error["traceback"].splitlines()
        while lines and not lines[-1].startswith(" "):
            lines.pop()  # the exception the stop raised (procpool's words, not the task's)
        if len(lines) > 1:
            frames = "\n".join(lines) + f"\n{kind}: {message}\n"
    return {"type": kind, "message": message, "traceback": frames}


def seconds(value: float) -> str:
    """``0.5 s``, ``30 s``, ``1.25 s``."""
    return f"{value:g} s"


def cancelled_by(uid: int | None) -> str:
    """``cancelled by alice (uid 1000)``; ``cancelled by uid 1000`` for a uid without a name;
    ``cancelled by request`` when who asked is not known."""
    if uid is None:
        return "cancelled by request"
    name = user_name(uid)
    return f"cancelled by {name} (uid {uid})" if name and name != str(uid) else f"cancelled by uid {uid}"


def cwd_problem(cwd: str, exc: OSError) -> str:
    """``the working directory '/srv/x' does not exist`` (or is not a directory, or is not
    accessible): why an attempt could not start in ``cwd``."""
    what = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a directory"}.get(
        exc.errno or 0, f"is not accessible ({exc.strerror or exc})"
    )
    return f"the working directory {shorten(cwd)} {what}"


def log_text(error: dict[str, str] | None) -> str:
    """The text of a failed task's final log record: its error's message and, for a call, its
    traceback (bounded by :func:`checked`)."""
    if not error:
        return ""
    message = error.get("message", "")
    tb = error.get("traceback")
    return f"{message}\n{tb.rstrip()}" if tb else message

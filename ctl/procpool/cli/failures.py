"""How procctl shows what went wrong, as a good test runner does: the failed call's traceback
(the task's own frames: the daemon leaves procpool's out), a command's exit status or the
signal that killed it, its last lines of output, and a timeout or a cancel in words.

Pure functions of reply data (no I/O). A task is a status map (``procctl --json status``'s
``tasks``) or a :class:`~procpool.contract.status.TaskRow` of the columnar view: either works.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from procpool.contract.signals import signal_label
from procpool.contract.states import FAILED, SHOWS_TAIL

#: The task states whose failure is shown in detail (a cancel or a skip is one line).
DETAILED = SHOWS_TAIL
#: Lines of a traceback shown (the last ones: the innermost frames and the exception).
TRACEBACK_LINES = 40
#: Last lines of a command's output shown.
TAIL_LINES = 10
#: Tasks shown in detail under one job (the others are counted).
TASKS_DETAILED = 5


def _get(t: Any, key: str) -> Any:
    return t.get(key) if isinstance(t, dict) else getattr(t, key, None)


def exit_text(code: int | None) -> str:
    """A command's end: ``exit 3``, ``killed by SIGKILL`` (a negative code is the signal that
    ended it, as the daemon records it), ``""`` for none or 0."""
    if not code:
        return ""
    return f"killed by {signal_label(-code)}" if code < 0 else f"exit {code}"


def headline(t: Any) -> str:
    """What went wrong, in one line: ``ValueError: disk full``, ``command killed by SIGKILL``,
    ``timed out after 0.5 s``, ``cancelled by alice (uid 1000)``, or the reason of a skip; with
    the exit status of a failed task whose error does not say it. ``""`` when nothing did."""
    error = _get(t, "error")
    parts: list[str] = []
    said_exit = False
    if error:
        kind, message = str(error.get("type") or "Error"), str(error.get("message") or "")
        if kind in ("CommandFailed", "Timeout", "Cancelled"):
            parts.append(message or kind)  # (its words say it all: "command exited with status 3")
            said_exit = kind == "CommandFailed"
        else:
            parts.append(f"{kind}: {message}" if message else kind)
    elif _get(t, "reason"):
        parts.append(str(_get(t, "reason")))
    code = exit_text(_get(t, "exit_code"))
    if code and not said_exit and _get(t, "state") == FAILED:
        parts.insert(0, code)
    return "  ".join(parts)


def details(t: Any, indent: str = "  ") -> list[str]:
    """The report of a failed or timed-out task, under its name: the traceback (at most
    :data:`TRACEBACK_LINES` lines, the last ones) and the last :data:`TAIL_LINES` lines of its
    output. Nothing for a task in another state."""
    state = _get(t, "state")
    if state not in DETAILED:
        return []
    name = _get(t, "name") or f"#{_get(t, 'index')}"
    attempts = _get(t, "attempts") or 0
    tried = f" after {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""
    lines = [f"── {name} {state}{tried}: {headline(t) or 'no reason given'}"]
    error = _get(t, "error") or {}
    tb = str(error.get("traceback") or "").rstrip("\n").splitlines()
    if tb:
        if len(tb) > TRACEBACK_LINES:
            cut = f"... {len(tb) - TRACEBACK_LINES} line(s) of the traceback not shown"
            tb = [cut, *tb[-TRACEBACK_LINES:]]
        lines.extend(indent + line for line in tb)
    tail = list(_get(t, "tail") or ())[-TAIL_LINES:]
    if tail:
        lines.append(f"{indent}last {len(tail)} line{'s' if len(tail) != 1 else ''} of output:")
        lines.extend(f"{indent}| {line}" for line in tail)
    return lines


def report(tasks: Iterable[Any], limit: int = TASKS_DETAILED, more_hint: str | None = "") -> list[str]:
    """:func:`details` of the first ``limit`` failed or timed-out ``tasks``, then how many more
    there are (``more_hint`` says how to see them; None: not said, the caller counts them)."""
    lines: list[str] = []
    shown = more = 0
    for t in tasks:
        if _get(t, "state") not in DETAILED:
            continue
        if shown < limit:
            lines.extend(details(t))
            shown += 1
        else:
            more += 1
    if more and more_hint is not None:
        lines.append(f"… and {more} more failed task{'s' if more != 1 else ''}{more_hint}")
    return lines


def log_message(message: str) -> str:
    """A log record's message for ``procctl logs``: the lines after its first (a traceback)
    indented under it."""
    return message.replace("\n", "\n    ") if "\n" in message else message

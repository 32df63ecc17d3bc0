"""The signals a cancel may send to a task's process (``procctl cancel --signal NAME``).

Leaf module (imports only the standard library). The wire carries a signal by its name
(``"SIGINT"``): numbers differ between platforms, names do not. :func:`signal_name` turns what a
user typed (``int``, ``INT``, ``SIGINT``) into that name, or None; :func:`signal_label` names a
signal by its number (what ended a process) for the daemon's and procctl's words alike.
"""

from __future__ import annotations

import signal

#: The signals a stop may send first, then SIGKILL after the grace: those that end a process by
#: default (SIGSTOP and SIGCONT would not end anything, and the others are the kernel's to send).
STOP_SIGNALS: tuple[str, ...] = (
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGABRT", "SIGKILL",
)
#: What a stop sends when nobody chose: SIGTERM, then SIGKILL after the grace.
DEFAULT_SIGNAL = "SIGTERM"
#: The signal that ends a process at once (``procctl cancel --kill``).
KILL_SIGNAL = "SIGKILL"


def signal_name(text: str) -> str | None:
    """``"SIGINT"`` for ``int``, ``INT`` or ``SIGINT`` (any case); None for anything else."""
    name = text.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return name if name in STOP_SIGNALS else None


def signal_label(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 40`` for a number Python has no name for (the real-time ones)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def signal_problem(value: str) -> str | None:
    """Why ``value`` is not a stop signal as the wire spells it (None: it is one)."""
    if value in STOP_SIGNALS:
        return None
    return f"must be one of {', '.join(STOP_SIGNALS)}"

"""Where procctl's rendered text goes: plain text, or on a terminal coloured with rich.

The renderers (:mod:`procpool.cli.render`) make plain text; :func:`echo` prints it as it is
unless the stream is a terminal, ``NO_COLOR`` is unset and ``TERM`` is not ``dumb``: then each
state word and mark is coloured (completed green, failed red, running cyan, ...). rich is
imported here only, and only when something is coloured or a progress line is redrawn on a
terminal, so a command that prints nothing (``ping``) never loads it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import IO, TYPE_CHECKING, Any

import click

from procpool.contract.states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    HELD,
    PENDING,
    QUEUED,
    READY,
    RUNNING,
    SCHEDULED,
    SKIPPED,
    TIMEOUT,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

#: The style of each job and task state, and of the marks of task lines.
STATE_STYLES: dict[str, str] = {
    COMPLETED: "green",
    FAILED: "bold red",
    TIMEOUT: "red",
    CANCELLED: "yellow",
    SKIPPED: "dim",
    RUNNING: "cyan",
    QUEUED: "blue",
    PENDING: "dim",
    READY: "blue",
    HELD: "magenta",
    SCHEDULED: "blue",
}
MARK_STYLES: dict[str, str] = {
    "✔": "green", "✘": "bold red", "⏱": "red", "⊘": "yellow", "↷": "dim", "▶": "cyan", "○": "blue",
}
#: A state as a word of its own (not inside a name such as ``failed-jobs``).
_STATE_WORD = re.compile(r"(?<![\w./-])(" + "|".join(STATE_STYLES) + r")(?![\w/-])")


def colour_wanted(stream: IO[Any] | None = None) -> bool:
    """Whether text for ``stream`` (stdout by default) is coloured: a terminal, no ``NO_COLOR``
    (any non-empty value turns colour off, as no-color.org says), and ``TERM`` is not ``dumb``."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def width() -> int:
    """The terminal's width in columns (``COLUMNS`` first; 80 when it cannot tell)."""
    return shutil.get_terminal_size((80, 24)).columns


def styled(text: str) -> Text:
    """``text`` as a rich Text with its states and marks coloured."""
    from rich.text import Text

    out = Text(text)
    for match in _STATE_WORD.finditer(text):
        out.stylize(STATE_STYLES[match.group(1)], match.start(1), match.end(1))
    for index, char in enumerate(text):
        style = MARK_STYLES.get(char)
        if style is not None:
            out.stylize(style, index, index + 1)
    return out


def _console(err: bool, colour: bool) -> Console:
    from rich.console import Console

    return Console(
        stderr=err, force_terminal=True, no_color=not colour, highlight=False, markup=False,
        emoji=False, soft_wrap=True,
    )


def echo(text: str, err: bool = False) -> None:
    """Print rendered text: coloured on a terminal that wants colour, else exactly as it is."""
    stream = sys.stderr if err else sys.stdout
    if not colour_wanted(stream):
        click.echo(text, err=err)
        return
    _console(err, True).print(styled(text))


class ProgressLine:
    """A line of live progress on stderr: on a terminal one line redrawn in place (rich's Live,
    each line cut to the terminal's width by its maker); elsewhere each new line once."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = ""
        self._live: Live | None = None

    def width(self) -> int:
        return width() - 1 if self.tty else 160

    def show(self, line: str) -> None:
        if not self.tty:
            if line != self._last:
                click.echo(line, err=True)
            self._last = line
            return
        if self._live is None:
            from rich.live import Live

            console = _console(True, colour_wanted(sys.stderr))
            self._live = Live(console=console, auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        text = styled(line)
        text.no_wrap, text.overflow = True, "ellipsis"
        self._live.update(text, refresh=True)

    def close(self) -> None:
        """Leave the last line as it is and end it (the next output starts on a line of its own)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

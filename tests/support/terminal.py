"""A real pseudo-terminal for testing full-screen and live views: a program runs in a pty (pexpect)
and what it writes is read through a VT100 emulator (pyte), so a test asserts on the screen a
person would see. Every wait is for expected content, with a timeout, and fails showing the screen.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import pexpect
import pyte

#: Only reached when something is broken: never a tuning knob.
DEADLINE = 30.0
#: Any CSI escape sequence; SGR (colour and style) ones end in "m".
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SGR = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """``argv`` running in a pty of ``columns`` x ``lines``, read through a terminal emulator."""

    def __init__(self, argv: list[str], columns: int = 100, lines: int = 30,
                 env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        base["TERM"] = "xterm-256color"
        self.columns, self.lines = columns, lines
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.Stream(self.screen)
        #: everything the program wrote, as written
        self.raw = ""
        self.child = pexpect.spawn(argv[0], argv[1:], dimensions=(lines, columns),
                                   env={**base, **(env or {})}, encoding="utf-8", codec_errors="replace")

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at the end of the output."""
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.raw += data
        self.stream.feed(data)
        return True

    def wait_for(self, accept: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        """The screen's text once ``accept`` holds for it; AssertionError showing the screen."""
        end = time.monotonic() + timeout
        while True:
            text = self.text()
            if accept(text):
                return text
            left = end - time.monotonic()
            if left <= 0 or (not self._read(min(left, 1.0)) and not accept(self.text())):
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.text()}")

    def wait_raw(self, accept: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        """All the output once ``accept`` holds for it."""
        end = time.monotonic() + timeout
        while not accept(self.raw):
            left = end - time.monotonic()
            if left <= 0 or (not self._read(min(left, 1.0)) and not accept(self.raw)):
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.text()}")
        return self.raw

    def resize(self, columns: int, lines: int) -> None:
        """Resize the pty (the program gets SIGWINCH) and the emulator's screen."""
        self.columns, self.lines = columns, lines
        self.screen.resize(lines, columns)
        self.child.setwinsize(lines, columns)

    def send(self, text: str) -> None:
        self.child.send(text)

    def finish(self, timeout: float = DEADLINE) -> int:
        """Read to the end of the output; the program's exit status."""
        end = time.monotonic() + timeout
        while self._read(max(0.01, min(end - time.monotonic(), 1.0))):
            if time.monotonic() > end:
                raise AssertionError(f"the program did not end within {timeout}s; the screen:\n{self.text()}")
        self.child.close()
        status: int | None = self.child.exitstatus
        if status is None:
            signum = self.child.signalstatus
            raise AssertionError(f"the program was killed by signal {signum}:\n{self.text()}")
        return status

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def procctl(socket: Any, *args: str) -> list[str]:
    """The command line of the real procctl on ``socket``."""
    return [sys.executable, "-m", "procpool.cli", "--socket", str(socket), *args]


def frames(raw: str) -> list[list[str]]:
    """The lines of each full-screen frame in ``raw`` (a frame starts at a cursor-home), without
    escape sequences."""
    out = []
    for chunk in raw.split("\x1b[H")[1:]:
        chunk = chunk.split("\x1b[?1049l")[0]
        out.append([CSI.sub("", line) for line in chunk.replace("\r\n", "\n").split("\n")])
    return out

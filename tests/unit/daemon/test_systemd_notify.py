"""procpoold.systemd: the exact sd_notify datagrams, received on a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procpoold import systemd


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    folder = Path(tempfile.mkdtemp(prefix="pp-notify-"))  # short: Unix socket paths are limited
    path = folder / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        folder.rmdir()


def received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    sock.settimeout(0.05)
    try:
        extra = sock.recv(65536)
    except TimeoutError:
        return data
    raise AssertionError(f"expected one datagram, got a second one: {extra!r}")


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda: systemd.ready(), b"READY=1"),
        (lambda: systemd.ready("serving, 4 workers"), b"READY=1\nSTATUS=serving, 4 workers"),
        (lambda: systemd.status("draining 3 attempts"), b"STATUS=draining 3 attempts"),
        (lambda: systemd.stopping(), b"STOPPING=1"),
        (lambda: systemd.stopping("stopping: SIGTERM"), b"STOPPING=1\nSTATUS=stopping: SIGTERM"),
        (lambda: systemd.reloaded(), b"READY=1"),
        (lambda: systemd.reloaded("reloaded"), b"READY=1\nSTATUS=reloaded"),
        (lambda: systemd.extend_timeout(30), b"EXTEND_TIMEOUT_USEC=30000000"),
        (lambda: systemd.extend_timeout(1.5), b"EXTEND_TIMEOUT_USEC=1500000"),
        (lambda: systemd.extend_timeout(-1), b"EXTEND_TIMEOUT_USEC=0"),
        (lambda: systemd.watchdog(), b"WATCHDOG=1"),
        (lambda: systemd.notify(READY=1, STATUS="x"), b"READY=1\nSTATUS=x"),
    ],
)
def test_datagrams(notify_socket: socket.socket, send: Callable[[], bool], expected: bytes) -> None:
    assert send() is True
    assert received(notify_socket) == expected


def test_status_text_stays_on_one_line(notify_socket: socket.socket) -> None:
    assert systemd.status("two\nlines")
    assert received(notify_socket) == b"STATUS=two lines"


def test_reloading_carries_the_monotonic_clock(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(notify_socket).split(b"\n")
    assert lines[0] == b"RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith(b"MONOTONIC_USEC=")
    assert before <= int(lines[1].split(b"=", 1)[1]) <= after


def test_sender_credentials_are_ours(notify_socket: socket.socket) -> None:
    # systemd matches NotifyAccess=main on the sender's pid (SCM_CREDENTIALS).
    notify_socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert systemd.watchdog()
    _data, ancdata, _flags, _addr = notify_socket.recvmsg(4096, socket.CMSG_SPACE(12))
    creds = [d for level, kind, d in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert creds and int.from_bytes(creds[0][:4], "little") == os.getpid()


def test_no_manager_means_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False
    assert systemd.watchdog() is False
    assert systemd.reloading() is False


def test_a_vanished_manager_is_not_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", "self", 15.0),
        ("3000000", None, 1.5),
        ("3000000", "other", None),
        ("0", "self", None),
        ("junk", "self", None),
        (None, None, None),
        ("3000000", "junk", None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            real = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, real)
    assert systemd.watchdog_interval() == expected


def test_listen_fds_empty_outside_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    assert systemd.listen_fds() == []

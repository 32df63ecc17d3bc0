"""Socket activation without a container: systemd-socket-activate plays the part of the .socket unit.

``systemd-socket-activate -l PATH CMD`` listens on PATH and, on the first
connection, runs CMD with the listening socket as fd 3 (``LISTEN_FDS=1``), the
way systemd starts procpoold.service from procpoold.socket. The socket file
belongs to the activator: the daemon must neither recreate nor remove it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from procpool import Client
from tests.support.daemon import tagged_pids
from tests.support.waiting import wait_until

ACTIVATOR = shutil.which("systemd-socket-activate")


@dataclass
class Activated:
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    tag: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def listening(path: Path) -> bool:
    """Whether a Unix socket bound to ``path`` is listening (``__SO_ACCEPTCON`` in /proc/net/unix)."""
    with open("/proc/net/unix") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == os.fspath(path) and int(fields[3], 16) & 0x10000:
                return True
    return False


@pytest.fixture
def activated() -> Iterator[Activated]:
    """procpoold behind systemd-socket-activate, not yet started (no connection so far)."""
    if ACTIVATOR is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate not found (Debian package: systemd)")
        pytest.skip("systemd-socket-activate not found")
    folder = Path(tempfile.mkdtemp(prefix="pp-sa-", dir="/tmp"))  # short: Unix socket paths are limited
    sock = folder / "control.sock"
    log_path = folder / "daemon.log"
    tag = uuid.uuid4().hex
    env = {**os.environ, "PROCPOOL_TEST_TAG": tag}
    for name in ("PROCPOOL_SOCKET", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    command = [ACTIVATOR, "-l", str(sock), sys.executable, "-m", "procpoold", "--socket", str(sock),
               "--state-dir", str(folder / "state"), "--workers", "2", "--log-level", "debug"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        # The file appears at bind(), a moment before listen(): a connection in between is refused.
        # Wait for the listening state without connecting, which would start the daemon.
        wait_until(lambda: listening(sock) or proc.poll() is not None, what="the activator to listen")
        assert proc.poll() is None, f"systemd-socket-activate exited:\n{log_path.read_text()}"
        yield Activated(proc, sock, log_path, tag)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for pid in tagged_pids(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(folder, ignore_errors=True)  # the socket file is the activator's: ours to remove


def test_first_request_starts_the_daemon_on_the_inherited_socket(activated: Activated) -> None:
    assert tagged_pids(activated.tag) == [activated.proc.pid]  # only the activator, waiting
    assert "procpoold" not in activated.log()
    started = time.monotonic()
    with Client(activated.socket, timeout=30) as client:
        info = client.ping()
    elapsed = time.monotonic() - started
    # The activator execs the daemon in place: same pid, fd 3 adopted.
    assert info["pid"] == activated.proc.pid
    # Records reach stderr through the log writer thread, a few milliseconds after they are made.
    wait_until(activated.log, lambda log: "adopted the control socket" in log and "(fd 3)" in log,
               what="the daemon's record of the adopted socket")
    print(f"first ping including activation: {elapsed:.2f}s")

    with Client(activated.socket, timeout=10) as client:
        assert client.status()["pid"] == activated.proc.pid


def test_sigterm_leaves_no_process_and_keeps_the_activators_socket(activated: Activated) -> None:
    with Client(activated.socket, timeout=30) as client:
        client.ping()
    activated.proc.send_signal(signal.SIGTERM)
    assert activated.proc.wait(20) == 0, activated.log()
    wait_until(lambda: tagged_pids(activated.tag), lambda pids: not pids, timeout=10,
               what="every process of the daemon to exit")
    # The daemon did not create the file, so it must not remove it either.
    assert activated.socket.exists()
    assert "stopping: received SIGTERM" in activated.log()

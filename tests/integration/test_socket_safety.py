"""Non-root sockets are safe: the daemon refuses a socket folder someone else could change, and the
client refuses a socket (or a listener) that is not in trusted hands, before it sends anything."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from procpool import Client
from procpool.contract.errors import DaemonUnreachable, ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.users import User, throwaway
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def mallory() -> Iterator[User]:
    with throwaway({"mal": []}, []) as (users, _groups):
        yield users["mal"]


def refused_start(d: DaemonProcess) -> list[str]:
    """Run the daemon in the foreground; it must refuse to start: return its stderr lines."""
    out = subprocess.run(d.command(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert not d.socket.exists()
    # (the daemon's own log lines go to stderr as well: keep the error and its hint)
    lines = [line for line in out.stderr.splitlines() if line.startswith(("procpoold: error:", "hint:"))]
    assert len(lines) == 2 and lines[1].startswith("hint: give the socket a folder of its own"), lines
    return lines


def test_daemon_refuses_a_folder_another_user_made_for_it(mallory: User) -> None:
    d = DaemonProcess()
    try:
        folder = d.socket.parent
        folder.mkdir()
        os.chown(folder, mallory.uid, -1)
        os.chmod(folder, 0o777)  # the case: pre-created, mode 0777, by someone else
        lines = refused_start(d)
        assert lines[0] == (
            f"procpoold: error: refusing to put the control socket in {folder}: {folder} belongs to "
            f"{mallory.name} (uid {mallory.uid}), who could replace the socket"
        )
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777  # not someone else's to change
    finally:
        d.cleanup()


def test_daemon_refuses_a_folder_below_one_that_others_may_write() -> None:
    d = DaemonProcess()
    try:
        os.chmod(d.dir, 0o777)
        lines = refused_start(d)
        assert f"{d.dir} (above {d.socket.parent}) is writable by others (mode 0777)" in lines[0]
    finally:
        d.cleanup()


def test_daemon_refuses_a_socket_directly_in_a_shared_sticky_folder() -> None:
    d = DaemonProcess()
    try:
        shared = d.dir / "shared"
        shared.mkdir(mode=0o1777)
        os.chmod(shared, 0o1777)
        d.socket = shared / "control.sock"
        lines = refused_start(d)
        assert f"in {shared}: it is a shared folder (mode 1777)" in lines[0]
    finally:
        d.cleanup()


def test_daemon_tightens_its_own_folder_and_starts() -> None:
    d = DaemonProcess()
    try:
        d.socket.parent.mkdir(mode=0o777)
        os.chmod(d.socket.parent, 0o777)
        d.start()
        assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o750
        with d.client() as client:
            client.ping()
        d.stop()
    finally:
        d.cleanup()


LISTENER = textwrap.dedent(
    """
    import os, socket, sys
    path, uid, chown_to = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    drop_before_bind = sys.argv[4] == "1"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if drop_before_bind:
        os.setgroups([]); os.setgid(uid); os.setuid(uid)
    s.bind(path)
    os.chmod(path, 0o666)
    if chown_to >= 0:
        os.chown(path, chown_to, -1)
    if not drop_before_bind:
        os.setgroups([]); os.setgid(uid); os.setuid(uid)  # SO_PEERCRED is taken at listen()
    s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(1.0)
        got = b""
        try:
            while chunk := c.recv(65536):
                got += chunk
        except OSError:
            pass
        print(f"received {len(got)}", flush=True)
        c.close()
    """
)


class FakeListener:
    """A plain Unix socket listened on by another user's process (not a procpoold)."""

    def __init__(self, path: Path, uid: int, chown_to: int = -1, drop_before_bind: bool = False) -> None:
        self.path = path
        self.out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                LISTENER,
                str(path),
                str(uid),
                str(chown_to),
                "1" if drop_before_bind else "0",
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            self.lines, lambda lines: "ready" in lines or self.proc.poll() is not None, what="listener"
        )
        assert self.proc.poll() is None, self.lines()

    def lines(self) -> list[str]:
        self.out.seek(0)
        return self.out.read().splitlines()

    def received(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("received")]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.out.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pp-", dir="/tmp"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def test_client_refuses_a_listener_run_by_another_user(folder: Path, mallory: User) -> None:
    sock = folder / "control.sock"
    fake = FakeListener(sock, mallory.uid)  # the file is root's, the listener is mallory's
    try:
        with pytest.raises(ProcpoolError) as info:
            Client(sock).ping()
        assert info.value.code is ErrorCode.UNREACHABLE
        assert info.value.message.startswith(
            f"refusing to talk to the process on {sock} (pid {fake.proc.pid})"
        )
        assert f"runs as {mallory.name} (uid {mallory.uid}), not as root" in info.value.message
        assert info.value.hint and "--trust-uid" in info.value.hint
        wait_until(fake.received, what="the probe's connection")
        assert fake.received() == [0]  # the probe sent nothing; ZeroMQ never connected
        # procctl: one line, a hint, exit 3.
        out = subprocess.run(
            [sys.executable, "-m", "procpool.cli", "--socket", str(sock), "ping"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 3 and "Traceback" not in out.stderr
        assert out.stderr.splitlines()[0].startswith("procctl: error: refusing to talk to the process on")
        assert f"{mallory.name} (uid {mallory.uid})" in out.stderr
        # Trusting that uid (option or environment) lets the client talk to it.
        with pytest.raises(DaemonUnreachable):
            Client(sock, timeout=0.5, trust_uids=[mallory.uid]).ping()
        wait_until(fake.received, lambda r: any(n > 0 for n in r), what="the trusted client's greeting")
        out = subprocess.run(
            [sys.executable, "-m", "procpool.cli", "--socket", str(sock), "--timeout", "0.3", "ping"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PROCPOOL_TRUST_UID": mallory.name},
        )
        assert out.returncode == 3 and "no procpoold answered" in out.stderr, out.stderr
    finally:
        fake.close()


def test_client_refuses_a_socket_file_another_user_owns(folder: Path, mallory: User) -> None:
    sock = folder / "control.sock"
    fake = FakeListener(sock, 0, chown_to=mallory.uid)  # a root listener, but mallory's file
    try:
        with pytest.raises(ProcpoolError) as info:
            Client(sock).ping()
        assert info.value.message == (
            f"refusing to use the socket {sock}: {sock} belongs to {mallory.name} (uid {mallory.uid}), "
            "who could replace the socket"
        )
        assert fake.received() == []  # refused before connecting at all
    finally:
        fake.close()


def test_client_refuses_a_socket_in_a_folder_another_user_owns(folder: Path, mallory: User) -> None:
    theirs = folder / "theirs"
    theirs.mkdir()
    os.chown(theirs, mallory.uid, -1)
    os.chmod(folder, 0o755)
    fake = FakeListener(theirs / "control.sock", mallory.uid, drop_before_bind=True)
    try:
        with pytest.raises(ProcpoolError) as info:
            Client(theirs / "control.sock").ping()
        assert f"{theirs} belongs to {mallory.name}" in info.value.message
        # A symlink to it from a trusted folder does not launder it.
        link = folder / "link.sock"
        link.symlink_to(theirs / "control.sock")
        with pytest.raises(ProcpoolError) as info:
            Client(link).ping()
        assert f"{theirs} belongs to {mallory.name}" in info.value.message
    finally:
        fake.close()

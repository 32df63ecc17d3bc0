"""A real procpoold on a temporary socket, started and always cleaned up.

Readiness comes from a fake ``NOTIFY_SOCKET`` (the daemon sends ``READY=1``
exactly as it does to systemd), so no test sleeps. Every process the daemon
starts inherits a unique ``PROCPOOL_TEST_TAG``; after stopping, the harness
scans /proc for that tag and fails the test if anything is left, and checks
that the socket file is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from procpool import Client

STOP_TIMEOUT = 20.0


def tagged_pids(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``PROCPOOL_TEST_TAG=tag``."""
    needle = f"PROCPOOL_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


class DaemonProcess:
    """One procpoold subprocess with its own socket, state dir and log file."""

    def __init__(
        self,
        workdir: Path | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.owns_dir = workdir is None
        # Short paths: a Unix socket path must fit in 107 bytes.
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="pp-", dir="/tmp"))
        self.socket = self.dir / "run" / "control.sock"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "daemon.log"
        self.tag = uuid.uuid4().hex
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "procpoold",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            "debug",
            *self.extra_args,
        ]

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> DaemonProcess:
        notify_path = self.dir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if notify_path.exists():
            notify_path.unlink()
        notify.bind(str(notify_path))
        env = {**os.environ, "PROCPOOL_TEST_TAG": self.tag, "NOTIFY_SOCKET": str(notify_path), **self.env}
        if "PROCPOOL_SOCKET" not in self.env:
            env.pop("PROCPOOL_SOCKET", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        try:
            if wait_ready:
                self._wait_ready(notify, timeout)
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)
        return self

    def _wait_ready(self, notify: socket.socket, timeout: float) -> None:
        assert self.proc is not None
        end = time.monotonic() + timeout
        notify.settimeout(0.1)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"procpoold exited with {self.proc.returncode} before READY:\n{self.log()}"
                )
            try:
                data = notify.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n"):
                return
        raise AssertionError(f"procpoold sent no READY=1 within {timeout}s:\n{self.log()}")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def procctl(
        self, *args: str, input: bytes | None = None, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real procctl against this daemon."""
        cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(self.socket), *args]
        return subprocess.run(
            cmd,
            input=input.decode() if input else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def crash(self, everything: bool = True) -> None:
        """SIGKILL the daemon (and, like systemd's cgroup kill, everything it started)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        if everything:
            for pid in tagged_pids(self.tag):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def restart(self, wait_ready: bool = True) -> DaemonProcess:
        """Start a new daemon on the same socket and state (after stop() or crash())."""
        assert self.proc is None or self.proc.poll() is not None
        return self.start(wait_ready=wait_ready)

    def stop(self, check: bool = True) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole group; then check that nothing leaked."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                if check:
                    raise AssertionError(f"procpoold did not stop on SIGTERM:\n{self.log()}") from None
        self.returncode = self.proc.returncode
        if check:
            self.assert_clean()
        return self.returncode

    def assert_clean(self) -> None:
        """No process of this daemon left, no socket file left."""
        deadline = time.monotonic() + 10
        leftovers = tagged_pids(self.tag)
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = tagged_pids(self.tag)
        if leftovers:
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"processes left behind by procpoold: {leftovers}\n{self.log()}")
        assert not self.socket.exists(), f"socket file {self.socket} left behind"

    def cleanup(self) -> None:
        """Kill whatever is left (never raises) and remove the work dir."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        for pid in tagged_pids(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop(check=exc[0] is None)
        finally:
            self.cleanup()

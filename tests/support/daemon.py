"""A real procpoold on a temporary socket, started and always cleaned up.

Readiness comes from a fake ``NOTIFY_SOCKET`` (the daemon sends ``READY=1``
exactly as it does to systemd), so no test sleeps. Every process the daemon
starts inherits a unique ``PROCPOOL_TEST_TAG``; after stopping, the harness
scans /proc for that tag and fails the test if anything is left, and checks
that the socket file is gone, that no shared-memory object created by one of
its processes is left in /dev/shm, and that the test process holds no fd on the
daemon's files or on procpool shared memory.

Shared-memory objects carry their creator's pid (``procpool-spill-<pid>-<seq>``,
see ``procpoold.pool.shm``), so the harness only looks at objects of the pids it
saw in its own daemons' process trees: other tests may run daemons in parallel.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil

from procpool import Client
from procpoold.pool import shm

STOP_TIMEOUT = 20.0


def tagged_pids(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``PROCPOOL_TEST_TAG=tag``."""
    return pids_with_env("PROCPOOL_TEST_TAG", tag)


def pids_with_env(name: str, value: str, skip_zombies: bool = False) -> list[int]:
    """Pids of processes whose environment carries ``name=value`` (without zombies: the living)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            if skip_zombies:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it only waits to be reaped)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def shm_objects(owners: set[int] | frozenset[int]) -> list[str]:
    """Names of the procpool objects in /dev/shm created by one of the pids ``owners``."""
    return [name for name in shm.list_leftovers() if shm.owner_pid(name) in owners]


def procpool_fds(pid: int | str = "self", under: tuple[Path, ...] = ()) -> dict[int, str]:
    """fds of ``pid`` on procpool shared memory (named or memfd), or on a path below ``under``."""
    found = {}
    base = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(base)
    except OSError:
        return {}
    for entry in entries:
        try:
            target = os.readlink(f"{base}/{entry}")
        except OSError:
            continue
        if target.startswith((f"{shm.SHM_DIR}/{shm.PREFIX}", f"/memfd:{shm.PREFIX}")) or any(
            target == str(p) or target.startswith(f"{p}/") for p in under
        ):
            found[int(entry)] = target
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
        #: Every pid seen in the process trees of this harness's daemons (for the /dev/shm check).
        self.pids_seen: set[int] = set()

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
        self.pids_seen.add(self.proc.pid)
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

    def note_pids(self) -> set[int]:
        """Record (and return) the pids of this daemon's processes alive now."""
        pids = set(tagged_pids(self.tag))
        self.pids_seen |= pids
        return pids

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.note_pids()
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def crash(self, everything: bool = True, reap: bool = True) -> None:
        """SIGKILL the daemon and, like systemd's cgroup kill, everything it started.

        With ``everything``, every process is stopped (SIGSTOP) before any is killed, so none of
        them runs a line of cleanup (a zygote seeing its daemon die would otherwise start its own),
        and this returns once all of them are dead. Without it only the daemon is killed: what it
        started must then go away (or not) by itself.

        With ``reap`` False the dead daemon stays a zombie until :meth:`restart` (or
        :meth:`wait`): its pid cannot be reused, and to every procpoold its shared-memory objects
        still have a live owner, so none sweeps them away in between (other tests may start
        daemons in parallel, and each start sweeps the objects of every dead owner).
        """
        assert self.proc is not None
        pids = self.note_pids()
        if not everything:
            self.proc.kill()
            self._wait_exit(reap)
            return
        stopped: set[int] = set()
        while pids - stopped:  # (a process forked meanwhile is stopped by the next pass)
            for pid in pids - stopped:
                _send(pid, signal.SIGSTOP)
            stopped |= pids
            pids = self.note_pids()
        for pid in stopped:
            _send(pid, signal.SIGKILL)
        self._wait_exit(reap)
        _wait_dead(stopped)

    def _wait_exit(self, reap: bool, timeout: float = 10.0) -> None:
        """Wait until the daemon has exited; reap it, or leave it a zombie (``reap`` False)."""
        assert self.proc is not None
        if reap:
            self.proc.wait(timeout)
            return
        # WNOWAIT: wait, but leave it waitable. (Its /proc state says zombie as soon as its main
        # thread exits, before the other threads have: it cannot be reaped until they have.)
        deadline = time.monotonic() + timeout
        while self.proc.returncode is None and not os.waitid(
            os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"procpoold (pid {self.proc.pid}) survived SIGKILL")
            time.sleep(0.01)

    def restart(self, wait_ready: bool = True) -> DaemonProcess:
        """Start a new daemon on the same socket and state (after stop() or crash())."""
        assert self.proc is None or self.proc.poll() is not None
        return self.start(wait_ready=wait_ready)

    def stop(self, check: bool = True) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole group; then check that nothing leaked."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.note_pids()
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
        """No process of this daemon left, no socket file, no shared-memory object created by one of
        its processes, no fd of the test process on the daemon's files or on procpool memory."""
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
        objects = shm_objects(self.pids_seen)
        while objects and time.monotonic() < deadline:  # (a dying zygote may still be sweeping)
            time.sleep(0.05)
            objects = shm_objects(self.pids_seen)
        assert not objects, f"shared-memory objects left behind in {shm.SHM_DIR}: {objects}\n{self.log()}"
        fds = procpool_fds("self", (self.socket.parent, self.state_dir, self.log_path))
        assert not fds, f"the test process holds fds on the daemon's files or memory: {fds}"

    def cleanup(self) -> None:
        """Kill whatever is left (never raises) and remove the work dir."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        for pid in tagged_pids(self.tag):
            _send(pid, signal.SIGKILL)
        # Objects of our dead processes (after a crash with no restart to sweep them). Only of
        # processes not running: a pid reused meanwhile belongs to someone else.
        for name in shm_objects({pid for pid in self.pids_seen if not running(pid)}):
            try:
                shm.unlink(name)
            except (OSError, ValueError):
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


def ctrl_c_after_submit(daemon: DaemonProcess, *args: str) -> tuple[str, str]:
    """Run ``procctl ARGS`` (a ``--wait`` that submits), press Ctrl-C once it has said
    ``job N "name" submitted``, and return the job's id and what procctl wrote on stderr; it must
    exit 130 (procctl stops waiting, the job goes on)."""
    cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # 'job 1 "name" submitted': procctl waits from here on
        assert "submitted" in first, first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, (out, err)
    return first.split()[1], err


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_dead(pids: set[int], timeout: float = 10.0) -> None:
    """Until every one of ``pids`` has exited (a zombie has), or fail."""
    deadline = time.monotonic() + timeout
    while left := [pid for pid in pids if running(pid)]:
        if time.monotonic() > deadline:
            raise AssertionError(f"processes survived SIGKILL: {left}")
        time.sleep(0.01)


AnyDaemon = TypeVar("AnyDaemon", bound=DaemonProcess)


@contextmanager
def serving(daemon: AnyDaemon) -> Iterator[AnyDaemon]:
    """Yield a daemon (started by the caller, or inside the block); afterwards stop it checking its
    exit status, or print its log if the block failed, and clean up either way."""
    failed = True
    try:
        yield daemon
        failed = False
    finally:
        try:
            if not failed:
                daemon.stop(check=True)
        finally:
            if failed:
                print(daemon.log())
            daemon.cleanup()

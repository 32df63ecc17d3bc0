"""A real systemd booted in a throw-away systemd-nspawn container, driven from pytest.

The container is the host's own file system with a volatile root (``-D /
--volatile=yes``): /usr is the host's (read-only), /etc, /var, /run and /tmp
start empty, so nothing needs building. The pieces that make this reliable:

* a ``disable *`` preset bound at /etc/systemd/system-preset, or the container's
  first boot would enable and start every service installed on the host;
* its own cgroup in every cgroup hierarchy, entered before ``exec
  systemd-nspawn``, or two containers would drive the same cgroup folders and
  a unit stop in one could leave processes of the other behind;
* ``--notify-ready=yes`` with our own ``NOTIFY_SOCKET``: nspawn reports the
  container's PID 1 (``X_NSPAWN_LEADER_PID``) and, once the container's systemd
  has booted, ``READY=1``;
* commands run through ``nsenter -a`` with ``env -i``, so nothing of the test
  process's environment leaks in;
* unique names (container, cgroup, temp folders), and a teardown that always
  stops nspawn, kills what is left of the container, removes its cgroups and
  temp folders, and reports anything it had to clean up by force.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The PATH inside the container (``env -i`` starts from nothing).
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_counter = itertools.count()


class ContainerError(AssertionError):
    """The container failed to boot or a command in it failed; carries the console log."""


@dataclass(frozen=True)
class Bind:
    """A host path made visible in the container."""

    source: Path
    target: str
    read_only: bool = True

    def option(self) -> str:
        flag = "--bind-ro" if self.read_only else "--bind"
        return f"{flag}={self.source}:{self.target}"


def cgroup_roots() -> list[Path]:
    """Where a per-container cgroup must be made: every hierarchy that tracks processes."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure cgroup v2
        return [base]
    return [base / name for name in ("systemd", "unified") if (base / name / "cgroup.procs").exists()]


def missing_tools() -> list[str]:
    """Host programs the container tests need and cannot find."""
    return [tool for tool in ("systemd-nspawn", "nsenter") if shutil.which(tool) is None]


@dataclass
class Container:
    """One booted container. Use :func:`booted` rather than calling :meth:`boot` directly."""

    binds: Sequence[Bind] = ()
    #: Empty writable folders mounted over read-only parts of /usr (which is the host's).
    tmpfs: Sequence[str] = ()
    name: str = field(default_factory=lambda: f"pp-e2e-{os.getpid()}-{next(_counter)}")
    workdir: Path = field(init=False)
    leader: int = 0
    boot_seconds: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _pidns: int | None = field(default=None, init=False)
    _cgroups: list[Path] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    # -- boot -----------------------------------------------------------------------------------

    def boot(self) -> None:
        preset = self.workdir / "preset"
        preset.mkdir()
        (preset / "00-e2e.preset").write_text("disable *\n")
        for root in cgroup_roots():
            group = root / f"e2e-{self.name}"
            group.mkdir(exist_ok=True)
            self._cgroups.append(group)
        notify_path = self.workdir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        enter = " ".join(f"echo $$ > {shlex.quote(str(g / 'cgroup.procs'))};" for g in self._cgroups)
        command = [
            "sh", "-c", f'{enter} exec "$@"', "sh",
            "systemd-nspawn", "-D", "/", "--volatile=yes", "--private-network", "--register=no",
            "--keep-unit", "--notify-ready=yes", "-M", self.name,
            f"--bind-ro={preset}:/etc/systemd/system-preset",
            *(b.option() for b in self.binds),
            *(f"--tmpfs={path}" for path in self.tmpfs),
            "-b", "systemd.firstboot=off",
        ]
        env = {"PATH": os.environ.get("PATH", CONTAINER_PATH), "NOTIFY_SOCKET": str(notify_path)}
        started = time.monotonic()
        try:
            with open(self.console_log, "wb") as log:
                self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              env=env)
            self._wait_ready(notify, started)
        finally:
            notify.close()
        self.boot_seconds = time.monotonic() - started
        self._pidns = os.stat(f"/proc/{self.leader}/ns/pid").st_ino

    def _wait_ready(self, notify: socket.socket, started: float) -> None:
        assert self._proc is not None
        notify.settimeout(0.2)
        ready = False
        while not (ready and self.leader):
            if self._proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self._proc.returncode}:\n{self.console()}")
            if time.monotonic() - started > BOOT_TIMEOUT:
                raise ContainerError(f"container not ready after {BOOT_TIMEOUT}s:\n{self.console()}")
            try:
                data = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            for line in data.splitlines():
                key, _, value = line.partition("=")
                if key == "X_NSPAWN_LEADER_PID":
                    self.leader = int(value)
                elif key == "READY" and value == "1":
                    ready = True

    # -- commands -------------------------------------------------------------------------------

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the container as root, with a clean environment."""
        assert self.leader, "container not booted"
        assigns = [f"{k}={v}" for k, v in {"PATH": CONTAINER_PATH, **(env or {})}.items()]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *assigns, *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerError(
                f"{shlex.join(args)} exited with {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, check=check, timeout=timeout)

    def write_file(self, path: str, text: str) -> None:
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, input=text)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, *args: str) -> str:
        self.run("journalctl", "--sync", check=False)
        return self.run("journalctl", "--no-pager", *args).stdout

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    # -- teardown -------------------------------------------------------------------------------

    def _namespace_pids(self) -> list[int]:
        """Host pids of every process still in the container's pid namespace."""
        if self._pidns is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/pid").st_ino == self._pidns:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def shutdown(self) -> list[str]:
        """Stop the container and remove everything it made. Returns what had to be forced."""
        problems: list[str] = []
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # nspawn forwards SIGRTMIN+3: an orderly halt
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"systemd-nspawn ignored SIGTERM for {STOP_TIMEOUT}s")
                proc.kill()
                proc.wait(10)
        if proc is not None and proc.returncode not in (0, None):
            problems.append(f"systemd-nspawn exited with {proc.returncode}")
        leftovers = self._namespace_pids()
        if leftovers:
            problems.append(f"processes left in the container's pid namespace: {leftovers}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)  # ends the whole namespace
            end = time.monotonic() + 10
            while self._namespace_pids() and time.monotonic() < end:
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.rmdir(f"/run/systemd/nspawn/propagate/{self.name}")
        for group in self._cgroups:
            if not group.exists():
                continue
            for folder in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            try:
                group.rmdir()
            except OSError as exc:
                problems.append(f"cannot remove cgroup {group}: {exc}")
        self._cgroups = []
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


@contextlib.contextmanager
def booted(binds: Sequence[Bind] = (), tmpfs: Sequence[str] = ()) -> Iterator[Container]:
    """A booted container, always shut down and cleaned up afterwards."""
    container = Container(binds=binds, tmpfs=tmpfs)
    failed = False
    try:
        container.boot()
        yield container
    except BaseException:
        failed = True
        print(f"--- console of container {container.name} ---\n{container.console()}")
        raise
    finally:
        problems = container.shutdown()
        if problems and not failed:
            # Cleanup did succeed by force; the failure makes the leak visible.
            raise ContainerError(f"container {container.name} did not stop cleanly: {problems}")
        if problems:
            print(f"container {container.name} did not stop cleanly: {problems}")

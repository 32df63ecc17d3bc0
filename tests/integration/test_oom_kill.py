"""The kernel's OOM killer, for real: a worker or a command it kills is said to be killed by it.

The daemon runs in a memory cgroup of its own (made here: cgroup v1's memory hierarchy, or v2's
when it has the memory controller) with a limit, so its workers and commands do too; a task then
allocates past the limit and the kernel's OOM killer kills it. A SIGKILL from anyone else is said
not to be the OOM killer's. Needs root and a writable memory cgroup: skipped otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job, tasks_by_name

pytestmark = pytest.mark.timeout(120)

ROOT = str(Path(__file__).resolve().parents[2])
HERE = "tests.integration.test_oom_kill"
LIMIT = 384 * 2**20  # the daemon, the zygote and two idle workers need well under half of it
HOG = 1024  # MiB a hog tries to touch
_names = itertools.count()


def hog(mib: int) -> int:
    """Touch ``mib`` MiB (written, so every page is charged)."""
    blocks = [b"\1" * (16 << 20) for _ in range(mib // 16)]
    return len(blocks)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _v1_or_v2() -> tuple[Path, dict[str, str]] | None:
    """Where to make a memory cgroup, and the limit files to write in it."""
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        return v1, {"memory.limit_in_bytes": str(LIMIT)}
    v2 = Path("/sys/fs/cgroup")
    if "memory" in (v2 / "cgroup.subtree_control").read_text(errors="replace").split() if (
        v2 / "cgroup.subtree_control"
    ).exists() else False:
        return v2, {"memory.max": str(LIMIT), "memory.swap.max": "0"}
    return None


@contextlib.contextmanager
def memory_cgroup() -> Iterator[Path]:
    found = _v1_or_v2()
    if os.geteuid() != 0 or found is None:
        pytest.skip("needs root and a memory cgroup hierarchy")
    root, limits = found
    path = root / f"procpool-oom-{os.getpid()}-{next(_names)}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup ({exc})")
    try:
        for name, value in limits.items():
            with contextlib.suppress(FileNotFoundError):
                (path / name).write_text(value)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()  # empty by now: every process of the daemon is gone


class CgroupDaemon(DaemonProcess):
    """A procpoold that moves itself into ``cgroup`` before it starts (its children follow)."""

    def __init__(self, cgroup: Path) -> None:
        super().__init__(extra_args=["--workers", "2"])
        self.cgroup = cgroup

    def command(self) -> list[str]:
        procs = self.cgroup / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *super().command()]


def test_the_oom_killers_sigkill_is_named_as_such() -> None:
    with memory_cgroup() as cgroup:
        d = CgroupDaemon(cgroup)
        try:
            d.start()
            assert str(d.pid) in (cgroup / "cgroup.procs").read_text().split()
            status = run_job(d, {"name": "hog", "call": f"{HERE}:hog", "args": [HOG]}, python_path=[ROOT])
            task = tasks_by_name(status)["hog"]
            assert task["state"] == "failed" and task["error"]["type"] == "WorkerDied"
            assert task["error"]["message"].endswith(
                "was killed by the kernel's OOM killer (SIGKILL) while running task 'hog': out of memory")

            status = run_job(d, {"name": "killed", "call": f"{HERE}:kill_self"}, python_path=[ROOT])
            assert tasks_by_name(status)["killed"]["error"]["message"].endswith(
                "was killed by SIGKILL while running task 'killed' (not by the OOM killer)")

            code = f"import sys; sys.path.insert(0, {ROOT!r}); from {HERE} import hog; hog({HOG})"
            status = run_job(d, {"name": "cmd", "cmd": [sys.executable, "-c", code]})
            task = tasks_by_name(status)["cmd"]
            assert (task["state"], task["exit_code"]) == ("failed", -9)
            oom = "command killed by the kernel's OOM killer (SIGKILL): out of memory"
            assert task["error"]["message"] == oom

            with d.client() as client:  # the daemon itself was spared
                assert client.ping()["pid"] == d.pid
            d.stop()
        finally:
            d.cleanup()

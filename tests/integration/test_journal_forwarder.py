"""The journal forwarder of a real daemon: a killed one is replaced without losing a task's lines or
their order, and the ring it reads is shared with nobody else (not the zygote, not a worker)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-level", "info")

LINES = 20_000
#: prints LINES numbered lines, pausing once halfway until the file named by argv[1] exists
TALKER = ("import os, sys, time\n"
          f"for i in range({LINES}):\n"
          f"    if i == {LINES // 2}:\n"
          "        sys.stdout.flush()\n"
          "        while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
          "    print(f'n {i}')\n")


def forwarder(daemon: DaemonProcess) -> int:
    with daemon.client() as client:
        pid = client.status()["logging"]["forwarder_pid"]
    assert isinstance(pid, int) and psutil.Process(pid).ppid() == daemon.pid
    return pid


def memfd_inodes(pid: int) -> set[int]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            continue
    return found


def mapped_inodes(pid: int) -> set[int]:
    """Inodes of the memfds mapped by ``pid`` (whether or not it still holds an fd of them)."""
    found = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/memfd:"):
                found.add(int(parts[4]))
    return found


def test_the_journal_ring_is_shared_with_the_forwarder_only(daemon: DaemonProcess) -> None:
    fwd = forwarder(daemon)
    ring = memfd_inodes(fwd)
    assert ring and ring <= mapped_inodes(daemon.pid)
    others = [p for p in psutil.Process(daemon.pid).children(recursive=True) if p.pid != fwd]
    assert others  # the zygote and the workers
    for p in others:  # forked before the ring existed: no mapping, no fd of it
        assert not ring & (mapped_inodes(p.pid) | memfd_inodes(p.pid)), p


def test_a_killed_forwarder_is_replaced_and_no_line_is_lost_or_reordered(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with daemon.client() as client:
        job = client.submit({"name": "talker", "root": {"name": "talker",
                                                        "cmd": ["python3", "-c", TALKER, str(gate)]}})["id"]
        # Halfway: the first half is written (the forwarder acknowledged everything accepted).
        wait_until(lambda: client.status()["logging"],
                   lambda s: s["written"] > LINES // 2 and s["queued"] == 0,
                   what="the first half to be written")
        old = forwarder(daemon)
        os.kill(old, signal.SIGKILL)
        new = wait_until(lambda: client.status()["logging"],
                         lambda s: s["forwarder_restarts"] == 1 and s["forwarder_pid"] not in (None, old),
                         what="a new forwarder")["forwarder_pid"]
        gate.touch()
        assert client.wait(job, timeout=60)["state"] == "completed"
        assert forwarder(daemon) == new
    daemon.stop()
    log = daemon.log().splitlines()
    out = [line.split("procpoold.task: ", 1)[1].split(" [", 1)[0] for line in log
           if line.startswith("INFO    procpoold.task: n ")]
    assert out == [f"n {i}" for i in range(LINES)]
    assert any(f"the journal forwarder (pid {old}) killed by signal 9; started another (pid {new})" in line
               for line in log)
    [done] = [i for i, line in enumerate(log) if 'task "talker" completed' in line]
    assert done > max(i for i, line in enumerate(log) if line.startswith("INFO    procpoold.task: n "))
    assert "PROCPOOL_TASK_NAME=talker" in log[done]  # the new forwarder got the task's names

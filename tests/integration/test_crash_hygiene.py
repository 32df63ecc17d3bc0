"""SIGKILL of procpoold: its pool goes down by itself, and nothing of it survives the next start.

The pool's processes are the daemon's zygote (its child) and the workers (the zygote's children).
Each test has a worker in the middle of a task and a request in flight through a spill object in
/dev/shm (a call whose argument is larger than a ring: the daemon writes it to
``procpool-spill-<daemon pid>-<seq>`` and queues it on a worker that is busy, so nobody has read it
when the daemon dies). Two deaths:

* the daemon alone is killed (what the OOM killer or a crash does): the zygote (death signal,
  end of file on its socket) kills and reaps the workers and exits, without help;
* the daemon and every process it started are killed at once (systemd's cgroup kill): nobody gets
  to clean up.

In the first case the zygote removes the dead daemon's spill objects on its way out (it stops
without having been asked to: ``_ZygoteServer._finish`` in procpoold/pool/zygote.py). Either way
the next daemon's start removes whatever a dead one left (``PoolExecutor.prefork`` calls
``shm.cleanup_leftovers``) before it is ready, and nothing of the first daemon remains.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.daemon import DaemonProcess, procpool_fds, running, shm_objects, tagged_pids
from tests.support.jobs import run_job, tasks_by_name, wait_task_state
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = str(Path(__file__).resolve().parents[2])
HERE = "tests.integration.test_crash_hygiene"
WORKERS = 2
#: More than a ring holds (1 MiB by default): the request travels through a spill object.
BIG = 2 * 2**20
#: Only reached when something is broken: a task waiting for a gate gives up after this.
GIVE_UP = 60.0


# -- task code (runs in the daemon's workers, imported through python_path) ------------------------


def hold(gate: str, started: str | None = None, payload: str = "") -> int:
    """Say it started (with its pid), wait for ``gate``; return the payload's length."""
    if started:
        Path(started).write_text(str(os.getpid()))
    end = time.monotonic() + GIVE_UP
    while not Path(gate).exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.01)
    return len(payload)


def call(fn: str, *args: Any) -> dict[str, Any]:
    return {"call": f"{HERE}:{fn}", "args": list(args)}


# -- helpers -----------------------------------------------------------------------------------------


def pool_tree(d: DaemonProcess) -> tuple[int, set[int]]:
    """The daemon's zygote and its workers, from the process tree, checked against ``pool()``."""
    # (no command task runs: the zygote and the journal forwarder only)
    [zygote] = [p for p in psutil.Process(d.pid).children() if "procpoold.journal" not in p.cmdline()]
    workers = {p.pid for p in zygote.children()}
    with d.client() as client:
        assert {w["pid"] for w in client.pool()["workers"]} == workers
    assert len(workers) == WORKERS
    return zygote.pid, workers


def forwarders(d: DaemonProcess) -> set[int]:
    """The daemon's journal forwarder process (one, while it runs)."""
    return {p.pid for p in psutil.Process(d.pid).children() if "procpoold.journal" in p.cmdline()}


def memfd_inodes(pids: set[int]) -> set[tuple[int, int]]:
    """(device, inode) of the procpool memfds (ring segments) that the processes ``pids`` hold."""
    found = set()
    for pid in pids:
        for fd, target in procpool_fds(pid).items():
            if target.startswith("/memfd:"):
                try:
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                found.add((st.st_dev, st.st_ino))
    return found


def dead_and_not_ours(pid: int) -> bool:
    """Exited; if still a zombie, one waiting for another parent (ours would be ours to reap)."""
    if running(pid):
        return False
    try:
        return bool(psutil.Process(pid).ppid() != os.getpid())
    except psutil.NoSuchProcess:
        return True


def busy_pool_with_a_spill_in_flight(d: DaemonProcess, tmp: Path) -> tuple[list[str], str]:
    """Both workers inside ``hold`` (waiting for ``tmp/gate``) and, queued on one of them, a call
    whose argument is in a spill object of the daemon. Returns the job ids and the object's name."""
    opened = tmp / "open"
    opened.touch()
    # ``hold`` returns at once here: the daemon learns it is short, so it may later queue a call
    # of it on a worker already busy with one (prefetch) instead of waiting for an idle worker.
    warm = run_job(d, {"name": "warm", **call("hold", str(opened))}, python_path=[ROOT])
    assert warm["job"]["state"] == "completed", warm
    gate = tmp / "gate"
    started = [tmp / f"started{i}" for i in range(WORKERS)]
    # One job: a worker holds one job at a time, so only a call of its own job queues behind a
    # busy one. The big call follows a command that waits until both holds have started, so it
    # is pushed to a worker already inside hold() (which leaves it in the ring).
    both = " && ".join(f"[ -e {s} ]" for s in started)
    wait_cmd = {"name": "wait", "cmd": ["sh", "-c", f"until {both}; do sleep 0.02; done"]}
    with d.client() as client:
        busy = client.submit({
            "name": "busy",
            "python_path": [ROOT],
            "root": {"concurrent": [*({"name": f"h{i}", **call("hold", str(gate), str(s))}
                                      for i, s in enumerate(started)),
                                    {"sequential": [wait_cmd, {"name": "big", **call(
                                        "hold", str(gate), None, "x" * BIG)}]}]},
        })["id"]
        for i in range(WORKERS):
            wait_task_state(client, busy, f"h{i}")
        wait_until(lambda: all(s.exists() for s in started), what="both tasks to be inside hold()")
        wait_task_state(client, busy, "big")  # dispatched, to a worker still busy with h0 or h1
    [spill] = wait_until(lambda: shm_objects({d.pid}), what="the daemon's spill object of the big request")
    assert spill.startswith(f"procpool-spill-{d.pid}-")
    return [busy], spill


@dataclass
class BusyPool:
    """A daemon with both workers busy and a spilled request in flight (see the module)."""

    daemon: DaemonProcess
    jobs: list[str]
    spill: str
    zygote: int
    workers: set[int]
    old_pids: set[int]
    old_memfds: set[tuple[int, int]]


@contextlib.contextmanager
def busy_pool(tmp_path: Path) -> Iterator[BusyPool]:
    d = DaemonProcess(extra_args=["--workers", str(WORKERS)])
    try:
        d.start()
        jobs, spill = busy_pool_with_a_spill_in_flight(d, tmp_path)
        zygote, workers = pool_tree(d)
        old_pids = {d.pid, zygote, *workers, *forwarders(d)}
        yield BusyPool(d, jobs, spill, zygote, workers, old_pids, memfd_inodes(old_pids))
    finally:
        d.cleanup()


def recovered(b: BusyPool) -> None:
    """After the restart: every job of the dead daemon ends (its interrupted attempts say so), on a
    new pool, and nothing of the first daemon remains."""
    d = b.daemon
    with d.client() as client:
        for job_id in b.jobs:
            result = client.wait(job_id, timeout=30)
            assert result["finished"], result
            for t in result["status"]["tasks"]:
                if t["kind"] == "call":  # (the command that ordered them had finished)
                    assert t["attempt_history"][0]["status"] == "interrupted", t
        wait_until(lambda: [w["state"] for w in client.pool()["workers"]],
                   lambda states: states == ["idle"] * WORKERS, what="the new pool to be idle")
    zygote, workers = pool_tree(d)
    new_pids = {d.pid, zygote, *workers, *forwarders(d)}
    assert not new_pids & b.old_pids
    assert not [pid for pid in b.old_pids if running(pid)]
    assert set(tagged_pids(d.tag)) == new_pids
    assert shm_objects(b.old_pids) == []
    # No process of the new daemon holds a ring segment of the old one (a memfd lives exactly as
    # long as an fd or a mapping of it), and the test process holds no procpool memory at all.
    assert memfd_inodes(new_pids) and not memfd_inodes(new_pids) & b.old_memfds
    assert procpool_fds() == {}


# -- tests -------------------------------------------------------------------------------------------


def test_sigkill_of_the_daemon_alone_takes_its_pool_down(tmp_path: Path) -> None:
    with busy_pool(tmp_path) as b:
        d = b.daemon
        assert b.spill in shm_objects(b.old_pids)
        d.crash(everything=False)  # SIGKILL of the daemon only; we reap it (it is our child)
        assert d.proc is not None and d.proc.returncode == -9

        wait_until(lambda: [p for p in (b.zygote, *b.workers) if not dead_and_not_ours(p)],
                   lambda left: not left, timeout=15,
                   what="the zygote and the workers to exit by themselves")
        # The journal forwarder too (PR_SET_PDEATHSIG), once it has written what its ring held.
        wait_until(lambda: tagged_pids(d.tag), lambda left: not left, timeout=15,
                   what="every process of the daemon to exit")
        # The zygote, on its way out, removed the spill objects of its workers and of the daemon.
        assert shm_objects(b.old_pids) == []

        (tmp_path / "gate").touch()  # what was interrupted may run again and finish
        d.restart()  # READY comes after the pool's prefork, which sweeps /dev/shm
        assert shm_objects(b.old_pids) == []
        recovered(b)
        again = run_job(d, {"name": "again", **call("hold", str(tmp_path / "gate"))}, python_path=[ROOT])
        assert tasks_by_name(again)["again"]["state"] == "completed"
        d.stop()  # checks processes, socket, shared memory and fds


def test_after_a_cgroup_kill_the_next_start_removes_the_leftovers(tmp_path: Path) -> None:
    with busy_pool(tmp_path) as b:
        d = b.daemon
        # Every process stopped, then killed: nobody cleans anything up. The daemon stays a zombie
        # until the restart, so no procpoold started meanwhile (by a test running in parallel)
        # takes its objects for a dead owner's and sweeps them before ours can.
        d.crash(reap=False)
        assert not [pid for pid in b.old_pids if running(pid)]
        assert shm_objects(b.old_pids) == [b.spill]  # left for the next start

        (tmp_path / "gate").touch()
        d.restart()  # reaps the old daemon; READY comes after the pool's prefork, which sweeps
        assert shm_objects(b.old_pids) == []
        # Records go through one writer thread, in order: once READY's record is there, so is the
        # sweep's.
        wait_until(d.log, lambda log: log.count(" ready on ") == 2, what="the new daemon's ready record")
        swept = [name for line in d.log().splitlines() if "leftover shared-memory objects: " in line
                 for name in line.split("objects: ", 1)[1].split(" [", 1)[0].split(", ")]
        if b.spill not in swept:
            # Only possible when a procpoold or a pool started by a test running in parallel swept
            # it in the instant between the reap and our prefork (every start sweeps the objects of
            # every dead owner). Run alone, this test always takes the other branch.
            print(f"{b.spill} was swept by a procpool start running in parallel: {swept}")
        recovered(b)
        d.stop()

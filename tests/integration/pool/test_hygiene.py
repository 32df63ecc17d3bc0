"""Nothing outlives the pool: not after shutdown, not after SIGKILL of the process hosting it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.integration.pool.conftest import ROOT, PoolHarness, shm_entries
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = textwrap.dedent(f"""
    import sys, time
    sys.path.insert(0, {ROOT!r})
    from procpoold.pool import shm
    from procpoold.pool.slot import PoolSettings
    from tests.integration.pool.conftest import PoolHarness

    pool = PoolHarness(PoolSettings(workers=2))
    busy = pool.submit("sleep", 60)
    pool.submit("async_sleep", 60)
    pool.run_until(lambda: len(pool.events.started) == 2)
    spill = shm.write_spill(b"in flight")  # as if a large message were on its way
    print(pool.pool._zygote.pid, *pool.pids(), spill, flush=True)
    time.sleep(60)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigkill_of_the_host_leaves_nothing() -> None:
    host = subprocess.Popen([sys.executable, "-c", HOST], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        *pids, spill = host.stdout.readline().split()
        assert len(pids) == 3, pids
        assert spill in shm_entries()
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        wait_until(lambda: [p for p in map(int, pids) if not _gone(p)], lambda left: not left,
                   timeout=10, what="the zygote and workers to die with their parent")
        owners = {str(host.pid), *pids}
        wait_until(lambda: {e for e in shm_entries() if e.split("-")[2] in owners}, lambda s: not s,
                   timeout=10, what="shared-memory objects of the dead to be removed")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if host.stdout is not None:
            host.stdout.close()


def test_shutdown_reaps_everything(make_pool: type) -> None:
    pool: PoolHarness = make_pool(workers=3)
    pool.idle_workers(3)
    pids = pool.pids()
    zygote = pool.pool._zygote
    assert zygote is not None
    me = psutil.Process()
    assert {c.pid for c in me.children(recursive=True)} == pids | {zygote.pid}
    for pid in pids:  # stdio, the segment (and the dup mmap keeps), two eventfds, and the output
        # capture: the read ends of the pipes now on fds 1 and 2, and the original fds 1 and 2
        fds = os.listdir(f"/proc/{pid}/fd")
        assert len(fds) <= 3 + 2 + 2 + 4, [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
    pool.close()
    # make_pool's teardown checks children, shared memory and fds.

"""A worker of another user holds nothing of the daemon's: not its terminal, its journal stream
or its log file (its stdin, stdout and stderr), which the worker's user could read from, write
forged lines to, or push keystrokes into (``TIOCSTI``) as if typed at root's terminal."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from procpoold.engines import AttemptSpec
from tests.integration.pool.conftest import PoolHarness
from tests.support.users import probe_folder, throwaway_users

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FDS_PROBE = """
import os

def open_files():
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.fstat(int(name))
        except OSError:
            continue
        out.append([int(name), st.st_dev, st.st_ino])
    return out
"""


def test_a_users_worker_does_not_hold_the_daemons_stdio(make_pool: Callable[..., PoolHarness]) -> None:
    with throwaway_users(1) as users, probe_folder() as folder:
        (folder / "ppfds.py").write_text(FDS_PROBE)
        alice = users.users[0]
        ours = {(st.st_dev, st.st_ino) for st in (os.fstat(fd) for fd in (0, 1, 2))}
        ours.discard((os.stat(os.devnull).st_dev, os.stat(os.devnull).st_ino))
        assert ours, "the test needs stdio that is not /dev/null"
        pool = make_pool(workers=1)
        spec = AttemptSpec(attempt_id="s1#1", job_id="j", job_name="j", task_id="s1", task_name="fds",
                           attempt=1, kind="call", call="ppfds:open_files", python_path=[str(folder)],
                           user=alice)
        pool.pool.submit(spec)
        [out] = pool.wait(spec.attempt_id)
        assert out.status == "completed", out
        held = {(dev, ino): fd for fd, dev, ino in out.result}
        assert not ours & held.keys(), f"the worker holds the daemon's stdio: {held}"

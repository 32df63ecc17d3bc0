"""A restart kills what a crashed daemon's commands left running, found by pid or by identity."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from procpoold.engines import LeftAttempt
from procpoold.engines.commands import kill_leftovers

pytestmark = pytest.mark.unit


DAEMON = f"test-daemon-{uuid.uuid4().hex}"


def spawn_leader(identity: tuple[str, str, str], daemon: str = DAEMON) -> int:
    """A session leader running a shell with a second process in its group, like a command."""
    env = {"PATH": os.defpath, "PROCPOOL_DAEMON_ID": daemon, "PROCPOOL_JOB_ID": identity[0],
           "PROCPOOL_TASK_ID": identity[1], "PROCPOOL_ATTEMPT": identity[2]}
    return os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 60 & exec sleep 60"], env, setsid=True)


def killed(pid: int) -> bool:
    """Reap our child ``pid`` (waiting at most 10 s) and say whether SIGKILL ended it."""
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _group_alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not dead (a killed orphan may stay a zombie until
    whoever adopted it reaps it: dead all the same)."""
    alive = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def group_gone(pgid: int) -> bool:
    deadline = time.monotonic() + 10
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def leaders() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:  # whatever a failed test left behind
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def ident() -> tuple[str, str, str]:
    return (f"test-{uuid.uuid4().hex}", "3.7", "2")


def test_an_unrecorded_command_is_found_by_its_identity(leaders: list[int]) -> None:
    me = ident()
    pid = spawn_leader(me)
    leaders.append(pid)
    deadline = time.monotonic() + 10
    while len(_group_alive(pid)) < 2:  # the shell has started its background sleep
        assert time.monotonic() < deadline
        time.sleep(0.01)
    kill_leftovers([LeftAttempt(me[0], me[1], int(me[2]), None, None)], DAEMON)
    assert killed(pid)
    assert group_gone(pid)


def test_a_recorded_pid_is_killed_only_if_its_identity_matches(leaders: list[int]) -> None:
    me, other = ident(), ident()
    mine, stranger = spawn_leader(me), spawn_leader(other)
    leaders.extend([mine, stranger])
    # The stranger's pid was recorded for an attempt it is not (as if the pid had been reused).
    kill_leftovers([LeftAttempt(me[0], me[1], int(me[2]), mine, None),
                    LeftAttempt(other[0], other[1], 9, stranger, None)], DAEMON)
    assert killed(mine)
    assert group_gone(mine)
    done, _ = os.waitpid(stranger, os.WNOHANG)
    assert done == 0, "a process with another identity was killed"


def test_another_daemons_command_with_the_same_ids_is_spared(leaders: list[int]) -> None:
    # Job ids are per daemon: two daemons on one machine both have a job 1 with a task 1.0.
    me = ident()
    theirs = spawn_leader(me, daemon=f"other-{uuid.uuid4().hex}")
    leaders.append(theirs)
    kill_leftovers([LeftAttempt(me[0], me[1], int(me[2]), None, None)], DAEMON)
    done, _ = os.waitpid(theirs, os.WNOHANG)
    assert done == 0, "another daemon's command was killed"

"""Command tasks run as their submitter: a real daemon as root, two throwaway users.

Each user submits through ``procctl`` run as that user (the daemon learns who from the socket's
peer credentials); the task's ``id -u`` and ``id -G`` are the submitter's, it cannot read or remove
the store, and it holds no fd of the daemon's. Skipped unless the tests run as root.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.users import throwaway

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users, switches uid)")

PROCCTL_EXIT_PERMISSION = 4


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True)
class Site:
    daemon: DaemonProcess
    group: str
    gid: int
    alice: User
    bob: User


def _user(name: str) -> User:
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(name, entry.pw_gid)))


@pytest.fixture
def site() -> Iterator[Site]:
    """Two users (each with a group of their own) in the socket's group, and a root daemon."""
    with throwaway({"alice": ["sock"], "bob": ["sock"]}, ["sock"]) as (made, groups):
        group = groups["sock"]
        daemon = DaemonProcess(extra_args=["--workers", "1", "--group", group])
        try:
            daemon.dir.chmod(0o755)  # the socket's own folder (0750, the group's) guards it
            daemon.start()
            alice, bob = _user(made["alice"].name), _user(made["bob"].name)
            yield Site(daemon, group, grp.getgrnam(group).gr_gid, alice, bob)
            daemon.stop(check=True)
        finally:
            daemon.cleanup()


def procctl(
    site: Site, user: User | None, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``procctl --socket S ARGS`` run as ``user`` (None: as root)."""
    ids = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": sorted(user.groups)}
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(site.daemon.socket), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/", **ids)  # type: ignore[call-overload]
    if check:
        assert done.returncode == 0, f"{args} as {user}: {done.returncode} {done.stderr}"
    return done  # type: ignore[no-any-return]


def run_and_log(
    site: Site, user: User | None, *argv: str, extra: tuple[str, ...] = ()
) -> tuple[str, list[str]]:
    """Run a one-command job as ``user`` through procctl; its final state and its stdout lines."""
    job_id = procctl(site, user, "run", *extra, "--", *argv).stdout.strip()
    done = procctl(site, user, "--json", "wait", job_id, check=False)
    state = json.loads(done.stdout)["status"]["job"]["state"] if done.stdout else done.stderr
    logs = procctl(site, user, "logs", "--json", job_id).stdout.splitlines()
    lines = [r["message"] for r in map(json.loads, logs) if r.get("stream") == "stdout"]
    return state, lines


def test_each_users_command_runs_with_their_uid_and_groups(site: Site) -> None:
    for user in (site.alice, site.bob):
        state, lines = run_and_log(site, user, "sh", "-c", 'id -u; id -G; echo "$HOME $USER $LOGNAME"')
        assert state == "completed", (user, state)
        assert lines[0] == str(user.uid)
        assert {int(g) for g in lines[1].split()} == set(user.groups)
        assert site.gid in {int(g) for g in lines[1].split()}
        assert lines[2] == f"{pwd.getpwnam(user.name).pw_dir} {user.name} {user.name}"


def test_a_task_cannot_read_or_remove_the_store_or_use_the_daemons_fds(site: Site) -> None:
    state_dir = site.daemon.state_dir
    db = state_dir / "state.db"
    assert (os.stat(state_dir).st_mode & 0o777) == 0o700 and os.stat(state_dir).st_uid == os.geteuid()
    assert (os.stat(db).st_mode & 0o777) == 0o600
    script = (
        f'test -r {db} && echo db-readable || echo db-unreadable; '
        f'rm -f {db} 2>/dev/null && echo db-removed || echo db-kept; '
        f'ls {state_dir} >/dev/null 2>&1 && echo dir-listed || echo dir-closed; '
        'ls /proc/self/fd | tr "\\n" " "; echo'
    )
    state, lines = run_and_log(site, site.alice, "sh", "-c", script)
    assert state == "completed"
    assert lines[:3] == ["db-unreadable", "db-kept", "dir-closed"]
    assert db.exists()
    # 0, 1, 2 and the folder ls itself opens: nothing of the daemon's
    assert sorted(int(fd) for fd in lines[3].split()) == [0, 1, 2, 3]


def test_root_may_name_another_user_and_nobody_else_may(site: Site) -> None:
    state, lines = run_and_log(site, None, "id", "-u", extra=("--user", site.bob.name))
    assert (state, lines) == ("completed", [str(site.bob.uid)])
    # naming yourself is allowed
    state, lines = run_and_log(site, site.alice, "id", "-u", extra=("--user", site.alice.name))
    assert (state, lines) == ("completed", [str(site.alice.uid)])
    refused = procctl(site, site.alice, "run", "--user", site.bob.name, "--", "id", "-u", check=False)
    assert refused.returncode == PROCCTL_EXIT_PERMISSION, refused.stderr
    assert "only root or an administrator may run a job as another user" in refused.stderr
    assert "Traceback" not in refused.stderr
    unknown = procctl(site, None, "run", "--user", "no-such-user-pp", "--", "true", check=False)
    assert unknown.returncode != 0 and 'user: no user named "no-such-user-pp"' in unknown.stderr


def test_the_user_named_by_root_survives_a_restart(site: Site) -> None:
    gate = site.daemon.dir / "gate"  # a folder every user may search
    job_id = procctl(
        site, None, "run", "--user", site.bob.name, "--retries", "2", "--",
        "sh", "-c", f"until [ -e {gate} ]; do sleep 0.05; done; id -u",
    ).stdout.strip()
    site.daemon.crash()  # the attempt is interrupted and runs again after the restart
    site.daemon.restart()
    gate.touch()
    done = procctl(site, None, "--json", "wait", job_id, check=False)
    assert json.loads(done.stdout)["status"]["job"]["state"] == "completed", done.stdout
    logs = procctl(site, None, "logs", "--json", job_id).stdout.splitlines()
    assert str(site.bob.uid) in [r["message"] for r in map(json.loads, logs) if r.get("stream") == "stdout"]


def test_the_working_folder_is_entered_as_the_user(site: Site) -> None:
    tmp_path = site.daemon.dir / "closed"
    tmp_path.mkdir(mode=0o700)  # root's alone: the user may not enter it, even though the daemon may
    inner = tmp_path / "open"
    inner.mkdir(mode=0o777)
    state, _ = run_and_log(site, site.alice, "pwd", extra=("--cwd", str(inner)))
    assert state == "failed"
    tmp_path.chmod(0o755)
    state, lines = run_and_log(site, site.alice, "pwd", extra=("--cwd", str(inner)))
    assert (state, lines) == ("completed", [str(inner)])


@pytest.mark.parametrize("how", ["setpriv", "popen"])
def test_the_executor_switches_users_either_way(site: Site, how: str) -> None:
    """Both ways of starting a command as another user (setpriv, or Popen where there is none) give
    the user's ids and environment, enter the working folder as the user, and close the daemon's fds."""
    from procpoold.engines import AttemptSpec, Outcome
    from procpoold.engines.commands import CommandExecutor, Switcher
    from procpoold.identity import identity_of
    from procpoold.loop import EventLoop

    if how == "setpriv" and Switcher.find() is None:
        pytest.skip("no setpriv or env here")
    lines: list[str] = []
    outcomes: list[Outcome] = []

    class Events:
        def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
            pass

        def attempt_finished(self, outcome: Outcome) -> None:
            outcomes.append(outcome)

        def attempt_log(
            self, attempt_id: str, stream: str, level: int, message: str, fields: object = None
        ) -> None:
            lines.append(message)

    leak = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leak, True)  # as if inherited from whoever started the daemon
    loop = EventLoop()
    executor = CommandExecutor(1, switcher="find" if how == "setpriv" else None)
    executor.start(loop, Events())  # type: ignore[arg-type]
    try:
        identity_of.cache_clear()  # uids are reused by the next test's users (the daemon: at reload)
        user = identity_of(site.alice.uid)
        folder = site.daemon.dir
        script = 'id -u; id -G; echo "$USER $HOME"; pwd; ls /proc/self/fd | tr "\\n" " "; echo; echo "$ODD"'
        spec = AttemptSpec(
            "a#1", "1", "j", "1.0", "t", 1, "cmd", cmd=["sh", "-c", script], cwd=str(folder), user=user,
            env={"-u": "HOME", "ODD": "a=b -i\nline two"},  # names and values env(1) must not misread
        )
        executor.submit(spec)
        deadline = time.monotonic() + 20
        while not outcomes and time.monotonic() < deadline:
            loop.run_once(100)
    finally:
        os.close(leak)
        loop.close()
    assert outcomes and outcomes[0].status == "completed", (outcomes, lines)
    assert lines[0] == str(site.alice.uid)
    assert {int(g) for g in lines[1].split()} == set(site.alice.groups)
    assert lines[2] == f"{site.alice.name} {user.home}"
    assert lines[3] == str(folder)
    # 0, 1, 2 and the folder ls itself opens (the lowest free number)
    assert sorted(int(fd) for fd in lines[4].split()) == [0, 1, 2, 3], lines[4]
    assert lines[5:7] == ["a=b -i", "line two"]


def test_a_missing_program_cannot_start_and_a_relative_one_runs_from_the_users_folder(site: Site) -> None:
    folder = site.daemon.dir / "work"
    folder.mkdir(mode=0o755)
    script = folder / "hello.sh"
    script.write_text("#!/bin/sh\nid -u\n")
    script.chmod(0o755)
    state, lines = run_and_log(site, site.alice, "./hello.sh", extra=("--cwd", str(folder)))
    assert (state, lines) == ("completed", [str(site.alice.uid)])
    job_id = procctl(site, site.alice, "run", "--", "no-such-program-pp").stdout.strip()
    done = json.loads(procctl(site, site.alice, "--json", "wait", job_id, check=False).stdout)
    task = done["status"]["tasks"][0]
    assert task["state"] == "failed"
    assert "cannot start 'no-such-program-pp'" in json.dumps(task), task


PROBE_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void probe(void) {
    if (geteuid() == 0) {  /* loaded into a process that still runs as root */
        int fd = open(MARK, O_WRONLY | O_CREAT, 0644);
        if (fd >= 0) close(fd);
    }
}
"""


def test_the_jobs_environment_never_reaches_a_process_that_runs_as_root(site: Site) -> None:
    """A job's env (LD_PRELOAD here) applies only once the command runs as its user: a library it
    preloads never runs with the daemon's privileges."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the probe library")
    work = site.daemon.dir / "probe"
    work.mkdir(mode=0o755)
    mark = work / "ran-as-root"
    source = work / "probe.c"
    source.write_text(PROBE_C.replace("MARK", json.dumps(str(mark))))
    library = work / "probe.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    preload = ("--env", f"LD_PRELOAD={library}")
    state, lines = run_and_log(site, site.alice, "sh", "-c", "id -u", extra=preload)
    assert (state, lines) == ("completed", [str(site.alice.uid)])
    assert not mark.exists(), "the job's LD_PRELOAD ran in a process with root's privileges"

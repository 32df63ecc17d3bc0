"""The command executor's own edge cases: a command killed by a signal that has no name in
Python's ``signal.Signals`` (the real-time ones) still finishes its attempt."""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

from procpoold.engines import AttemptSpec, Outcome
from procpoold.engines.commands import CommandExecutor, Switcher
from procpoold.identity import Identity
from procpoold.loop import EventLoop


class Events:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        pass

    def attempt_finished(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def attempt_log(
        self, attempt_id: str, stream: str, level: int, message: str, fields: object = None
    ) -> None:
        pass


def run(cmd: list[str], cwd: str | None = None) -> list[Outcome]:
    loop = EventLoop()
    events = Events()
    executor = CommandExecutor(1, switcher=None)
    executor.start(loop, events)  # type: ignore[arg-type]
    try:
        executor.submit(AttemptSpec("a#1", "1", "j", "1.0", "t", 1, "cmd", cmd=cmd, cwd=cwd))
        deadline = time.monotonic() + 20
        while not events.outcomes and time.monotonic() < deadline:
            loop.run_once(100)
    finally:
        executor.shutdown(0)
        loop.close()
    return events.outcomes


def test_a_command_killed_by_a_realtime_signal_fails_its_attempt() -> None:
    outcomes = run(["sh", "-c", "kill -40 $$"])
    assert len(outcomes) == 1, "the attempt never finished"
    outcome = outcomes[0]
    assert outcome.status == "failed" and outcome.exit_code == -40
    assert outcome.error is not None and "signal 40" in outcome.error.message


def _ignored_and_blocked(lines: list[str]) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


def test_a_command_starts_with_sigpipe_at_its_default_like_any_program() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (``yes | head`` would
    print 'Broken pipe' and a writer to a closed pipe would go on), whichever way it starts."""
    lines: list[str] = []
    loop = EventLoop()
    events = Events()
    events.attempt_log = lambda attempt_id, stream, level, message, fields=None: lines.append(message)  # type: ignore[method-assign]
    executor = CommandExecutor(1, switcher=None)
    executor.start(loop, events)  # type: ignore[arg-type]
    script = "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -n1"
    try:
        for i, cwd in enumerate((None, "/")):  # posix_spawn, and Popen for a working folder
            cmd = ["sh", "-c", script]
            executor.submit(AttemptSpec(f"a#{i}", "1", "j", "1.0", "t", 1, "cmd", cmd=cmd, cwd=cwd))
            deadline = time.monotonic() + 20
            while len(events.outcomes) <= i and time.monotonic() < deadline:
                loop.run_once(100)
            assert events.outcomes[i].status == "completed", lines
            ignored, blocked = _ignored_and_blocked(lines)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                assert not ignored & (1 << (signum - 1)), (cwd, hex(ignored))
            assert not blocked & (1 << (signal.SIGPIPE - 1)), (cwd, hex(blocked))
            assert not any("Broken pipe" in line for line in lines), lines
            lines.clear()
    finally:
        executor.shutdown(0)
        loop.close()


def test_the_jobs_environment_is_not_in_the_argv_of_the_user_switch() -> None:
    """Every user may read every process's command line (/proc/PID/cmdline): a job's environment
    (an API token) must not be in the argv of ``setpriv`` and ``env`` while they start the command.
    What a process that still runs as root would read (the loader's, the C library's locale and
    time zone variables) stays out of its environment and is set by ``env``, as the user."""
    switcher = Switcher("/usr/bin/setpriv", "/usr/bin/env")
    user = Identity(1234, 1234, (1234, 27), "alice", "/home/alice")
    env = {
        "API_TOKEN": "s3cret-value",
        "-u": "HOME",
        "PATH": "/usr/bin",
        "LD_PRELOAD": "/home/alice/lib.so",
        "GLIBC_TUNABLES": "glibc.malloc.check=3",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "/home/alice/tz",
        "GCONV_PATH": "/home/alice/gconv",
    }
    argv, spawn_env = switcher.command(user, env, ["-odd", "arg"])
    assert not any("s3cret-value" in a or a.startswith("-u=") for a in argv), argv
    assert spawn_env["API_TOKEN"] == "s3cret-value" and spawn_env["-u"] == "HOME"
    assert spawn_env["PATH"] == "/usr/bin"
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "LANG", "LC_ALL", "TZ", "GCONV_PATH"):
        assert name not in spawn_env
        assert f"{name}={env[name]}" in argv
    assert argv[:5] == ["/usr/bin/setpriv", "--reuid=1234", "--regid=1234", "--groups=1234,27", "--"]
    assert argv[5:7] == ["/usr/bin/env", "--"] and argv[-2:] == ["-odd", "arg"]


def test_a_command_whose_pidfd_cannot_be_opened_is_not_left_running(monkeypatch: Any) -> None:
    """Out of fds just after the spawn (pidfd_open: EMFILE): the attempt fails as 'cannot start',
    and the command it started is killed and reaped, its pipes closed (it was left running, untracked)."""
    marker = "procpool-review-orphan-check"
    real = os.pidfd_open
    calls: list[int] = []

    def no_fd(pid: int, flags: int = 0) -> int:
        calls.append(pid)
        raise OSError(errno.EMFILE, "Too many open files")

    before = set(os.listdir("/proc/self/fd"))
    for cwd in (None, "/"):  # posix_spawn, and Popen
        calls.clear()
        monkeypatch.setattr(os, "pidfd_open", no_fd)
        try:
            outcomes = run(["sh", "-c", f"exec sleep 30 # {marker}"], cwd=cwd)
        finally:
            monkeypatch.setattr(os, "pidfd_open", real)
        assert [o.status for o in outcomes] == ["failed"], outcomes
        assert calls, "pidfd_open was not called"
        pid = calls[0]
        assert not os.path.exists(f"/proc/{pid}"), f"the command (pid {pid}) was left running or unreaped"
    assert len(os.listdir("/proc/self/fd")) <= len(before), "pipes were left open"


def test_a_program_is_looked_up_on_the_path_as_posix_spawnp_would(tmp_path: Any, monkeypatch: Any) -> None:
    """The daemon searches the PATH itself (a failed execve per folder would cost the daemon
    time in the vfork child): the first file it may execute that is not a folder, the current
    folder for an empty entry, None when there is none (posix_spawnp then fails as before)."""
    from procpoold.engines.commands import _search_path

    folders = [tmp_path / name for name in ("plain", "dir", "exe", "later")]
    for folder in folders:
        folder.mkdir()
    (folders[0] / "prog").write_text("#!/bin/sh\n")  # not executable
    (folders[0] / "prog").chmod(0o644)
    (folders[1] / "prog").mkdir()  # a folder of that name
    for folder in folders[2:]:
        (folder / "prog").write_text("#!/bin/sh\n")
        (folder / "prog").chmod(0o755)
    path = ":".join(map(str, folders))
    if os.geteuid() == 0:  # root may execute any file with an x bit: none here
        assert not os.access(folders[0] / "prog", os.X_OK)
    assert _search_path("prog", path) == f"{folders[2]}/prog"
    assert _search_path("missing", path) is None
    assert _search_path("prog", None) is None
    monkeypatch.chdir(folders[3])
    assert _search_path("prog", f"{folders[0]}::{folders[2]}") == "./prog"
    outcomes = run(["true"])
    assert [o.status for o in outcomes] == ["completed"]
    outcomes = run(["no-such-program-anywhere"])
    assert outcomes[0].status == "failed" and outcomes[0].error is not None
    assert "no-such-program-anywhere" in outcomes[0].error.message

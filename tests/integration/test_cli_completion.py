"""Shell completion of job and task ids, asked of a real daemon (the shell's call of procctl, as
the script of ``procctl completion bash`` makes it)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.daemon import DaemonProcess


def complete(daemon: DaemonProcess, words: str, socket_in: str = "env") -> list[str]:
    # (the daemon's answer may take more than the interactive half second on a loaded machine)
    env = {**os.environ, "_PROCCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1), "PROCPOOL_COMPLETE_TIMEOUT": "30"}
    if socket_in == "env":
        env["PROCPOOL_SOCKET"] = str(daemon.socket)
    out = subprocess.run([sys.executable, "-m", "procpool.cli"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_job_and_task_ids_complete_from_the_daemon(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        for n in range(12):
            client.submit({"name": f"j{n}", "root": {"sequential": [
                {"name": "a", "cmd": ["true"]}, {"name": "b", "cmd": ["true"]}]}})
        client.wait("12", timeout=30)
    assert complete(daemon, "procctl wait 1") == ["plain,1", "plain,10", "plain,11", "plain,12"]
    assert sorted(complete(daemon, "procctl status ")) == sorted(f"plain,{n}" for n in range(1, 13))
    assert complete(daemon, "procctl logs 12.") == ["plain,12.0", "plain,12.1"]
    # --socket on the command line (before or after the subcommand) is where the ids come from
    socket = str(daemon.socket)
    assert complete(daemon, f"procctl --socket {socket} cancel 3", socket_in="args") == ["plain,3"]
    assert complete(daemon, f"procctl cancel --socket {socket} 3", socket_in="args") == ["plain,3"]

"""Faults are the system's, not the task's: interruptions, the state directory's lock, a full disk,
a log target that stops accepting records."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import sh, tasks_by_name, wait_task_state


def gated_job(name: str, gate: Path, marks: Path) -> dict[str, object]:
    """One task with no retries that runs until ``gate`` exists."""
    return {
        "name": name,
        "root": {"name": "slow", **sh(f"until [ -e {gate} ]; do sleep 0.01; done; echo {name} >> {marks}")},
    }


def test_daemon_crashes_use_no_retry_up_to_max_interruptions(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_interruptions = 3\n")
    marks = tmp_path / "marks"
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    d = DaemonProcess(extra_args=["--config", str(cfg)])
    try:
        d.start()
        with d.client() as client:
            a = client.submit(gated_job("a", gate_a, marks))["id"]
            b = client.submit(gated_job("b", gate_b, marks))["id"]
        for _round in range(3):  # kill -9 of the daemon mid-attempt, three times
            with d.client() as client:
                wait_task_state(client, a, "slow")
                wait_task_state(client, b, "slow")
            d.crash()
            d.restart()
        gate_a.touch()
        with d.client() as client:
            status = client.wait(a, timeout=30)["status"]
            assert status["job"]["state"] == "completed"
            slow = tasks_by_name(status)["slow"]
            assert [h["status"] for h in slow["attempt_history"]] == ["interrupted"] * 3 + ["completed"]
            wait_task_state(client, b, "slow")
        d.crash()  # the fourth interruption of b: one too many
        d.restart()
        with d.client() as client:
            status = client.wait(b, timeout=30)["status"]
        slow = tasks_by_name(status)["slow"]
        assert status["job"]["state"] == "failed"
        assert slow["error"]["message"] == "interrupted 4 times by daemon restarts; max_interruptions = 3"
        assert marks.read_text().split() == ["a"]
        d.stop()
    finally:
        d.cleanup()


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first = DaemonProcess()
    second = DaemonProcess()  # its own socket
    try:
        first.start()
        cmd = second.command()
        cmd[cmd.index("--state-dir") + 1] = str(first.state_dir)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert run.returncode == 2
        lines = run.stderr.strip().splitlines()
        assert lines[0].startswith("procpoold: error: another procpoold is already running on the state "
                                   f"directory {first.state_dir} (pid {first.pid}, socket {first.socket}")
        assert lines[1].startswith("hint: stop the other procpoold first")
        assert "Traceback" not in run.stderr and not second.socket.exists()
        with first.client() as client:  # the first one is untouched
            assert client.ping()["pid"] == first.pid
            assert client.submit({"name": "ok", "root": sh("true")})["id"] == "1"
        first.stop()
        second.start()  # the lock went with the first daemon
        second.stop()
    finally:
        first.cleanup()
        second.cleanup()


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` for the test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_starting_on_a_full_disk_is_one_line_and_a_hint(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "fs") as fs:
        fill(fs)
        d = DaemonProcess()
        d.state_dir = fs / "state"
        try:
            run = subprocess.run(d.command(), capture_output=True, text=True, timeout=60)
        finally:
            d.cleanup()
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 2, run.stderr
        assert lines[0].startswith(f"procpoold: error: state file {fs / 'state' / 'state.db'}")
        assert "the disk is full" in lines[0]
        assert lines[1].startswith("hint: free space on the file system of")


def test_a_full_disk_while_running_keeps_its_own_message(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "fs", size="4m") as fs:
        d = DaemonProcess()
        d.state_dir = fs / "state"
        try:
            d.start()
            fill(fs)
            big = "x" * 3000
            with d.client() as client, contextlib.suppress(Exception):
                for _ in range(200):  # until a commit fails (the first may fit in a free page)
                    client.submit({"name": "j", "root": {"name": "t", "cmd": ["true", big]}})
            assert d.wait(30) == 2
            log = d.log()
            assert "cannot write the state file" in log and "the disk is full" in log
            assert "cannot rollback" not in log
        finally:
            d.cleanup()

"""Faults are the system's, not the task's: interruptions, the state directory's lock, a full disk,
a log target that stops accepting records."""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import sh, tasks_by_name, wait_task_state
from tests.support.waiting import wait_until


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


def error_lines(stderr: str) -> list[str]:
    """What a daemon that cannot start says, without the log records it wrote before (at
    ``--log-level debug``, as the tests run it: the journal forwarder writes those before it
    exits, where the old writer thread lost them with the process)."""
    return [line for line in stderr.strip().splitlines()
            if not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ", line)]


def test_kill_9_at_random_moments_loses_nothing_and_reruns_nothing_completed(tmp_path: Path) -> None:
    """30 rounds: start, submit a job of many short tasks, kill -9 the daemon (and everything it
    started) at a random moment while tasks complete. Then every acknowledged job finishes with
    every task completed, and each task's completing attempt ran exactly once, with no attempt
    after it: what the write-ahead log held was replayed, a torn last record cut."""
    rng = random.Random(20261206)
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_interruptions = 1000\n")  # every crash interrupts attempts: never fail them
    marks = tmp_path / "marks"
    marks.mkdir()
    d = DaemonProcess(extra_args=["--config", str(cfg), "--workers", "2"])
    acked: list[str] = []
    try:
        for round_ in range(30):
            d.start()
            with d.client() as client:
                doc = {
                    "name": f"r{round_}",
                    "key": f"round-{round_}",
                    "root": {
                        "concurrent": [
                            sh(f'echo "$PROCPOOL_ATTEMPT" >> {marks}/"$PROCPOOL_TASK_ID"', name=f"t{i}")
                            for i in range(200)
                        ]
                    },
                }
                acked.append(client.submit(doc)["id"])
            time.sleep(rng.uniform(0.02, 0.4))
            d.crash()
        d.start()
        reran = 0
        with d.client() as client:
            for job_id in acked:
                result = client.wait(job_id, timeout=120)
                assert result["finished"] and result["state"] == "completed", result
                tasks = result["status"]["tasks"]
                assert len(tasks) == 200
                for t in tasks:
                    assert t["state"] == "completed", t
                    attempts = (marks / t["id"]).read_text().split()
                    completing = str(t["attempts"])
                    assert attempts.count(completing) == 1, (t, attempts)
                    assert all(int(a) <= int(completing) for a in attempts), (t, attempts)
                    reran += t["attempts"] > 1
        assert reran >= 10  # the crashes did interrupt attempts (else this test proves little)
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
        lines = error_lines(run.stderr)
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
        lines = error_lines(run.stderr)
        assert len(lines) == 2, run.stderr
        assert lines[0].startswith(f"procpoold: error: state file {fs / 'state' / 'state.db'}")
        assert "the disk is full" in lines[0]
        assert lines[1].startswith("hint: free space on the file system of")


def test_recovering_on_a_full_disk_is_one_line_and_a_hint(tmp_path: Path) -> None:
    """The store opens, but recovery's first commit (the interrupted attempt) finds the disk full."""
    with tiny_filesystem(tmp_path / "fs", size="4m") as fs:
        d = DaemonProcess()
        d.state_dir = fs / "state"
        try:
            d.start()
            with d.client() as client:
                job = client.submit({"name": "j", "root": {"name": "t", **sh("sleep 100")}})["id"]
                wait_task_state(client, job, "t")
            d.crash()
            fill(fs)
            run = subprocess.run(d.command(), capture_output=True, text=True, timeout=60)
        finally:
            d.cleanup()
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        error, hint = run.stderr.strip().splitlines()[-2:]
        assert error.startswith("procpoold: error: cannot write the state file")
        assert "the disk is full" in error
        assert hint.startswith("hint: free space on the file system of")


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


def test_a_log_target_that_accepts_nothing_stops_pausing_tasks(tmp_path: Path) -> None:
    """stderr is a pipe that nobody reads: after log_put_timeout the flooding task is no longer
    paused (its records are dropped and counted), status says so, and once the pipe is read again
    one record says for how long and how many records were dropped."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("log_put_timeout = 1.0\n")
    d = DaemonProcess(extra_args=["--config", str(cfg), "--log-target", "stderr", "--log-queue-size", "100"])
    read_end, write_end = os.pipe()
    out = bytearray()
    reader: threading.Thread | None = None
    try:
        d.proc = subprocess.Popen(
            d.command(), stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end,
            env={**os.environ, "PROCPOOL_TEST_TAG": d.tag}, start_new_session=True,
        )
        os.close(write_end)
        write_end = -1
        with d.client() as client:
            wait_until(lambda: _pings(d), what="the daemon to answer")
            job = client.submit({"name": "flood", "root": sh("seq 1 200000")})["id"]
            status = client.wait(job, timeout=60)["status"]  # not paused for ever
            assert status["job"]["state"] == "completed"
            logging_stats = client.status()["logging"]
            assert logging_stats["stalled"] and logging_stats["stalls"] >= 1 and logging_stats["dropped"] > 0
        shown = d.procctl("status")
        assert "STALLED: the target accepted no record for" in shown.stdout, shown.stdout + shown.stderr

        def drain() -> None:
            while chunk := os.read(read_end, 1 << 16):
                out.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()  # the pipe is read again: the writer recovers
        note = re.compile(rb"stderr accepted no record for (\d+\.\d) s; ([\d,]+) records dropped")
        found = wait_until(lambda: note.search(bytes(out)), what="the stall's record")
        assert float(found.group(1)) >= 1.0
        with d.client() as client:
            assert not client.status()["logging"]["stalled"]
        d.stop()
    finally:
        d.cleanup()
        if write_end >= 0:
            os.close(write_end)
        if reader is not None:
            reader.join(10)
        os.close(read_end)


def _pings(d: DaemonProcess) -> bool:
    try:
        with d.client(timeout=1) as client:
            client.ping()
        return True
    except Exception:
        return False

"""Without journald, each job's log is kept in a file of the state directory: ``procctl logs`` shows
all of it, also after a restart; its cap keeps a flood off the disk; retention and ``clean`` remove it;
another user reads none of it; binary output and huge lines are kept."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.jobs import run_job, sh
from tests.support.users import procctl_as, throwaway
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-level", "info"),
              pytest.mark.timeout(240)]

CAP = 64 * 1024


def stdout_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [line.split(" stdout: ", 1)[1] for line in out.stdout.splitlines() if " stdout: " in line]


def logs_json(daemon: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    out = daemon.procctl("logs", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def log_file(daemon: DaemonProcess, job: str) -> Path:
    return daemon.state_dir / "logs" / f"{job}.log"


def test_all_100000_lines_are_shown_also_after_a_restart(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"name": "seq", "cmd": ["seq", "1", "100000"]}, name="seq")
    assert status["job"]["state"] == "completed"
    want = [str(i) for i in range(1, 100_001)]
    assert stdout_lines(daemon.procctl("logs", "1")) == want
    assert stdout_lines(daemon.procctl("logs", "1.0")) == want  # a task's
    assert stdout_lines(daemon.procctl("logs", "1/seq", "-n", "3")) == ["99999", "100000"]  # (+ "completed")
    # The daemon's files: its own, private.
    path = log_file(daemon, "1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    daemon.stop()
    daemon.restart()
    out = daemon.procctl("logs", "1")
    assert stdout_lines(out) == want
    assert "no longer kept" not in out.stderr
    assert out.stdout.splitlines()[-1].endswith('job 1 "seq" completed')
    deep = daemon.procctl("logs", "-n", "50000", "1.0")  # further back than one page
    assert stdout_lines(deep) == want[-49_999:]


def test_what_was_written_survives_a_crash_of_the_daemon(daemon: DaemonProcess) -> None:
    run_job(daemon, {"name": "seq", "cmd": ["seq", "1", "20000"]})
    want = [str(i) for i in range(1, 20_001)]
    assert stdout_lines(daemon.procctl("logs", "1")) == want  # (a read waits until it is written)
    daemon.crash()  # SIGKILL, no flush, no close
    daemon.restart()
    assert stdout_lines(daemon.procctl("logs", "1")) == want
    run_job(daemon, sh("echo after"))  # the next job's file, next to it
    assert stdout_lines(daemon.procctl("logs", "2")) == ["after"]


def test_follow_reads_every_line_once_across_pages(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job = client.submit({"name": "slowseq", "root": sh("seq 1 30000; sleep 0.5; seq 30001 60000")})["id"]
    argv = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket), "logs", "-f", job]
    follower = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert stdout_lines(follower) == [str(i) for i in range(1, 60_001)]
    assert "completed" in follower.stdout.splitlines()[-1]


@pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-level", "info",
                         "--log-job-max-bytes", str(CAP))
def test_a_flood_hits_the_cap_not_the_disk_and_logs_says_what_was_dropped(daemon: DaemonProcess) -> None:
    # About 40 MB of output from a task of a hostile user.
    writer = "import sys\nw = sys.stdout.write\nfor i in range(2_000_000): w(f'line {i} ' + 'x' * 10 + '\\n')"
    flood = [sys.executable, "-c", writer]
    status = run_job(daemon, {"name": "flood", "cmd": flood}, timeout=180)
    assert status["job"]["state"] == "completed"
    size = log_file(daemon, "1").stat().st_size
    assert CAP - 200 < size <= 2 * CAP, size
    out = daemon.procctl("logs", "1")
    kept = stdout_lines(out)
    assert kept[0] == "line 0 " + "x" * 10 and 500 < len(kept) < 2000
    assert kept == [f"line {i} " + "x" * 10 for i in range(len(kept))]  # the start, whole
    text = out.stdout
    assert "reached log_job_max_bytes (65,536 bytes): its further output is not kept" in text
    dropped = 2_000_000 - len(kept)
    # The last records: the job's end, then what its cap dropped.
    assert text.splitlines()[-2].endswith('job 1 "test" completed')
    assert f"{dropped:,} record(s) of this job were not kept (" in text.splitlines()[-1]
    assert 'task "flood" completed' in text
    assert "log reached its cap (log_job_max_bytes = 65,536 bytes)" in out.stderr
    # The daemon still writes every line to its own log target (stderr here): the cap is the file's.
    with daemon.client() as client:
        files = client.status()["logging"]["files"]
    assert files["dropped"] == dropped and files["max_job_bytes"] == CAP


def test_clean_removes_a_jobs_file_and_a_start_removes_strays(daemon: DaemonProcess) -> None:
    run_job(daemon, sh("echo one"))
    run_job(daemon, sh("echo two"))
    assert log_file(daemon, "1").exists() and log_file(daemon, "2").exists()
    out = daemon.procctl("clean")
    assert out.returncode == 0, out.stderr
    assert not log_file(daemon, "1").exists() and not log_file(daemon, "2").exists()
    daemon.stop()
    stray = log_file(daemon, "77")
    stray.write_bytes(b"PPLOG01\n")  # a job the daemon does not have (a crash between removals)
    daemon.restart()
    assert not stray.exists()
    assert "removed the log files of 1 job(s)" in daemon.log()


def test_retention_removes_the_files_of_pruned_jobs(tmp_path: Path) -> None:
    config = tmp_path / "procpoold.toml"
    config.write_text("retention_count = 2\n")
    with serving(DaemonProcess(extra_args=["--workers", "2", "--log-target", "stderr", "--config",
                                           str(config)])) as daemon:
        daemon.start()
        for i in range(4):
            run_job(daemon, sh(f"echo job {i}"))
        # (pruned after the job's end is committed: a moment after the wait's answer)
        wait_until(lambda: sorted(p.name for p in (daemon.state_dir / "logs").iterdir()),
                   lambda names: names == ["3.log", "4.log"], what="the files of the two newest jobs only")
        assert stdout_lines(daemon.procctl("logs", "4")) == ["job 3"]


def test_binary_output_and_huge_lines_are_kept(daemon: DaemonProcess) -> None:
    script = ("import sys, os\nb = sys.stdout.buffer\nb.write(bytes(range(256)) + b'\\n')\n"
              "b.write(b'\\xff\\xfe\\x00bad utf-8\\n')\nb.write(b'z' * 1_000_000)\n")
    status = run_job(daemon, {"name": "bin", "cmd": [sys.executable, "-c", script]})
    assert status["job"]["state"] == "completed"
    out = [r for r in logs_json(daemon, "1.0") if r["stream"] == "stdout"]
    huge = [r["message"] for r in out if r["message"].startswith("z")]
    assert "".join(huge) == "z" * 1_000_000 and len(huge) > 1
    assert any("bad utf-8" in r["message"] for r in out)
    assert len(out) >= 2 + len(huge)
    # Every page of the reply stays below max_message_size, and -n pages backwards through them.
    last = [r for r in logs_json(daemon, "-n", "70", "1.0") if r["stream"] == "stdout"]
    assert "".join(r["message"] for r in last if r["message"].startswith("z")) == "z" * 1_000_000


def test_another_users_job_log_is_theirs_alone() -> None:
    with throwaway({"alice": ["sock"], "bob": ["sock"]}, ["sock"]) as (users, groups):
        daemon = DaemonProcess(extra_args=["--workers", "2", "--group", groups["sock"], "--log-target",
                                           "stderr"])
        os.chmod(daemon.dir, 0o711)
        with serving(daemon):
            daemon.start()
            job = {"name": "alice", "cwd": "/", "root": {"name": "count", "cmd": ["seq", "1", "20000"]}}
            alice, bob = users["alice"].name, users["bob"].name
            out = procctl_as(alice, str(daemon.socket), "submit", "-", input=json.dumps(job))
            assert out.returncode == 0, out.stderr
            job_id = out.stdout.strip()
            out = procctl_as(alice, str(daemon.socket), "wait", job_id)
            assert out.returncode == 0, out.stderr
            mine = procctl_as(alice, str(daemon.socket), "logs", job_id)
            assert stdout_lines(mine) == [str(i) for i in range(1, 20_001)]
            theirs = procctl_as(bob, str(daemon.socket), "logs", job_id)
            assert theirs.returncode == 4 and "may read its logs" in theirs.stderr
            assert " stdout: " not in theirs.stdout
            # The file is the daemon's (its user, mode 0600, in a 0700 folder): no task reads it.
            path = log_file(daemon, job_id)
            assert path.stat().st_uid == os.geteuid() and stat.S_IMODE(path.stat().st_mode) == 0o600
            peek = subprocess.run(["runuser", "-u", alice, "--", "cat", str(path)], capture_output=True,
                                  timeout=30)
            assert peek.returncode != 0 and not peek.stdout

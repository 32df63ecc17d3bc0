"""The daemon writing to a real journald, and ``procctl logs`` reading it back.

The host has no journald, so the test starts one: ``systemd-journald`` in a private mount
namespace (``unshare -m``) with tmpfs over /run/systemd, /run/log and /var/log/journal, so its
sockets and files exist only there and vanish with it. The daemon and procctl join that namespace
with ``nsenter -m``; the control socket lives under /tmp, which the namespace shares.
Needs root, unshare/nsenter and systemd-journald; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.jobs import run_job
from tests.support.waiting import wait_until

JOB_FINISHED = "f86bc8c11a0e44ab8beb0fd928f496ad"
JOURNALD = next((p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
                 if os.path.exists(p)), None)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or JOURNALD is None or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, unshare, nsenter and systemd-journald")

SETUP = """set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/journal
mount -t tmpfs tmpfs /run/log
mkdir -p /run/log/journal
mount -t tmpfs tmpfs /var/log/journal
exec "$0"
"""


class Journald:
    """A systemd-journald alone in its own mount namespace."""

    def __init__(self, log: Path) -> None:
        assert JOURNALD is not None
        with open(log, "wb") as out:
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", SETUP, JOURNALD]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        self.pid = self.proc.pid  # unshare and sh exec: this pid ends up being journald
        wait_until(lambda: self.proc.poll() is not None
                   or os.path.exists(f"/proc/{self.pid}/root/run/systemd/journal/socket"),
                   what="journald's socket")
        assert self.proc.poll() is None, log.read_text()

    def enter(self) -> list[str]:
        return ["nsenter", "-m", "-t", str(self.pid), "--"]

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), *argv], capture_output=True, text=True, timeout=60, **kw)

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        self.run("journalctl", "--sync")
        out = self.run("journalctl", "--no-pager", "-o", "json", *matches)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class NamespacedDaemon(DaemonProcess):
    """procpoold inside journald's mount namespace, told to log to the journal."""

    def __init__(self, jd: Journald, **kw: Any) -> None:
        super().__init__(**kw)
        self.jd = jd

    def command(self) -> list[str]:
        return [*self.jd.enter(), *super().command(), "--log-target", "journal"]

    def procctl_ns(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.jd.run(sys.executable, "-m", "procpool.cli", "--socket", str(self.socket), *args)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    jd = Journald(tmp_path / "journald.log")
    try:
        yield jd
    finally:
        jd.stop()


@pytest.fixture
def jdaemon(journald: Journald) -> Iterator[NamespacedDaemon]:
    with serving(NamespacedDaemon(journald, extra_args=["--workers", "2"]).start()) as d:
        yield d


def test_task_output_reaches_journald_with_all_fields(jdaemon: NamespacedDaemon, journald: Journald) -> None:
    script = "echo to-journal; echo warn-journal >&2; exit 2"
    status = run_job(jdaemon, {"name": "speaker", "cmd": ["sh", "-c", script]}, name="jtest")
    assert status["job"]["state"] == "failed"
    assert "to-journal" not in jdaemon.log()  # it went to the journal, not to stderr
    entries = wait_until(lambda: journald.entries("PROCPOOL_JOB_ID=1"),
                         lambda es: any(e.get("MESSAGE_ID") == JOB_FINISHED for e in es),
                         what="the job's records in the journal")
    [out] = [e for e in entries if e["MESSAGE"] == "to-journal"]
    assert out["SYSLOG_IDENTIFIER"] == "procpoold" and out["PRIORITY"] == "6"
    # Written by the daemon's journal forwarder, a child process: journald's _PID is its pid.
    with jdaemon.client() as client:
        forwarder = client.status()["logging"]["forwarder_pid"]
    assert out["_TRANSPORT"] == "journal" and out["_PID"] == str(forwarder) != str(jdaemon.pid)
    names = ("JOB_ID", "JOB_NAME", "TASK_ID", "TASK_NAME", "ATTEMPT", "STREAM", "USER", "UID")
    me = (pwd.getpwuid(os.getuid()).pw_name, str(os.getuid()))
    assert [out[f"PROCPOOL_{n}"] for n in names] == ["1", "jtest", "1.0", "speaker", "1", "stdout", *me]
    # Every record of the job names its user: submitted, tasks, finished.
    assert all((e.get("PROCPOOL_USER"), e.get("PROCPOOL_UID")) == me for e in entries), entries
    assert int(out["PROCPOOL_WORKER_PID"]) > 0
    [err] = [e for e in entries if e["MESSAGE"] == "warn-journal"]
    assert (err["PRIORITY"], err["PROCPOOL_STREAM"]) == ("4", "stderr")
    # Lifecycle records: MESSAGE_ID, code location.
    failures = journald.entries("MESSAGE_ID=a0f41f512d3849a4a3ce90af32e1b3f2")
    assert [e["PROCPOOL_TASK_ID"] for e in failures] == ["1.0"]
    assert failures[0]["CODE_FILE"].endswith("scheduler.py")
    assert failures[0]["CODE_FUNC"] and failures[0]["CODE_LINE"].isdigit()
    assert failures[0]["PRIORITY"] == "3"  # ERROR: a failed task's record (with its traceback)
    ready = journald.entries("MESSAGE_ID=b7e4a2f0c41d4a0e9a6f2d8c3e5b1a70")
    assert len(ready) == 1 and ready[0]["SYSLOG_IDENTIFIER"] == "procpoold"


def test_procctl_logs_reads_the_journal(jdaemon: NamespacedDaemon, journald: Journald) -> None:
    run_job(jdaemon, {"name": "a", "cmd": ["sh", "-c", "echo one; echo two"]})
    wait_until(lambda: journald.entries("PROCPOOL_TASK_ID=1.0", "PROCPOOL_STREAM=stdout"),
               lambda es: len(es) == 2, what="both lines in the journal")
    out = jdaemon.procctl_ns("logs", "--json", "1.0")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["message"] for r in records if r["stream"] == "stdout"] == ["one", "two"]
    assert all(r["fields"]["SYSLOG_IDENTIFIER"] == "procpoold" for r in records)
    # From the host namespace there is no journal to read: procctl says so and shows the daemon's tail.
    host = jdaemon.procctl("logs", "1.0")
    assert host.returncode == 0 and "cannot read the journal" in host.stderr and "stdout: two" in host.stdout
    # -f in journal mode ends once the task has ended.
    with jdaemon.client() as client:
        job = client.submit({"name": "slow", "root": {"cmd": ["sh", "-c", "sleep 0.3; echo late"]}})["id"]
    started = time.monotonic()
    follow = jdaemon.procctl_ns("logs", "-f", job)
    assert follow.returncode == 0, follow.stderr
    assert "stdout: late" in follow.stdout and time.monotonic() - started < 20


def test_log_context_fields_are_journal_fields(jdaemon: NamespacedDaemon, journald: Journald) -> None:
    root = str(Path(__file__).resolve().parents[2])
    doc = {"name": "ctx", "log_fields": {"request_id": "r-77"}, "root": {"sequential": [
        {"name": "talk", "call": "tests.support.log_tasks:log_extra",
         "args": ["with context", {"step": "parse", "PROCPOOL_JOB_ID": "999"}]},
        {"name": "shout", "cmd": ["echo", "from the command"], "log_fields": {"request_id": "r-78"}},
    ]}}
    status = run_job(jdaemon, doc["root"], name="ctx", log_fields=doc["log_fields"], python_path=[root])
    assert status["job"]["state"] == "completed", status
    job = status["job"]["id"]
    [talk] = wait_until(lambda: journald.entries("PROCPOOL_X_REQUEST_ID=r-77"), lambda es: len(es) == 1,
                        what="the task's record, matched by its log context field in the journal")
    assert (talk["MESSAGE"], talk["PROCPOOL_X_STEP"]) == ("with context", "parse")
    assert talk["PROCPOOL_JOB_ID"] == job
    assert talk["PROCPOOL_X_PROCPOOL_JOB_ID"] == "999"
    [shout] = wait_until(lambda: journald.entries("PROCPOOL_X_REQUEST_ID=r-78"), lambda es: len(es) == 1,
                         what="the command's line, matched by its own log context field")
    assert shout["MESSAGE"] == "from the command" and shout["PROCPOOL_STREAM"] == "stdout"
    # procctl logs --field: a journal match.
    out = jdaemon.procctl_ns("logs", "--json", job, "--field", "step=parse")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["message"] for r in records] == ["with context"]
    assert records[0]["fields"]["PROCPOOL_X_REQUEST_ID"] == "r-77"

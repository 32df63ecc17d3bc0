"""The daemon's lifecycle: start, answer, stop on signals and on request, refuse a second instance."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from procpool import Client, DaemonUnreachable
from procpool.contract.version import __version__
from tests.support.daemon import DaemonProcess, ctrl_c_after_submit
from tests.support.waiting import wait_until


def test_ping_and_status_through_client_and_procctl(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        info = client.ping()
        assert info["version"] == __version__ and info["pid"] == daemon.pid
        summary = client.status()
    assert summary["workers"]["configured"] == 2
    assert summary["uptime"] >= 0 and "by_state" in summary["jobs"]
    out = daemon.procctl("ping")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"procpoold {__version__}")
    out = daemon.procctl("--json", "status")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["pid"] == daemon.pid and data["version"] == __version__
    out = daemon.procctl("status")
    assert "procpoold" in out.stdout and "workers" in out.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_gracefully(signum: int) -> None:
    with DaemonProcess() as d:
        d.signal(signum)
        assert d.wait() == 0
        d.assert_clean()
        assert "stopping: received SIG" in d.log()


def test_shutdown_request(daemon: DaemonProcess) -> None:
    out = daemon.procctl("shutdown")
    assert out.returncode == 0, out.stderr
    assert daemon.wait() == 0
    daemon.assert_clean()


def test_socket_and_folder_permissions(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(daemon.socket.stat().st_mode)
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o750


def test_group_option_sets_the_socket_group() -> None:
    import grp

    group = grp.getgrnam("daemon")  # present on every Debian system
    with DaemonProcess(extra_args=["--group", "daemon"]) as d:
        assert d.socket.stat().st_gid == group.gr_gid
        assert d.socket.parent.stat().st_gid == group.gr_gid


def test_second_daemon_on_the_same_socket_is_refused(daemon: DaemonProcess) -> None:
    second = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "another procpoold is already running on" in second.stderr
    assert str(daemon.socket) in second.stderr
    with daemon.client() as client:  # the first one is untouched
        assert client.ping()["pid"] == daemon.pid


def test_stale_socket_file_is_replaced() -> None:
    d = DaemonProcess()
    try:
        d.socket.parent.mkdir(parents=True)
        # A socket file that nobody listens on: what a crashed daemon leaves.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(d.socket))
        s.close()
        d.start()
        with d.client() as client:
            assert client.ping()["pid"] == d.pid
        wait_until(d.log, lambda log: "replacing the stale control socket" in log, what="the record")
        d.stop()
    finally:
        d.cleanup()


def test_unreachable_daemon_exit_code_and_message() -> None:
    path = f"/tmp/pp-nonexistent-{os.getpid()}/control.sock"
    out = subprocess.run(
        [sys.executable, "-m", "procpool.cli", "--socket", path, "ping"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"procctl: error: no procpoold is listening on {path}"
    assert lines[1].startswith("hint:") and "procpoold" in lines[1]
    assert "Traceback" not in out.stderr
    with pytest.raises(DaemonUnreachable):
        Client(path).ping()


def test_environment_socket_is_honoured_by_both_programs() -> None:
    d = DaemonProcess()
    sock = d.dir / "envsock" / "control.sock"
    d.env = {"PROCPOOL_SOCKET": str(sock)}
    d.socket = sock
    cmd_without_socket = [a for a in d.command() if a not in ("--socket", str(sock))]
    d.command = lambda: cmd_without_socket  # type: ignore[method-assign]
    try:
        d.start()
        out = subprocess.run(
            [sys.executable, "-m", "procpool.cli", "ping"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PROCPOOL_SOCKET": str(sock)},
        )
        assert out.returncode == 0, out.stderr
        d.stop()
    finally:
        d.cleanup()


def test_config_file_is_read_and_options_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text('[procpoold]\nworkers = 3\nlog_level = "info"\n')
    for extra, expected in ((["--config", str(cfg)], 3), (["--config", str(cfg), "--workers", "1"], 1)):
        with DaemonProcess(extra_args=extra) as d, d.client() as client:
            assert client.status()["workers"]["configured"] == expected


def test_bad_config_is_one_line_and_exit_2() -> None:
    d = DaemonProcess()
    try:
        cfg = d.dir / "bad.toml"
        cfg.write_text("workers = -1\n")
        out = subprocess.run([*d.command(), "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert out.stderr.startswith("procpoold: error: workers must be between 1 and 1024")
        assert "Traceback" not in out.stderr
    finally:
        d.cleanup()


def test_idle_daemon_uses_no_cpu(daemon: DaemonProcess) -> None:
    proc = psutil.Process(daemon.pid)
    with daemon.client() as client:
        client.ping()
    procs = [proc, *proc.children(recursive=True)]
    before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    time.sleep(2.0)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    # Blocking in poll() costs nothing; a 10 ms polling loop would burn far more than this.
    assert after - before < 0.05, f"idle daemon used {after - before:.3f}s of CPU in 2s"


def test_sighup_reloads_the_config_and_resizes_the_pool(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("workers = 2\n")
    with DaemonProcess(extra_args=["--config", str(cfg)]) as d, d.client() as client:
        cfg.write_text("workers = 3\nretention_count = 5\n")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while client.status()["workers"]["configured"] != 3:
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.02)
        assert client.ping()["pid"] == d.pid
        cfg.write_text("workers = [\n")  # broken: the running settings stay
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload failed, keeping the current settings" not in d.log():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.02)
        assert client.status()["workers"]["configured"] == 3


def test_a_reader_that_goes_away_is_not_an_error(daemon: DaemonProcess) -> None:
    """`procctl status | head -1`: procctl stops writing when the pipe closes, quietly, exit 0."""
    with daemon.client() as client:
        client.submit({"name": "j", "root": {"cmd": ["true"]}})
    r, w = os.pipe()
    os.close(r)  # the reader is gone before procctl writes: its first write fails with EPIPE
    try:
        cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket), "status"]
        proc = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_ctrl_c_stops_waiting_and_leaves_the_job_running(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Ctrl-C during ``submit --wait`` exits 130 and names the job, which goes on in the daemon (it
    used to print "Aborted!" and exit 1, like a failed job, with the job's id never told)."""
    job = tmp_path / "long.json"
    job.write_text(json.dumps({"name": "long", "root": {"cmd": ["sleep", "100"]}}))
    job_id, err = ctrl_c_after_submit(daemon, "submit", "--wait", str(job))
    assert f"stopped waiting; job {job_id} goes on in the daemon" in err
    assert "Aborted" not in err and "Traceback" not in err
    with daemon.client() as client:
        assert client.status(job_id)["job"]["state"] in ("queued", "running")  # (it may not have started)
        client.cancel(job_id)
        assert client.wait(job_id, timeout=30)["state"] == "cancelled"


def test_a_wait_that_gives_up_has_its_own_exit_status(daemon: DaemonProcess) -> None:
    """``wait --timeout`` that runs out exits 124 (as coreutils' timeout), not 1 as a failed job."""
    with daemon.client() as client:
        job_id = client.submit({"name": "long", "root": {"cmd": ["sleep", "100"]}})["id"]
        out = daemon.procctl("wait", job_id, "--timeout", "0.2")
        assert out.returncode == 124, (out.stdout, out.stderr)
        assert f"{job_id} has not finished after 0.2s" in out.stderr
        assert client.status(job_id)["job"]["state"] == "running"  # it goes on
        client.cancel(job_id)
        assert client.wait(job_id, timeout=30)["state"] == "cancelled"
        failed = client.submit({"name": "no", "root": {"cmd": ["false"]}})["id"]
    assert daemon.procctl("wait", failed, "--timeout", "30").returncode == 1  # finished, failed

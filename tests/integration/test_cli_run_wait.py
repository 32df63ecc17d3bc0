"""``procctl run --wait`` through a real daemon: it says the job's id, streams the task's output
while it runs (stdout on stdout; stderr, log records, progress and lifecycle lines on stderr) and
exits with the task's exit status. Before, it printed the job's tree at the end only, never the
id nor the output, and exited 1 for any failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess, ctrl_c_after_submit

pytestmark = pytest.mark.daemon_args("--workers", "1", "--log-target", "stderr")


def test_a_commands_output_is_streamed_and_its_exit_code_returned(daemon: DaemonProcess) -> None:
    out = daemon.procctl("run", "--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert out.stdout == "out\n"  # the command's output only: the rest is on stderr
    err = out.stderr.splitlines()
    assert err[0] == 'job 1 "sh" submitted' and "err" in err
    assert any(line.startswith("[1.0#1 daemon] ") and "attempt 1 starting" in line for line in err)
    assert err[-1].startswith("✘ root  failed") and "exited with status 3" in err[-1]


def test_a_command_killed_by_a_signal_exits_128_plus_its_number(daemon: DaemonProcess) -> None:
    out = daemon.procctl("run", "--wait", "--", "sh", "-c", "echo before; kill -TERM $$")
    assert out.returncode == 128 + 15, (out.stdout, out.stderr)
    assert out.stdout == "before\n"


def test_a_completed_command_exits_0_and_one_that_cannot_start_1(daemon: DaemonProcess) -> None:
    out = daemon.procctl("run", "--wait", "--", "true")
    assert out.returncode == 0 and out.stdout == "", out.stderr
    out = daemon.procctl("run", "--wait", "--", "/no/such/program")
    assert out.returncode == 1 and "cannot start" in out.stderr


def test_a_callables_printed_lines_are_streamed_and_its_failure_is_1(daemon: DaemonProcess) -> None:
    out = daemon.procctl("run", "--wait", "builtins:print", '"hello"', '"world"')
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"
    out = daemon.procctl("run", "--wait", "tests.support.tasks:boom", '"disk full"')
    assert out.returncode == 1 and "ValueError: disk full" in out.stderr


def test_progress_and_output_show_while_the_task_runs(daemon: DaemonProcess, tmp_path: Path) -> None:
    """The task reports progress, then waits for a file that the test writes only once procctl
    has shown that progress: so it was shown live, not after the end."""
    gate = tmp_path / "gate"
    cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket),
           "run", "--wait", "tests.support.tasks:progress_then_wait", f'"{gate}"']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded by the test's timeout: the task waits for the gate
            seen.append(line)
            if "progress] 50% halfway" in line:
                break
        gate.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert seen[0].startswith('job 1 "tests.support.tasks:progress_then_wait" submitted'), seen
    assert seen[-1].strip() == "[1.0 progress] 50% halfway", seen
    assert proc.returncode == 0, (out, err)
    assert "completed" in err.splitlines()[-1]


def test_a_reused_key_is_said_with_run(daemon: DaemonProcess) -> None:
    first = daemon.procctl("run", "--key", "nightly", "--", "true")
    assert first.returncode == 0 and first.stderr == ""
    again = daemon.procctl("run", "--key", "nightly", "--", "true")
    assert again.stdout == first.stdout  # the same job's id
    assert f"job {first.stdout.strip()} (already submitted with this key)" in again.stderr
    waited = daemon.procctl("run", "--wait", "--key", "nightly", "--", "true")
    assert waited.returncode == 0
    job_id = first.stdout.strip()
    assert waited.stderr.splitlines()[0] == f'job {job_id} "true" submitted (already submitted with this key)'


def test_global_options_after_the_subcommand_reach_the_daemon(daemon: DaemonProcess) -> None:
    cmd = [sys.executable, "-m", "procpool.cli", "ping", "--json", "--socket", str(daemon.socket)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] == daemon.pid
    out = daemon.procctl("status", "404", "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"]["code"] == "not_found"


def test_a_pool_of_0_workers_is_refused_by_the_daemon(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any client gets the refusal: here one that does not check its arguments first."""
    import procpool.client

    monkeypatch.setattr(procpool.client, "check_args", lambda *args, **kwargs: None)
    with daemon.client() as client:
        with pytest.raises(ProcpoolError) as info:
            client.call("pool_resize", {"workers": 0})
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert "procctl pause --all" in (info.value.hint or "")
        assert client.call("pool_resize", {"workers": 2}) == {"workers": 2}


def test_ctrl_c_during_run_wait_names_the_job_that_goes_on(daemon: DaemonProcess) -> None:
    job_id, err = ctrl_c_after_submit(daemon, "run", "--wait", "--", "sleep", "100")
    assert f"stopped waiting; job {job_id} goes on in the daemon" in err and "Traceback" not in err
    with daemon.client() as client:
        assert client.status(job_id)["job"]["state"] in ("queued", "running")  # (it may not have started)
        client.cancel(job_id)
        assert client.wait(job_id, timeout=30)["state"] == "cancelled"


def test_under_json_stdout_stays_one_document_when_a_wait_gives_up(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit({"name": "long", "root": {"cmd": ["sleep", "100"]}})["id"]
        out = daemon.procctl("--json", "wait", job_id, "--timeout", "0.2")
        assert out.returncode == 124, (out.stdout, out.stderr)
        assert json.loads(out.stdout)["finished"] is False  # the status as it stands, alone
        error = json.loads(out.stderr)["error"]
        assert error["code"] == "wait_timeout" and error["exit"] == 124
        client.cancel(job_id)
        assert client.wait(job_id, timeout=30)["state"] == "cancelled"

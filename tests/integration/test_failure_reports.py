"""Failures read like a test runner's, through a real daemon on each engine (the local pool and
command runner, and a Dask cluster): a call's traceback of the task's own frames in ``procctl
status``, ``wait`` and ``logs``; a command's exit status or signal name and its last lines (also
after a restart); a timeout and a cancel in words; ``procctl result``; a missing working folder
named as such; a job whose only task was cancelled ends cancelled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from procpoold.identity import user_name
from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job, sh, tasks_by_name, wait_task_started

ROOT = str(Path(__file__).resolve().parents[2])

engine = each_engine()


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"tests.support.tasks:{fn}", "args": list(args), **extra}


def job(daemon: DaemonProcess, root: Any, **extra: Any) -> dict[str, Any]:
    return run_job(daemon, root, python_path=[ROOT], on_failure="continue", **extra)


def test_a_failed_calls_traceback_shows_in_status_wait_and_logs(daemon: DaemonProcess) -> None:
    status = job(daemon, {"name": "deep", **call("fail_deep", 3, "disk full")})
    job_id = status["job"]["id"]
    error = tasks_by_name(status)["deep"]["error"]
    assert (error["type"], error["message"]) == ("RuntimeError", "disk full")
    # The task's own frames only: none of the worker's, the harness's or the zygote's.
    tb = error["traceback"]
    assert tb.count("in fail_deep") == 4 and tb.rstrip().endswith("RuntimeError: disk full"), tb
    assert "procpoold" not in tb, tb
    for args in (("status", job_id), ("wait", job_id), ("status", f"{job_id}.0"), ("wait", f"{job_id}/deep")):
        out = daemon.procctl(*args)
        assert out.returncode == (1 if args[0] == "wait" else 0), out
        assert "deep  failed" in out.stdout and "RuntimeError: disk full" in out.stdout, out.stdout
        assert "Traceback (most recent call last):" in out.stdout, out.stdout
        assert out.stdout.count("in fail_deep") == 4 and "procpoold" not in out.stdout, out.stdout
    logs = daemon.procctl("logs", job_id)
    assert logs.returncode == 0, logs
    [final] = [line for line in logs.stdout.split("\n2") if 'task "deep" failed after 1 attempt:' in line]
    assert "Traceback (most recent call last):" in final and final.count("in fail_deep") == 4, logs.stdout
    assert "RuntimeError: disk full" in final and "procpoold" not in final, logs.stdout


def test_a_timeout_and_a_cancel_read_in_words(daemon: DaemonProcess) -> None:
    status = job(daemon, {"name": "spin", **call("sleep_forever"), "timeout": 0.5})
    t = tasks_by_name(status)["spin"]
    assert t["state"] == "timeout"
    assert (t["error"]["type"], t["error"]["message"]) == ("Timeout", "timed out after 0.5 s"), t["error"]
    out = daemon.procctl("status", status["job"]["id"])
    assert "spin  timeout" in out.stdout and "timed out after 0.5 s" in out.stdout, out.stdout
    assert "TaskInterrupted" not in out.stdout and "stopped by procpoold" not in out.stdout, out.stdout
    with daemon.client() as client:
        job_id = client.submit({"name": "c", "python_path": [ROOT],
                                "root": {"name": "only", **call("sleep_forever")}})["id"]
        wait_task_started(client, job_id, "only")
        assert daemon.procctl("cancel", f"{job_id}.0").returncode == 0
        final = client.wait(job_id, timeout=30)
    uid = os.getuid()
    name = user_name(uid)
    who = f"cancelled by {name} (uid {uid})" if name != str(uid) else f"cancelled by uid {uid}"
    # Cancelling a job's only task leaves the job cancelled, as cancelling the job does.
    assert final["state"] == "cancelled", final
    [t] = final["status"]["tasks"]
    assert (t["state"], t["reason"], t["error"]["message"]) == ("cancelled", who, who), t
    out = daemon.procctl("status", job_id)
    assert '"c"  cancelled' in out.stdout and who in out.stdout, out.stdout
    assert "TaskInterrupted" not in out.stdout, out.stdout


def test_a_failed_command_shows_its_status_or_signal_and_last_lines(daemon: DaemonProcess) -> None:
    status = job(daemon, {"concurrent": [
        {"name": "three", **sh("seq 1 30; echo oops >&2; exit 3")},
        {"name": "killed", **sh("echo before; kill -9 $$")},
    ]})
    t = tasks_by_name(status)
    assert (t["three"]["exit_code"], t["killed"]["exit_code"]) == (3, -9)
    out = daemon.procctl("status", status["job"]["id"]).stdout
    assert "three  failed" in out and "command exited with status 3" in out, out
    assert "killed  failed" in out and "command killed by SIGKILL" in out, out
    assert "exit -9" not in out, out
    lines = out.splitlines()
    at = lines.index("── three failed: command exited with status 3")
    assert lines[at + 1 : at + 12] == ["  last 10 lines of output:", *[f"  | {i}" for i in range(22, 31)],
                                       "  | oops"], out
    assert "  | before" in lines, out


def test_procctl_result_prints_return_values_as_json(daemon: DaemonProcess) -> None:
    status = job(daemon, {"concurrent": [
        {"name": "sum", **call("add", 2, 3)},
        {"name": "ctx", **call("context")},
    ]})
    job_id = status["job"]["id"]
    one = daemon.procctl("result", f"{job_id}/sum")
    assert (one.returncode, json.loads(one.stdout)) == (0, 5), one
    every = daemon.procctl("result", job_id)
    assert every.returncode == 0, every
    results = json.loads(every.stdout)
    assert results["root.concurrent[0]"] == 5 and results["root.concurrent[1]"]["task_name"] == "ctx"
    failed = job(daemon, {"sequential": [{"name": "ok", **call("add", 1, 1)},
                                         {"name": "bad", **call("boom", "no good")}]})
    bad_id = failed["job"]["id"]
    out = daemon.procctl("result", f"{bad_id}/bad")
    assert (out.returncode, out.stdout) == (1, ""), out
    assert f'task {bad_id}.1 ("bad") failed: ValueError: no good' in out.stderr, out.stderr
    out = daemon.procctl("result", bad_id)
    assert out.returncode == 1 and json.loads(out.stdout) == {"root.sequential[0]": 2}, out
    assert f"1 of 2 task(s) of job {bad_id} did not complete" in out.stderr, out.stderr


def test_a_missing_working_directory_is_named(daemon: DaemonProcess, tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such")
    status = job(daemon, {"name": "where", "cmd": ["pwd"], "cwd": missing})
    t = tasks_by_name(status)["where"]
    assert t["state"] == "failed"
    assert f"the working directory '{missing}' does not exist" in t["error"]["message"], t["error"]
    assert "cannot start 'pwd': No such file" not in t["error"]["message"]


def test_the_last_lines_of_a_failed_command_survive_a_restart(daemon: DaemonProcess) -> None:
    status = job(daemon, {"name": "noisy", **sh("seq 1 5; kill -TERM $$")})
    job_id = status["job"]["id"]
    daemon.stop()
    daemon.restart()
    out = daemon.procctl("status", job_id).stdout
    assert "noisy  failed" in out and "command killed by SIGTERM" in out, out
    tail = [line for line in out.splitlines() if line.startswith("  | ")]
    assert tail == [f"  | {i}" for i in range(1, 6)], out


def test_a_call_in_a_missing_working_directory_says_so(daemon: DaemonProcess, tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    status = job(daemon, {"name": "where", **call("add", 1, 2), "cwd": missing})
    error = tasks_by_name(status)["where"]["error"]
    assert error["message"].endswith(f"the working directory '{missing}' does not exist"), error
    assert error["traceback"] == "", error  # no frame of the task's own: nothing to show

"""Job-tree semantics through a real daemon, with command tasks (each semantic is a test), on each
engine: the local command runner, and a Dask cluster (``--engine dask``; see
``tests/support/fixtures.py``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job, sh, tasks_by_name, wait_task_started, wait_task_state

engine = each_engine()


def test_sequential_children_start_only_after_the_previous_completed(daemon: DaemonProcess) -> None:
    status = run_job(
        daemon,
        {
            "sequential": [
                {"name": "one", **sh("sleep 0.1; echo one")},
                {"name": "two", **sh("echo two")},
                {"name": "three", "cmd": ["true"]},
            ]
        },
    )
    t = tasks_by_name(status)
    assert status["job"]["state"] == "completed"
    assert t["two"]["started_at"] >= t["one"]["finished_at"]
    assert t["three"]["started_at"] >= t["two"]["finished_at"]
    assert [t[n]["exit_code"] for n in ("one", "two", "three")] == [0, 0, 0]


def test_concurrent_children_run_together(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Each child waits for the other's file: this only completes if both run at once.
    a, b = tmp_path / "a", tmp_path / "b"
    status = run_job(
        daemon,
        {
            "concurrent": [
                {"name": "left", **sh(f"touch {a}; until [ -e {b} ]; do sleep 0.01; done", timeout=30)},
                {"name": "right", **sh(f"touch {b}; until [ -e {a} ]; do sleep 0.01; done", timeout=30)},
            ]
        },
    )
    assert status["job"]["state"] == "completed", status


def test_depends_on_adds_edges_across_the_tree(daemon: DaemonProcess) -> None:
    status = run_job(
        daemon,
        {
            "concurrent": [
                {
                    "sequential": [
                        {"name": "x1", "cmd": ["true"]},
                        {"name": "x2", "cmd": ["true"], "depends_on": ["y"]},
                    ]
                },
                {"name": "y", **sh("sleep 0.2")},
            ]
        },
    )
    t = tasks_by_name(status)
    assert t["x2"]["started_at"] >= t["y"]["finished_at"]


def test_failure_skips_what_comes_after_and_stop_cancels_the_rest(daemon: DaemonProcess) -> None:
    status = run_job(
        daemon,
        {
            "sequential": [
                {
                    "concurrent": [
                        {"name": "fetch", **sh("echo boom >&2; exit 4")},
                        {"name": "side", **sh("sleep 0.3")},
                    ]
                },
                {"name": "parse", "cmd": ["true"]},
            ]
        },
    )
    t = tasks_by_name(status)
    assert status["job"]["state"] == "failed"
    assert (t["fetch"]["state"], t["fetch"]["exit_code"]) == ("failed", 4)
    assert t["fetch"]["tail"] == ["boom"]
    assert (t["parse"]["state"], t["parse"]["reason"]) == ("skipped", 'upstream "fetch" failed')
    assert t["side"]["state"] == "completed"  # it was already running: it finishes


def test_on_failure_stop_cancels_unstarted_branches(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with daemon.client() as client:
        job_id = client.submit({"name": "stop", "root": {"concurrent": [
            {"name": "bad", "cmd": ["false"]},
            {"name": "gate", **sh(f'until [ -e "{gate}" ]; do sleep 0.02; done')},
            {"name": "later", "cmd": ["true"], "depends_on": ["gate"]},
        ]}})["id"]
        wait_task_state(client, job_id, "bad", "failed")
        gate.touch()  # (gate ends only now: "later" could not start before the failure)
        result = client.wait(job_id, timeout=60)
    assert result["finished"], result
    t = tasks_by_name(result["status"])
    assert t["later"]["state"] == "cancelled" and "job stopped" in t["later"]["reason"]


def test_on_failure_continue_keeps_independent_branches(daemon: DaemonProcess) -> None:
    status = run_job(
        daemon,
        {
            "concurrent": [
                {"name": "bad", "cmd": ["false"]},
                {"name": "after-bad", "cmd": ["true"], "depends_on": ["bad"]},
                {"name": "gate", **sh("sleep 0.3")},
                {"name": "later", "cmd": ["true"], "depends_on": ["gate"]},
            ]
        },
        on_failure="continue",
    )
    t = tasks_by_name(status)
    assert status["job"]["state"] == "failed"
    assert t["after-bad"]["state"] == "skipped"
    assert t["later"]["state"] == "completed"


@pytest.mark.daemon_args("--workers", "1")
@pytest.mark.dask_cluster_size(1, 1)  # one slot: the ready tasks wait, in priority order
def test_priority_orders_ready_tasks_across_jobs(daemon: DaemonProcess, tmp_path: Path) -> None:
    go = tmp_path / "go"
    with daemon.client() as client:
        blocker = client.submit({"name": "blocker", "root": sh(f"until [ -e {go} ]; do sleep 0.01; done")})[
            "id"
        ]
        # Each task writes when its process ran (an engine may hand several attempts over at
        # once, to be run in their priority order where they go: the order they ran in counts).
        def stamped(name: str, priority: str) -> str:
            root = {**sh(f"date +%s%N > {tmp_path / name}"), "priority": priority}
            return str(client.submit({"name": name, "root": root})["id"])

        low = stamped("low", "low")
        normal = stamped("normal", "normal")
        critical = stamped("critical", "critical")
        go.touch()
        for job_id in (blocker, low, normal, critical):
            result = client.wait(job_id, timeout=30)
            assert result["state"] == "completed"
    ran = {name: int((tmp_path / name).read_text()) for name in ("low", "normal", "critical")}
    assert ran["critical"] < ran["normal"] < ran["low"], ran


def test_timeout_stops_the_process_group_and_retries(daemon: DaemonProcess) -> None:
    status = run_job(
        daemon,
        {
            "name": "slow",
            **sh("sleep 100 & sleep 100; wait"),
            "timeout": 0.3,
            "retries": 1,
            "retry_delay": 0.05,
        },
    )
    t = tasks_by_name(status)["slow"]
    assert t["state"] == "timeout" and t["attempts"] == 2
    assert t["error"]["type"] == "Timeout"
    assert t["exit_code"] == -15
    # the fixture's teardown fails the test if either background sleep survived


def test_sigterm_is_followed_by_sigkill_after_the_grace(tmp_path: Path, engine_args: list[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("kill_grace = 0.3\n")
    with DaemonProcess(extra_args=["--config", str(cfg), *engine_args]) as d:
        # (a timeout of 2 s: a shorter one could send SIGTERM before a loaded machine's sh set its trap)
        status = run_job(d, {"name": "stubborn", **sh("trap '' TERM; sleep 100; sleep 100"), "timeout": 2})
        t = tasks_by_name(status)["stubborn"]
        assert t["state"] == "timeout" and t["exit_code"] == -9


def test_cancel_a_job_stops_running_cancels_pending_skips_dependents(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit(
            {
                "name": "c",
                "root": {
                    "sequential": [{"name": "long", **sh("sleep 100")}, {"name": "next", "cmd": ["true"]}]
                },
            }
        )["id"]
        wait_task_started(client, job_id, "long")  # bounded; never a bare sleep
        assert client.cancel(job_id)["stopping"] == 1
        status = client.wait(job_id, timeout=30)["status"]
    t = tasks_by_name(status)
    assert status["job"]["state"] == "cancelled"
    assert t["long"]["state"] == "cancelled" and t["long"]["exit_code"] == -15
    assert t["next"]["state"] in ("cancelled", "skipped")


def test_cancel_a_single_task(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit(
            {
                "name": "c",
                "root": {
                    "concurrent": [
                        {"name": "victim", **sh("sleep 100")},
                        {"name": "dependent", "cmd": ["true"], "depends_on": ["victim"]},
                        {"name": "bystander", **sh("sleep 0.2")},
                    ]
                },
                "on_failure": "continue",
            }
        )["id"]
        client.cancel(f"{job_id}/victim")
        status = client.wait(job_id, timeout=30)["status"]
        with pytest.raises(ProcpoolError) as info:
            client.cancel(f"{job_id}/victim")
        assert info.value.code is ErrorCode.CONFLICT
    t = tasks_by_name(status)
    assert t["victim"]["state"] == "cancelled"
    assert (t["dependent"]["state"], t["dependent"]["reason"]) == (
        "skipped",
        'upstream "victim" was cancelled',
    )
    assert t["bystander"]["state"] == "completed"


def test_repeat_runs_the_tree_n_times(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"name": "tick", "cmd": ["true"]}, repeat=3)
    assert status["job"]["state"] == "completed" and status["job"]["run"] == 3
    assert [r["run"] for r in status["job"]["runs"]] == [1, 2, 3]


def test_repeat_forever_until_cancelled(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit({"name": "f", "repeat": "forever", "root": {"cmd": ["true"]}})["id"]
        deadline = time.monotonic() + 30
        while client.status(job_id)["job"]["run"] < 3:
            assert time.monotonic() < deadline
            client.wait(job_id, timeout=0.05)
        client.cancel(job_id)
        status = client.wait(job_id, timeout=30)["status"]
    assert status["job"]["state"] == "cancelled" and status["job"]["run"] >= 3


def test_idempotency_key_returns_the_existing_job(daemon: DaemonProcess) -> None:
    doc = {"name": "once", "key": "nightly-2026-11-23", "root": {"cmd": ["true"]}}
    with daemon.client() as client:
        first = client.submit(doc)
        second = client.submit(doc)
    assert second["id"] == first["id"] and second["existing"] and not first["existing"]


def test_after_waits_for_a_job_and_fails_with_it(daemon: DaemonProcess, tmp_path: Path) -> None:
    go = tmp_path / "go"
    with daemon.client() as client:
        first = client.submit({"name": "first", "root": sh(f"until [ -e {go} ]; do sleep 0.01; done")})["id"]
        second = client.submit({"name": "second", "root": {"cmd": ["true"]}}, after=[first])["id"]
        assert client.status(second)["job"]["state"] == "pending"
        go.touch()
        done = client.wait(second, timeout=30)["status"]
        assert done["job"]["state"] == "completed"
        assert done["tasks"][0]["started_at"] >= client.status(first)["job"]["finished_at"]
        bad = client.submit({"name": "bad", "root": {"cmd": ["false"]}})["id"]
        dependent = client.submit({"name": "dep", "root": {"cmd": ["true"]}}, after=[bad])["id"]
        status = client.wait(dependent, timeout=30)["status"]
    assert status["job"]["state"] == "failed"
    assert status["tasks"][0]["reason"] == f'upstream "{bad}" failed'


def test_bad_submissions_name_the_problem(daemon: DaemonProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"root": {"sequential": [{"cmd": ["x"]}, {"concurrent": [{"cmd": ["y"], "retrys": 1}]}]}})
    )
    out = daemon.procctl("submit", str(bad))
    assert out.returncode == 2
    assert 'root.sequential[1].concurrent[0]: unknown field "retrys" (did you mean "retries"?)' in out.stderr
    cyc = tmp_path / "cycle.json"
    cyc.write_text(
        json.dumps(
            {
                "root": {
                    "sequential": [
                        {"name": "a", "cmd": ["x"], "depends_on": ["b"]},
                        {"name": "b", "cmd": ["x"]},
                    ]
                }
            }
        )
    )
    out = daemon.procctl("submit", str(cyc))
    assert out.returncode == 2 and "dependency cycle" in out.stderr
    # the daemon validates too, independently of the client
    with daemon.client() as client, pytest.raises(ProcpoolError) as info:
        client.submit({"root": {"cmd": "no shell"}})
    assert info.value.code is ErrorCode.INVALID_TREE and info.value.message.startswith("root.cmd:")
    with daemon.client() as client, pytest.raises(ProcpoolError) as info2:
        client.status("404")
    assert info2.value.code is ErrorCode.NOT_FOUND


def test_procctl_submit_wait_status_run_cancel(daemon: DaemonProcess, tmp_path: Path) -> None:
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"name": "ok", "root": {"sequential": [{"name": "a", "cmd": ["echo", "hi"]}]}}))
    out = daemon.procctl("submit", str(ok), "--wait")
    assert out.returncode == 0, out.stderr
    # the final print: the job's head and counts (and what failed: nothing)
    head = [line for line in out.stdout.splitlines()[1:] if not line.startswith("  engines: ")]  # (dask)
    assert head == ["  1 task: 1 completed"] and "[####" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "on_failure": "continue", "root": {"concurrent": [
        {"name": f"t{i}", "cmd": ["sh", "-c", "exit 3" if i == 7 else "true"]} for i in range(30)]}}))
    out = daemon.procctl("submit", str(bad), "--wait")
    assert out.returncode == 1
    lines = [line for line in out.stdout.splitlines() if not line.startswith("  engines: ")]  # (dask)
    assert lines[1] == "  30 tasks: 29 completed, 1 failed" and lines[2].startswith("  ✘ t7  failed")
    out = daemon.procctl("--json", "run", "--name", "boom", "--wait", "--", "sh", "-c", "exit 3")
    assert out.returncode == 3  # the command's own exit status
    assert json.loads(out.stdout)["job"]["state"] == "failed"
    out = daemon.procctl("status")
    assert out.returncode == 0 and "ok" in out.stdout and "boom" in out.stdout
    out = daemon.procctl("--json", "status", "1")
    data = json.loads(out.stdout)
    assert data["format"] == 1 and data["job"]["name"] == "ok"
    assert set(data["tasks"][0]) >= {
        "id",
        "name",
        "path",
        "kind",
        "state",
        "attempts",
        "started_at",
        "finished_at",
        "result",
        "error",
        "exit_code",
        "progress",
    }
    out = daemon.procctl("validate", str(ok))
    assert out.returncode == 0 and "1. a" in out.stdout
    out = daemon.procctl("wait", "1")
    assert out.returncode == 0
    out = daemon.procctl("run", "--", "sleep", "100")
    job_id = out.stdout.strip()
    assert daemon.procctl("cancel", job_id).returncode == 0
    assert daemon.procctl("wait", job_id).returncode == 1


def test_cmd_env_cwd_and_identity(daemon: DaemonProcess, tmp_path: Path) -> None:
    status = run_job(
        daemon,
        {
            "name": "envy",
            "cwd": str(tmp_path),
            "env": {"GREETING": "hi"},
            **sh('echo "$GREETING $PROCPOOL_TASK_NAME $PROCPOOL_ATTEMPT $(pwd)" > out.txt'),
        },
    )
    assert tasks_by_name(status)["envy"]["state"] == "completed"
    assert (tmp_path / "out.txt").read_text() == f"hi envy 1 {tmp_path}\n"


@pytest.mark.parametrize("with_cwd", [False, True], ids=["posix_spawn", "popen"])
def test_a_command_gets_only_stdin_stdout_stderr_and_its_own_session(
    daemon: DaemonProcess, tmp_path: Path, with_cwd: bool
) -> None:
    out = tmp_path / "seen.json"
    probe = (
        "import json, os, sys\n"
        "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))  # 3: the listing's own\n"
        "seen = {'fds': fds, 'sid': os.getsid(0), 'pgid': os.getpgid(0), 'pid': os.getpid(),\n"
        "        'stdin': sys.stdin.read(), 'stdin_dev': os.readlink('/proc/self/fd/0')}\n"
        "open(sys.argv[1], 'w').write(json.dumps(seen))\n"
    )
    task = {"name": "fds", "cmd": [sys.executable, "-c", probe, str(out)]}
    status = run_job(daemon, {**task, "cwd": str(tmp_path)} if with_cwd else task)
    assert tasks_by_name(status)["fds"]["state"] == "completed"
    seen = json.loads(out.read_text())
    assert seen["fds"] == [0, 1, 2, 3], seen  # nothing of the daemon's leaks into a task
    assert seen["sid"] == seen["pgid"] == seen["pid"]  # a session and process group of its own
    assert (seen["stdin"], seen["stdin_dev"]) == ("", "/dev/null")


def test_the_tasks_own_path_finds_its_commands(daemon: DaemonProcess, tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "only-here"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    status = run_job(
        daemon,
        {"concurrent": [
            {"name": "own-path", "cmd": ["only-here"], "env": {"PATH": f"{tool.parent}:/usr/bin:/bin"}},
            {"name": "daemon-path", "cmd": ["only-here"]},
        ]},
    )
    tasks = tasks_by_name(status)
    assert tasks["own-path"]["state"] == "completed"
    assert tasks["daemon-path"]["state"] == "failed"
    assert "cannot start 'only-here'" in tasks["daemon-path"]["error"]["message"]


def test_a_missing_command_fails_with_a_clear_error(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"name": "nope", "cmd": ["/nonexistent/binary"]})
    t = tasks_by_name(status)["nope"]
    assert t["state"] == "failed" and t["error"]["type"] == "FileNotFoundError"
    assert "cannot start '/nonexistent/binary'" in t["error"]["message"]


def test_submit_and_wait_in_one_round_trip(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        done = client.submit({"name": "one", "root": {"cmd": ["true"]}}, wait=30)
        assert done["finished"] and done["state"] == "completed" and not done["existing"]
        assert done["status"]["tasks"][0]["exit_code"] == 0
        slow = client.submit({"name": "slow", "root": {"cmd": ["sleep", "100"]}}, wait=0.1)
        assert not slow["finished"] and slow["id"]
        client.cancel(slow["id"])


def test_a_daemon_without_a_store_runs_jobs(tmp_path: Path, engine_args: list[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("store = false\n")
    with DaemonProcess(extra_args=["--config", str(cfg), *engine_args]) as d:
        status = run_job(d, {"name": "x", "cmd": ["true"]})
        assert status["job"]["state"] == "completed"
        assert not (d.state_dir / "state.db").exists()


@pytest.mark.local_engine_only("routing by engine name among the local engines, and the refusal of an "
                               "engine this daemon lacks ('dask'); test_dask_engine.py routes on dask")
def test_tasks_run_on_the_engine_they_name_and_an_unknown_engine_is_refused(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"concurrent": [
        {"name": "named", "cmd": ["true"], "engine": "commands"},
        {"name": "call", "call": "tests.support.tasks:add", "args": [1, 2], "engine": "pool"},
    ]})
    t = tasks_by_name(status)
    assert status["job"]["state"] == "completed", status
    assert t["named"]["exit_code"] == 0 and t["call"]["result"] == 3
    with daemon.client() as client:
        with pytest.raises(ProcpoolError) as info:
            client.submit({"name": "x", "root": {"cmd": ["true"], "engine": "dask"}})
        assert info.value.code is ErrorCode.INVALID_TREE
        assert "root.engine: no engine named 'dask' (this daemon has: commands, pool)" in str(info.value)
        with pytest.raises(ProcpoolError, match="does not run 'cmd' tasks"):
            client.submit({"name": "x", "root": {"cmd": ["true"], "engine": "pool"}})
        workers = client.pool()["workers"]
        assert workers and {w["engine"] for w in workers} == {"pool"}
        engines = client.status()["workers"]["engines"]
        assert engines["pool"]["up"] and engines["commands"]["up"]

"""Durable state: restarts, crashes, on_interrupt, idempotent submits, history, corruption."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from procpool import Client
from procpool.contract.errors import ProcpoolError
from tests.support.daemon import DaemonProcess, tagged_pids
from tests.support.jobs import sh, tasks_by_name, wait_task_state
from tests.support.waiting import wait_until


def marker_job(marks: Path, gate: Path, policy: str = "retry", retries: int = 0) -> dict[str, Any]:
    """first (quick) -> slow (waits for the gate file) -> last; each appends its name to marks."""
    return {
        "name": "m",
        "on_interrupt": policy,
        "root": {
            "sequential": [
                {"name": "first", **sh(f"echo first >> {marks}")},
                {
                    "name": "slow",
                    **sh(f"until [ -e {gate} ]; do sleep 0.01; done; echo slow >> {marks}"),
                    "retries": retries,
                },
                {"name": "last", **sh(f"echo last >> {marks}")},
            ]
        },
    }


@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_restart_resumes_without_rerunning_completed_tasks(tmp_path: Path, how: str) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    cfg = tmp_path / "c.toml"
    cfg.write_text("drain_timeout = 0.2\n")
    d = DaemonProcess(extra_args=["--config", str(cfg)])
    try:
        d.start()
        with d.client() as client:
            # No retries: an interrupted attempt (a drain that ran out, a crash) uses none.
            job_id = client.submit(marker_job(marks, gate, retries=0))["id"]
            wait_task_state(client, job_id, "slow")
        if how == "graceful":
            d.signal(signal.SIGTERM)
            assert d.wait() == 0
            assert "drain timeout" in d.log()
        else:
            d.crash()
        gate.touch()
        d.restart()
        with d.client() as client:
            status = client.wait(job_id, timeout=30)["status"]
        t = tasks_by_name(status)
        assert status["job"]["state"] == "completed"
        assert t["slow"]["attempts"] == 2  # the interrupted attempt is listed (it used no retry)
        assert t["slow"]["attempt_history"][0]["status"] == "interrupted"
        assert marks.read_text().split() == ["first", "slow", "last"]  # first did not run again
        d.stop()
    finally:
        d.cleanup()


@pytest.mark.parametrize(
    ("policy", "retries", "expected"), [("fail", 3, "failed"), ("hold", 0, "held")]
)
def test_on_interrupt_policies(tmp_path: Path, policy: str, retries: int, expected: str) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    d = DaemonProcess()
    try:
        d.start()
        with d.client() as client:
            job_id = client.submit(marker_job(marks, gate, policy, retries))["id"]
            wait_task_state(client, job_id, "slow")
        d.crash()
        d.restart()
        with d.client() as client:
            status = client.status(job_id)
            if expected == "held":
                assert status["job"]["state"] == "held"
                assert tasks_by_name(status)["slow"]["state"] == "pending"
                gate.touch()
                client.resume(job_id)
                status = client.wait(job_id, timeout=30)["status"]
                assert status["job"]["state"] == "completed"
            else:
                status = client.wait(job_id, timeout=30)["status"]
                slow = tasks_by_name(status)["slow"]
                assert (slow["state"], slow["error"]["type"]) == ("failed", "Interrupted")
                assert status["job"]["state"] == expected
        d.stop()
    finally:
        d.cleanup()


LEFTOVER_CASES: dict[str, tuple[dict[str, str], dict[str, Any], bool]] = {
    # The command starts before the submit's commit, which writes its pid: killed by pid.
    "pid written": ({}, {"name": "hang", **sh("sleep 1000")}, True),
    # The second task starts in a later loop iteration, and with this test hook its pid is never
    # written: the restart must find the command by its identity.
    "pid not written": (
        {"PROCPOOL_TEST_HOOKS": "1", "PROCPOOL_TEST_NO_PID_FLUSH": "1"},
        {"sequential": [{"name": "first", "cmd": ["true"]}, {"name": "hang", **sh("sleep 1000")}]},
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(LEFTOVER_CASES))
def test_crash_leftover_command_is_killed_at_restart(tmp_path: Path, case: str) -> None:
    env, root, pid_written = LEFTOVER_CASES[case]
    d = DaemonProcess(env=env)
    try:
        d.start()
        with d.client() as client:
            job_id = client.submit({"name": "orphan", "root": root})["id"]
            wait_task_state(client, job_id, "hang")
            pid = tasks_by_name(client.status(job_id))["hang"]["attempt_history"][0]["pid"]
        d.crash(everything=False)  # only the daemon: its command is now an orphan
        assert pid in tagged_pids(d.tag)
        d.restart()
        deadline = time.monotonic() + 10
        while pid in tagged_pids(d.tag):
            assert time.monotonic() < deadline, "the previous daemon's command survived the restart"
            time.sleep(0.02)
        with d.client() as client:  # (the task runs again: on_interrupt is "retry")
            first_attempt = tasks_by_name(client.status(job_id))["hang"]["attempt_history"][0]
            assert first_attempt["pid"] == (pid if pid_written else None)
            client.cancel(job_id)  # its second attempt would sleep through the drain
            client.wait(job_id, timeout=30)
        d.stop()
    finally:
        d.cleanup()


def test_idempotency_key_survives_a_crash(tmp_path: Path) -> None:
    d = DaemonProcess()
    doc = {"name": "k", "key": "once-only", "root": {"cmd": ["true"]}}
    try:
        d.start()
        with d.client() as client:
            first = client.submit(doc)["id"]
        d.crash()
        d.restart()
        with d.client() as client:
            again = client.submit(doc)
            assert again == {**again, "id": first, "existing": True}
            assert len(client.status()["jobs"]["list"]) == 1
        d.stop()
    finally:
        d.cleanup()


def test_history_filters_retention_and_clean(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("retention_count = 3\n")
    d = DaemonProcess(extra_args=["--config", str(cfg)])
    try:
        d.start()
        with d.client() as client:
            ids = []
            for i in range(5):
                ids.append(
                    client.submit({"name": f"j{i}", "root": {"cmd": ["true" if i % 2 else "false"]}})["id"]
                )
                client.wait(ids[-1], timeout=30)
            listed = [j["id"] for j in client.status()["jobs"]["list"]]
            assert listed == ids[-3:]  # the two oldest were pruned
            failed = client.status(state="failed")["jobs"]["list"]
            assert [j["id"] for j in failed] == [ids[2], ids[4]]
        out = d.procctl("status", "--state", "failed", "--since", "1h")
        # The job table's name column (the socket's random path above it may hold "j3" too).
        names = [line.split()[1] for line in out.stdout.splitlines() if line[:1].isdigit()]
        assert out.returncode == 0 and "j4" in names and "j3" not in names, out.stdout
        d.stop()
        d.restart()  # history survives a restart, and ids are never reused
        with d.client() as client:
            assert [j["id"] for j in client.status()["jobs"]["list"]] == ids[-3:]
            new = client.submit({"name": "new", "root": {"cmd": ["true"]}})["id"]
            assert int(new) == int(ids[-1]) + 1
            client.wait(new, timeout=30)
        out = d.procctl("clean", "--state", "failed")
        assert out.returncode == 0, out.stderr
        with d.client() as client:
            assert all(j["state"] != "failed" for j in client.status()["jobs"]["list"])
        d.stop()
    finally:
        d.cleanup()


def test_repeat_resumes_at_the_right_run(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d = DaemonProcess()
    try:
        d.start()
        with d.client() as client:
            # run 2 waits for the gate; runs 1 and 3 go straight through
            job_id = client.submit(
                {
                    "name": "r",
                    "repeat": 3,
                    "namespace": {"seed": 42},
                    "retries": 1,
                    "root": {
                        "name": "tick",
                        **sh(
                            f'[ "$(cat {tmp_path}/count 2>/dev/null)" != 1 ] || '
                            f"until [ -e {gate} ]; do sleep 0.01; done; "
                            f"echo $(( $(cat {tmp_path}/count 2>/dev/null || echo 0) + 1 )) "
                            f"> {tmp_path}/count.new && mv {tmp_path}/count.new {tmp_path}/count"
                        ),
                    },
                }
            )["id"]
            deadline = time.monotonic() + 30
            while client.status(job_id)["job"]["run"] < 2:
                assert time.monotonic() < deadline
                client.wait(job_id, timeout=0.05)
            wait_task_state(client, job_id, "tick")
        d.crash()
        gate.touch()
        d.restart()
        with d.client() as client:
            status = client.wait(job_id, timeout=30)["status"]
        assert status["job"]["state"] == "completed" and status["job"]["run"] == 3
        assert [r["run"] for r in status["job"]["runs"]] == [1, 2, 3]
        assert status["job"]["namespace"] == {"seed": 42}
        assert (tmp_path / "count").read_text().strip() == "3"
        d.stop()
    finally:
        d.cleanup()


def test_fault_injection_nothing_accepted_is_lost(tmp_path: Path) -> None:
    """Kill the daemon at random moments during submissions and completions, 30 times."""
    rng = random.Random(20261123)
    marks = tmp_path / "marks"
    marks.mkdir()
    d = DaemonProcess(extra_args=["--workers", "2"])
    acked: list[str] = []
    try:
        for _round in range(30):
            d.start()
            stop = threading.Event()

            def submitter(stop: threading.Event = stop) -> None:
                with Client(d.socket, timeout=1) as client:
                    while not stop.wait(0.005):
                        n = len(acked)
                        doc = {
                            "name": f"f{n}",
                            "key": f"fault-{n}",
                            "retries": 0,  # interruptions by the crashes use no retry
                            "root": {
                                "sequential": [
                                    {
                                        "name": f"a{i}",
                                        "cmd": [
                                            "sh",
                                            "-c",
                                            f'echo "$PROCPOOL_ATTEMPT" >> {marks}/$PROCPOOL_TASK_ID',
                                        ],
                                    }
                                    for i in range(3)
                                ]
                            },
                        }
                        try:
                            acked.append(client.submit(doc)["id"])
                        except ProcpoolError:
                            return  # the daemon died under us: that submit was not acknowledged

            thread = threading.Thread(target=submitter)
            thread.start()
            time.sleep(rng.uniform(0.02, 0.3))
            d.crash()
            stop.set()
            thread.join(30)
        d.start()
        with d.client() as client:
            for job_id in acked:  # every acknowledged job exists and finishes
                result = client.wait(job_id, timeout=60)
                assert result["finished"], result
                if result["state"] != "completed":  # only a task interrupted over max_interruptions (3)
                    assert any(
                        t["error"] and t["error"]["type"] == "Interrupted" and t["attempts"] == 4
                        for t in result["status"]["tasks"]
                    ), result
                    continue
                for t in result["status"]["tasks"]:
                    attempts = (marks / t["id"]).read_text().split()
                    completing = str(t["attempts"])
                    # the recorded completing attempt wrote its mark exactly once, and no attempt
                    # ran after the completion was recorded
                    assert attempts.count(completing) == 1, (t, attempts)
                    assert all(int(a) <= int(completing) for a in attempts), (t, attempts)
            stored = {j["id"] for j in client.status(limit=10_000)["jobs"]["list"]}
            assert set(acked) <= stored
            # a submit committed just before a crash loses only its reply: at most one per crash, and
            # resubmitting with the same key returns it (the next round does exactly that)
            assert len(stored - set(acked)) <= 30
        assert len(acked) >= 30
        d.stop()
    finally:
        d.cleanup()


def test_corrupt_or_newer_state_file_is_refused(tmp_path: Path) -> None:
    d = DaemonProcess()
    try:
        d.state_dir.mkdir(parents=True)
        db = d.state_dir / "state.db"
        db.write_bytes(b"this is not a database" * 100)
        out = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert f"state file {db} cannot be opened" in out.stderr and "mv " in out.stderr
        assert db.read_bytes().startswith(b"this is not")  # never silently replaced
        db.unlink()
        d.start()
        d.stop()
        con = sqlite3.connect(db)
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
        con.commit()
        con.close()
        out = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "schema version 99, newer than" in out.stderr
        assert not d.socket.exists()
    finally:
        d.cleanup()


def test_status_json_lists_jobs_from_the_store(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit({"name": "x", "root": {"cmd": ["true"]}})["id"]
        client.wait(job_id, timeout=30)
    out = daemon.procctl("--json", "status")
    data = json.loads(out.stdout)
    assert data["store"]["commits"] >= 2 and data["jobs"]["list"][0]["id"] == job_id


def test_a_crash_in_a_later_run_reruns_the_tasks_that_had_not_run_yet(tmp_path: Path) -> None:
    gate, marks = tmp_path / "gate", tmp_path / "after-ran"
    d = DaemonProcess()
    try:
        d.start()
        with d.client() as client:
            # run 2's first task waits for the gate; "after" must then still run in runs 2 and 3
            job_id = client.submit(
                {
                    "name": "r2",
                    "repeat": 3,
                    "retries": 1,
                    "root": {
                        "sequential": [
                            {"name": "first", **sh(f'[ "$(wc -l < {marks} 2>/dev/null)" != 1 ] || '
                                                   f"until [ -e {gate} ]; do sleep 0.01; done")},
                            {"name": "after", **sh(f"echo ran >> {marks}")},
                        ]
                    },
                }
            )["id"]
            wait_until(lambda: client.status(job_id), lambda s: s["job"]["run"] == 2, what="run 2")
            wait_task_state(client, job_id, "first")
        d.crash()
        gate.touch()
        d.restart()
        with d.client() as client:
            status = client.wait(job_id, timeout=30)["status"]
        assert status["job"]["state"] == "completed" and status["job"]["run"] == 3
        assert marks.read_text().split() == ["ran", "ran", "ran"]
        d.stop()
    finally:
        d.cleanup()

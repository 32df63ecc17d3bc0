"""``procctl explain`` against a real daemon: each reason a task can be held back for, said as the
scheduler recorded it, and how a finished task's attempts ended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job, sh, tasks_by_name, wait_task_state
from tests.support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])


def gate_task(name: str, gate: Path, **extra: Any) -> dict[str, Any]:
    """A command that runs until the file ``gate`` exists."""
    return {"name": name, **sh(f"until [ -e {gate} ]; do sleep 0.01; done"), **extra}


def explain(daemon: DaemonProcess, ref: str) -> dict[str, Any]:
    with daemon.client() as client:
        return client.explain(ref)


def test_a_task_waiting_on_a_dependency_names_it_and_its_state(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with daemon.client() as client:
        job_id = client.submit({"name": "deps", "root": {"sequential": [
            gate_task("fetch", gate), {"name": "report", "cmd": ["true"]}]}})["id"]
        wait_task_state(client, job_id, "fetch")
        answer = client.explain(f"{job_id}/report")
        assert answer["reason"] == "dependency" and answer["state"] == "pending"
        fetch = {"kind": "task", "id": f"{job_id}.0", "name": "fetch", "state": "running"}
        assert answer["waiting_for"] == [fetch]
        out = daemon.procctl("explain", f"{job_id}.1")
        assert out.returncode == 0, out.stderr
        assert f'task {job_id}.1 "report" is pending' in out.stdout
        assert f'waits for its dependency to complete: task "fetch" ({job_id}.0, running since' in out.stdout
        whole = daemon.procctl("explain", job_id)
        assert whole.returncode == 0, whole.stderr
        assert "unfinished tasks: 1 running, 1 waiting on dependencies" in whole.stdout
        assert "attempt 1 is running since" in whole.stdout
        gate.touch()
        assert client.wait(job_id, timeout=30)["state"] == "completed"


@pytest.mark.daemon_args("--workers", "1")
def test_a_ready_task_behind_higher_priority_with_every_slot_busy(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with daemon.client() as client:
        busy = client.submit({"name": "busy", "root": gate_task("hog", gate)})["id"]
        wait_task_state(client, busy, "hog")
        waiting = client.submit({"name": "normal", "root": {"name": "mine", "cmd": ["true"]}})["id"]
        first_task = {"name": "first", "cmd": ["true"], "priority": "critical"}
        urgent = client.submit({"name": "urgent", "root": first_task})["id"]
        answer = client.explain(f"{waiting}/mine")
        assert answer["state"] == "ready" and answer["reason"] == "no_free_slot"
        assert answer["queue"]["engine"] == "commands"
        assert (answer["queue"]["position"], answer["queue"]["of"]) == (2, 2)
        assert answer["queue"]["ahead"] == {"critical": 1}
        assert answer["engine"]["free"] == 0 and answer["engine"]["full_since"] is not None
        text = "\n".join(answer["text"])
        assert 'number 2 of the 2 ready tasks of engine "commands"; ahead of it: 1 at a higher ' \
            "priority" in text
        assert 'no free slot: engine "commands" has 1 attempt running and no room for another' in text
        assert "the scheduler found it full at" in text
        first = client.explain(f"{urgent}.0")
        assert first["queue"]["position"] == 1 and "the next to start" in first["text"][0]
        gate.touch()
        for job_id in (busy, urgent, waiting):
            assert client.wait(job_id, timeout=30)["state"] == "completed"


@pytest.mark.daemon_args("--workers", "1")
def test_a_call_waiting_for_the_pools_one_busy_worker(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    call = {"python_path": [ROOT]}
    with daemon.client() as client:
        busy = client.submit({"name": "busy", **call, "root": {
            "name": "block", "call": "tests.support.tasks:progress_then_wait", "args": [str(gate)]}})["id"]
        wait_task_state(client, busy, "block")
        queued = client.submit({"name": "queued", **call, "root": {"concurrent": [
            {"name": f"add{i}", "call": "tests.support.tasks:add", "args": [i, 1]} for i in range(3)]}})["id"]
        answer = client.explain(f"{queued}/add2")
        assert answer["reason"] == "no_free_slot" and answer["queue"]["engine"] == "pool"
        assert (answer["queue"]["position"], answer["queue"]["ahead"]) == (3, {"normal": 2})
        text = "\n".join(answer["text"])
        assert "ahead of it: 2 at the same priority, queued earlier" in text
        assert 'no free slot: engine "pool" has its one worker busy' in text
        gate.touch()
        assert client.wait(queued, timeout=30)["state"] == "completed"
        assert client.wait(busy, timeout=30)["state"] == "completed"


def test_a_retry_delay_with_the_time_left(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = client.submit({"name": "retry", "root": {
            "name": "flaky", **sh("echo nope >&2; exit 3"), "retries": 2, "retry_delay": 120}})["id"]
        wait_until(lambda: client.status(job_id), lambda s: s["tasks"][0]["retry_at"] is not None,
                   what="the first attempt to fail")
        answer = client.explain(f"{job_id}/flaky")
        assert answer["reason"] == "retry_delay" and answer["code"] == "retry_wait"
        assert 0 < answer["retry_in"] <= 1.2 * 120
        assert answer["text"][0].startswith("attempt 1 failed")
        assert "it runs again in" in answer["text"][0] and "retry 1 of 2" in answer["text"][0]
        assert any(line.strip().startswith("attempt 1 failed: started") for line in answer["text"][1:])
        client.cancel(job_id)
        assert client.wait(job_id, timeout=30)["state"] == "cancelled"


def test_a_job_waiting_for_its_after_prerequisite(daemon: DaemonProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with daemon.client() as client:
        first = client.submit({"name": "first", "root": gate_task("slow", gate)})["id"]
        wait_task_state(client, first, "slow")
        then = {"name": "then", "cmd": ["true"]}
        second = client.submit({"name": "second", "root": then}, after=[first])["id"]
        answer = client.explain(second)
        assert answer["kind"] == "job" and answer["reason"] == "after"
        assert answer["after"] == [{"id": first, "state": "running"}]
        assert answer["unfinished"] == {"after": 1}
        task = client.explain(f"{second}.0")
        assert task["reason"] == "after"
        assert f"waits for its prerequisites (--after) to complete: {first} (running)" in task["text"][0]
        gate.touch()
        assert client.wait(second, timeout=30)["state"] == "completed"


def test_skipped_after_a_failed_dependency_read_back_once_the_job_finished(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"sequential": [{"name": "fetch", **sh("exit 4")},
                                             {"name": "load", "cmd": ["true"]}]})
    job_id = status["job"]["id"]
    assert tasks_by_name(status)["load"]["state"] == "skipped"
    answer = explain(daemon, f"{job_id}/load")
    assert answer["reason"] == "upstream" and answer["code"] == "upstream"
    assert answer["upstream"]["id"] == f"{job_id}.0" and answer["upstream"]["state"] == "failed"
    assert answer["text"][0].startswith(f'skipped: it comes after task "fetch" ({job_id}.0), which failed')
    out = daemon.procctl("--json", "explain", f"{job_id}/load")
    assert out.returncode == 0 and json.loads(out.stdout)["upstream"]["name"] == "fetch"
    whole = explain(daemon, job_id)  # a finished job: the tasks that failed
    assert whole["reason"] == "failed" and [t["name"] for t in whole["tasks"]] == ["fetch"]
    assert "exit status 4" in whole["tasks"][0]["text"][0]


def test_a_finished_task_tells_how_each_attempt_ended(daemon: DaemonProcess, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    status = run_job(daemon, {"name": "flaky", **sh(f"test -e {marker} || {{ touch {marker}; exit 1; }}"),
                              "retries": 2, "retry_delay": 0})
    job_id = status["job"]["id"]
    answer = explain(daemon, f"{job_id}.0")
    assert answer["reason"] == "completed" and len(answer["attempts"]) == 2
    text = answer["text"]
    assert text[0].startswith("completed at ") and text[0].endswith("after 2 attempts")
    assert text[1].strip().startswith("attempt 1 failed: started") and "(pid " in text[1]
    assert "the next attempt started" in text[1]
    assert text[2].strip().startswith("attempt 2 completed: started")
    out = daemon.procctl("explain", f"{job_id}.0")
    assert out.returncode == 0 and "attempt 2 completed" in out.stdout


def test_an_unknown_task_is_not_found(daemon: DaemonProcess) -> None:
    out = daemon.procctl("explain", "999.0")
    assert out.returncode == 2 and "no job or task" in out.stderr


def test_a_held_job_after_a_restart_names_resume(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d = DaemonProcess()
    try:
        d.start()
        with d.client() as client:
            job_id = client.submit({"name": "h", "on_interrupt": "hold", "root": {"sequential": [
                gate_task("slow", gate), {"name": "last", "cmd": ["true"]}]}})["id"]
            wait_task_state(client, job_id, "slow")
        d.crash()
        d.restart()
        with d.client() as client:
            answer = client.explain(f"{job_id}/slow")
            assert answer["reason"] == "held" and answer["code"] == "interrupted"
            assert f"'procctl resume {job_id}' releases it" in answer["text"][0]
            assert "its attempt 1 was interrupted by that restart" in answer["text"][1]
            assert client.explain(job_id)["unfinished"] == {"held": 2}
            gate.touch()
            client.resume(job_id)
            assert client.wait(job_id, timeout=30)["state"] == "completed"
        d.stop()
    finally:
        d.cleanup()

"""Pause and resume through ``procctl`` against a real daemon: a job (its running attempts finish,
nothing new of it starts; ``--stop`` runs them again without using a retry), the whole daemon
(``--all``: a job submitted meanwhile waits), across a restart, and who may pause what.

No test waits on a guess of how long something takes: a task made ready while its job is paused is
made ready in the same loop callback as its predecessor's completion, and a pump pass that could
start it runs before the daemon answers the next request; so once a status shows the predecessor
completed, the task's state there is the one the pause left it in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool import Client
from tests.support.daemon import DaemonProcess, serving
from tests.support.jobs import tasks_by_name, wait_task_started, wait_task_state
from tests.support.users import ThrowawayUsers, probe_folder, procctl_as, throwaway_users
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: Waits until the file ``$0/go`` exists, then notes its task's name in ``$0/log``.
GATED = 'while [ ! -e "$0/go" ]; do sleep 0.05; done; echo "$1" >> "$0/log"'
#: Its first attempt notes ``$0/ran`` and runs until stopped; the next one completes at once.
ONCE_STUBBORN = '[ -e "$0/ran" ] && exit 0; touch "$0/ran"; while :; do sleep 0.05; done'


def gated(folder: Path, name: str) -> dict[str, Any]:
    return {"name": name, "cmd": ["sh", "-c", GATED, str(folder), name]}


def noted(folder: Path, name: str) -> dict[str, Any]:
    return {"name": name, "cmd": ["sh", "-c", 'echo "$1" >> "$0/log"', str(folder), name]}


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(extra_args=["--workers", "2"]).start()) as d:
        yield d


def ok(daemon: DaemonProcess, *args: str) -> str:
    out = daemon.procctl(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def job_state(client: Client, job_id: str) -> str:
    state: str = client.status(job_id)["job"]["state"]
    return state


def finished(client: Client, job_id: str) -> dict[str, Any]:
    result = client.wait(job_id, timeout=30)
    assert result["finished"], f"job {job_id} is still {result['state']}"
    status: dict[str, Any] = result["status"]
    return status


def sequence(client: Client, folder: Path) -> str:
    """A job whose task "a" runs until ``folder/go`` exists, with "b" and "c" queued behind it."""
    steps = [gated(folder, "a"), noted(folder, "b"), noted(folder, "c")]
    job = {"name": "paused", "root": {"sequential": steps}}
    job_id: str = client.submit(job)["id"]
    wait_task_started(client, job_id, "a")
    return job_id


def test_a_paused_job_finishes_what_runs_starts_nothing_and_completes_at_resume(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    with daemon.client() as client:
        job_id = sequence(client, tmp_path)
        assert f"job {job_id} paused; procctl resume {job_id} ends it" in ok(daemon, "pause", job_id)
        assert job_state(client, job_id) == "paused"
        listed = ok(daemon, "status", "--state", "paused")
        assert job_id in listed and "paused" in listed
        (tmp_path / "go").touch()  # the running attempt finishes ...
        status = wait_task_state(client, job_id, "a", "completed")
        tasks = tasks_by_name(status)
        assert tasks["b"]["state"] == "ready" and not tasks["b"]["attempt_history"]  # ... and nothing starts
        assert status["job"]["state"] == "paused"
        assert (tmp_path / "log").read_text() == "a\n"
        explained = json.loads(ok(daemon, "--json", "explain", job_id))
        assert explained["reason"] == "paused" and explained["paused"]["by"].startswith("root")
        words = "\n".join(explained["text"])
        assert "paused by root" in words and f"procctl resume {job_id}" in words
        task = json.loads(ok(daemon, "--json", "explain", f"{job_id}/b"))
        assert task["reason"] == "paused"
        # Pausing again, or resuming what is not paused, says so.
        again = daemon.procctl("pause", job_id)
        assert again.returncode != 0 and "paused already" in again.stderr
        assert f"job {job_id} resumed (it was paused)" in ok(daemon, "resume", job_id)
        assert finished(client, job_id)["job"]["state"] == "completed"
        assert (tmp_path / "log").read_text() == "a\nb\nc\n"
        out = daemon.procctl("resume", job_id)
        assert out.returncode != 0 and "not held or paused" in out.stderr


def test_pause_stop_runs_the_stopped_attempt_again_at_resume_without_using_a_retry(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    with daemon.client() as client:
        job = {"name": "stopped", "root": {"name": "a", "retries": 0,
                                           "cmd": ["sh", "-c", ONCE_STUBBORN, str(tmp_path)]}}
        job_id = client.submit(job)["id"]
        wait_until((tmp_path / "ran").exists, what="the first attempt to start")
        wait_task_started(client, job_id, "a")
        out = ok(daemon, "pause", job_id, "--stop")
        assert "stopping 1 running attempt" in out
        status = wait_task_state(client, job_id, "a", "ready")  # stopped, and not started again
        (attempt,) = tasks_by_name(status)["a"]["attempt_history"]
        assert attempt["status"] == "paused"
        assert status["job"]["state"] == "paused"
        ok(daemon, "resume", job_id)
        status = finished(client, job_id)
    task = tasks_by_name(status)["a"]
    assert status["job"]["state"] == "completed" and task["state"] == "completed"
    assert [a["status"] for a in task["attempt_history"]] == ["paused", "completed"]


def test_pause_all_holds_a_new_job_until_resume_all_and_the_daemon_says_so(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    out = ok(daemon, "pause", "--all")
    assert "procpoold paused: nothing new starts; procctl resume --all ends it" in out
    with daemon.client() as client:
        job_id = client.submit({"name": "later", "root": noted(tmp_path, "x")})["id"]  # accepted
        assert client.status(job_id)["job"]["state"] == "queued"
        summary = ok(daemon, "status")
        assert "PAUSED   by root" in summary and "procctl resume --all" in summary
        health = daemon.procctl("health")
        assert health.returncode == 1 and "degraded" in health.stdout and "paused" in health.stdout
        explained = json.loads(ok(daemon, "--json", "explain", f"{job_id}/x"))
        assert explained["reason"] == "paused" and explained.get("daemon_paused") is True
        assert "procctl resume --all" in "\n".join(explained["text"])
        assert not (tmp_path / "log").exists()  # nothing started
        assert client.status(job_id)["job"]["state"] == "queued"
        assert "procpoold resumed" in ok(daemon, "resume", "--all")
        assert finished(client, job_id)["job"]["state"] == "completed"
    assert (tmp_path / "log").read_text() == "x\n"
    assert daemon.procctl("health").returncode == 0
    out = daemon.procctl("resume", "--all")
    assert out.returncode != 0 and "not paused" in out.stderr
    out = daemon.procctl("pause")
    assert out.returncode == 2 and "give one of a job ID, --queue NAME" in out.stderr


def test_a_pause_of_a_job_and_of_the_daemon_survives_a_restart(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        job_id = sequence(client, tmp_path)
        ok(daemon, "pause", job_id)
        (tmp_path / "go").touch()
        wait_task_state(client, job_id, "a", "completed")
        ok(daemon, "pause", "--all")
    daemon.stop()
    daemon.restart()
    with daemon.client() as client:
        status = client.status(job_id)
        assert status["job"]["state"] == "paused"
        assert tasks_by_name(status)["b"]["state"] == "ready"
        assert "PAUSED   by root" in ok(daemon, "status")
        ok(daemon, "resume", job_id)  # the job is released; the daemon still starts nothing
        assert job_state(client, job_id) in ("queued", "running")
        explained = json.loads(ok(daemon, "--json", "explain", f"{job_id}/b"))
        assert explained["reason"] == "paused" and explained.get("daemon_paused") is True
        assert (tmp_path / "log").read_text() == "a\n"
        ok(daemon, "resume", "--all")
        assert finished(client, job_id)["job"]["state"] == "completed"
    assert (tmp_path / "log").read_text() == "a\nb\nc\n"


@pytest.fixture
def two_users() -> Iterator[tuple[ThrowawayUsers, DaemonProcess]]:
    """Two throwaway users that reach a daemon running as root through its group."""
    with throwaway_users(2) as users, probe_folder() as probes:
        daemon = DaemonProcess(extra_args=["--workers", "2", "--config", str(probes / "procpoold.toml")])
        (probes / "procpoold.toml").write_text(f'group = "{users.group}"\n')
        daemon.dir.chmod(0o755)  # the users reach run/ (the daemon's group may enter it) only
        with serving(daemon.start()):
            yield users, daemon


def test_only_the_owner_or_an_administrator_pauses_a_job_and_only_an_administrator_the_daemon(
    two_users: tuple[ThrowawayUsers, DaemonProcess],
) -> None:
    users, daemon = two_users
    alice, bob = users.users
    socket = str(daemon.socket)
    out = procctl_as(alice.name, socket, "run", "--", "sleep", "300")
    assert out.returncode == 0, out.stderr
    mine = out.stdout.strip()
    with daemon.client() as client:
        wait_task_started(client, mine, next(iter(tasks_by_name(client.status(mine)))))
        out = procctl_as(bob.name, socket, "pause", mine)
        assert out.returncode == 4 and "only its submitter" in out.stderr, out.stdout + out.stderr
        out = procctl_as(alice.name, socket, "pause", "--all")
        assert out.returncode == 4 and "only an administrator" in out.stderr, out.stdout + out.stderr
        assert job_state(client, mine) == "running"
        out = procctl_as(alice.name, socket, "pause", mine)
        assert out.returncode == 0, out.stderr
        out = procctl_as(bob.name, socket, "resume", mine)
        assert out.returncode == 4, out.stdout + out.stderr
        assert job_state(client, mine) == "paused"
        explained = client.explain(mine)
        assert f"paused by {alice.name}" in "\n".join(explained["text"])
        ok(daemon, "resume", mine)  # an administrator may
        assert job_state(client, mine) == "running"
        ok(daemon, "cancel", mine, "--kill")
        assert finished(client, mine)["job"]["state"] == "cancelled"

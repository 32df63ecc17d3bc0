"""Stop versus kill through ``procctl`` against a real daemon, on each engine (the local ones and a
Dask cluster): ``cancel --kill``, ``--signal``, ``--grace``, ``kill_grace`` per job and per task,
several ids, filters with ``--yes``, ``stop`` of a repeating job, and ``--key K --replace``.

No test waits on a guess of how long something takes: a job whose ``kill_grace`` is 300 s can
only finish within the tests' 30 s waits if the cancel's own signal or grace ended it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool import Client, ProcpoolError
from tests.support.daemon import DaemonProcess, serving
from tests.support.fixtures import each_engine
from tests.support.jobs import sh, tasks_by_name, wait_task_started
from tests.support.terminal import Terminal, procctl
from tests.support.users import ThrowawayUsers, probe_folder, procctl_as, throwaway_users
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

engine = each_engine()

ROOT = str(Path(__file__).resolve().parents[2])
#: The kill_grace of the jobs below: far longer than any wait of these tests.
LONG = 300
#: A command that notes SIGTERM in ``$1/term`` and goes on (only SIGKILL ends it); it says it is
#: ready in ``$1/ready`` once its trap is set.
TRAPS_TERM = "trap 'echo term >> \"$0/term\"' TERM; echo ready > \"$0/ready\"; while :; do sleep 0.05; done"


def traps_term(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "stubborn", "cmd": ["sh", "-c", TRAPS_TERM, str(folder)], **extra}


def submit(client: Client, root: dict[str, Any], **extra: Any) -> str:
    job_id: str = client.submit({"name": extra.pop("name", "test"), "root": root, **extra})["id"]
    return job_id


def started(client: Client, job_id: str, ready: Path | None = None) -> None:
    """Until the job's (only) task runs (and, for a command, has set its trap: ``ready``)."""
    name = tasks_by_name(client.status(job_id))
    wait_task_started(client, job_id, next(iter(name)))
    if ready is not None:
        wait_until(ready.exists, what=f"{ready} to exist")


def finished(client: Client, job_id: str) -> dict[str, Any]:
    result = client.wait(job_id, timeout=30)
    assert result["finished"], f"job {job_id} is still {result['state']}"
    status: dict[str, Any] = result["status"]
    return status


def the_task(status: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = status["tasks"][0]
    return task


def test_kill_ends_a_command_that_traps_sigterm_at_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        job_id = submit(client, traps_term(tmp_path), kill_grace=LONG)
        started(client, job_id, tmp_path / "ready")
        out = daemon.procctl("cancel", job_id, "--kill")
        assert out.returncode == 0, out.stderr
        assert f"cancelled {job_id}; stopping 1 running attempt" in out.stdout
        status = finished(client, job_id)
    task = the_task(status)
    assert status["job"]["state"] == "cancelled"
    assert task["state"] == "cancelled" and task["exit_code"] == -9
    assert not (tmp_path / "term").exists()  # SIGKILL only: no SIGTERM first


def test_grace_overrides_the_jobs_kill_grace(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        job_id = submit(client, traps_term(tmp_path), kill_grace=LONG)
        started(client, job_id, tmp_path / "ready")
        out = daemon.procctl("cancel", job_id, "--grace", "2")
        assert out.returncode == 0, out.stderr
        status = finished(client, job_id)  # within 30 s: the job's grace of 300 s did not apply
    task = the_task(status)
    assert task["state"] == "cancelled" and task["exit_code"] == -9
    assert (tmp_path / "term").read_text() == "term\n"  # SIGTERM first, then SIGKILL


def test_a_tasks_kill_grace_overrides_its_jobs(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        job_id = submit(client, traps_term(tmp_path, kill_grace=2), kill_grace=LONG)
        started(client, job_id, tmp_path / "ready")
        assert daemon.procctl("cancel", job_id).returncode == 0
        status = finished(client, job_id)
    assert the_task(status)["exit_code"] == -9
    assert (tmp_path / "term").read_text() == "term\n"


def test_a_tasks_kill_grace_applies_to_its_timeout(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        # (the timeout counts from dispatch: long enough for a loaded machine's sh to set its trap)
        job_id = submit(client, traps_term(tmp_path, kill_grace=2, timeout=3), kill_grace=LONG)
        status = finished(client, job_id)
    task = the_task(status)
    assert task["state"] == "timeout" and task["exit_code"] == -9
    assert (tmp_path / "term").read_text() == "term\n"


def test_run_kill_grace_sets_the_tasks(daemon: DaemonProcess, tmp_path: Path) -> None:
    out = daemon.procctl("run", "--kill-grace", "0.2", "--", "sh", "-c", TRAPS_TERM, str(tmp_path))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    with daemon.client() as client:
        started(client, job_id, tmp_path / "ready")
        assert daemon.procctl("cancel", job_id).returncode == 0
        status = finished(client, job_id)  # (the daemon's kill_grace is 5 s: both are quick here)
    assert the_task(status)["exit_code"] == -9
    out = daemon.procctl("run", "--kill-grace", "-1", "--", "true")
    assert out.returncode == 2


def test_a_second_cancel_with_kill_ends_the_first_ones_grace(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as client:
        job_id = submit(client, traps_term(tmp_path), kill_grace=LONG)
        started(client, job_id, tmp_path / "ready")
        assert daemon.procctl("cancel", job_id).returncode == 0  # SIGTERM, then 300 s of grace
        wait_until(lambda: (tmp_path / "term").exists(), what="the first cancel's SIGTERM")
        out = daemon.procctl("cancel", job_id, "--kill")
        assert out.returncode == 0, out.stderr
        status = finished(client, job_id)
    assert the_task(status)["exit_code"] == -9


def test_signal_int_reaches_the_command(daemon: DaemonProcess, tmp_path: Path) -> None:
    script = ("trap 'echo int > \"$0/got\"; exit 3' INT; echo ready > \"$0/ready\"; "
              "while :; do sleep 0.05; done")
    with daemon.client() as client:
        job_id = submit(client, {"name": "int", "cmd": ["sh", "-c", script, str(tmp_path)]}, kill_grace=LONG)
        started(client, job_id, tmp_path / "ready")
        out = daemon.procctl("cancel", job_id, "--signal", "int")
        assert out.returncode == 0, out.stderr
        status = finished(client, job_id)
    task = the_task(status)
    assert (tmp_path / "got").read_text() == "int\n"
    assert task["state"] == "cancelled" and task["exit_code"] == 3


def test_a_call_task_sees_sigint_as_keyboardinterrupt(daemon: DaemonProcess) -> None:
    call = {"name": "spin", "call": "tests.support.tasks:sleep_forever"}
    with daemon.client() as client:
        job_id = submit(client, call, python_path=[ROOT], kill_grace=LONG)
        started(client, job_id)
        out = daemon.procctl("cancel", job_id, "--signal", "SIGINT")
        assert out.returncode == 0, out.stderr
        status = finished(client, job_id)
    task = the_task(status)
    assert task["state"] == "cancelled"
    assert task["error"]["type"] == "Cancelled"
    assert "SIGINT" in task["error"]["message"], task["error"]


def test_kill_ends_a_call_task_at_once(daemon: DaemonProcess) -> None:
    call = {"name": "spin", "call": "tests.support.tasks:sleep_forever"}
    with daemon.client() as client:
        job_id = submit(client, call, python_path=[ROOT], kill_grace=LONG)
        started(client, job_id)
        assert daemon.procctl("cancel", job_id, "--kill").returncode == 0
        status = finished(client, job_id)
    assert the_task(status)["state"] == "cancelled"


def test_unknown_signal_and_kill_with_signal_are_refused(daemon: DaemonProcess) -> None:
    out = daemon.procctl("cancel", "1", "--signal", "STOP")
    assert out.returncode == 2 and "unknown or unsuitable signal" in out.stderr
    out = daemon.procctl("cancel", "1", "--kill", "--signal", "INT")
    assert out.returncode == 2 and "exclude each other" in out.stderr
    with daemon.client() as client, pytest.raises(ProcpoolError, match="signal"):
        client.call("cancel", {"id": "1", "signal": "SIGSTOP"})


def test_several_ids_at_once(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        done = client.submit({"name": "quick", "root": {"cmd": ["true"]}}, wait=30)
        assert done["state"] == "completed"
        a = submit(client, sh("sleep 300"), name="a")
        b = submit(client, sh("sleep 300"), name="b")
        started(client, a)
        started(client, b)
        out = daemon.procctl("cancel", a, b, done["id"])
        assert out.returncode == 0, out.stderr
        assert f"cancelled {a}, {b}; stopping 2 running attempts" in out.stdout
        assert f"{done['id']}: already completed" in out.stdout
        assert finished(client, a)["job"]["state"] == "cancelled"
        assert finished(client, b)["job"]["state"] == "cancelled"
        out = daemon.procctl("cancel", a, "999999")
        assert out.returncode == 2 and "999999" in out.stderr  # an unknown id: nothing is done


@pytest.mark.daemon_args("--workers", "4")
def test_a_filter_needs_yes_off_a_terminal(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        batch = [submit(client, sh("sleep 300"), name=f"batch-{i}") for i in range(2)]
        other = submit(client, sh("sleep 300"), name="other")
        for job_id in [*batch, other]:
            started(client, job_id)
        out = daemon.procctl("cancel", "--name", "batch-*")
        assert out.returncode == 2, out.stdout
        assert "matches 2 jobs" in out.stderr and "--yes" in out.stderr
        assert client.status(batch[0])["job"]["state"] == "running"  # nothing was cancelled
        out = daemon.procctl("--json", "cancel", "--name", "batch-*", "--state", "running", "--yes")
        assert out.returncode == 0, out.stderr
        reply = json.loads(out.stdout)
        assert reply["cancelled"] == batch and reply["stopping"] == 2 and reply["others_left"] == 0
        for job_id in batch:
            assert finished(client, job_id)["job"]["state"] == "cancelled"
        assert client.status(other)["job"]["state"] == "running"
        out = daemon.procctl("cancel", "--name", "other")  # one job: no question asked
        assert out.returncode == 0, out.stderr
        assert f"cancelled {other}" in out.stdout
        finished(client, other)
        out = daemon.procctl("cancel", "--all")
        assert out.returncode == 0 and "no unfinished job matches" in out.stdout


@pytest.mark.daemon_args("--workers", "4")
def test_a_filter_asks_on_a_terminal(daemon: DaemonProcess, engine: str) -> None:
    if engine != "local":
        pytest.skip("procctl's question is the same whatever the engine: tested once")
    with daemon.client() as client:
        jobs = [submit(client, sh("sleep 300"), name=f"ask-{i}") for i in range(2)]
        with Terminal(procctl(daemon.socket, "cancel", "--name", "ask-*")) as term:
            term.wait_for(lambda t: f"cancel 2 jobs ({jobs[0]}, {jobs[1]})? [y/N]" in t, "the question")
            term.send("n\r")
            assert term.finish() == 1
        assert client.status(jobs[0])["job"]["state"] in ("queued", "running")
        with Terminal(procctl(daemon.socket, "cancel", "--name", "ask-*")) as term:
            term.wait_for(lambda t: "[y/N]" in t, "the question")
            term.send("y\r")
            term.wait_for(lambda t: f"cancelled {jobs[0]}, {jobs[1]}" in t, "the answer")
            assert term.finish() == 0
        for job_id in jobs:
            assert finished(client, job_id)["job"]["state"] == "cancelled"


def test_stop_ends_a_forever_job_after_its_current_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    script = f'echo run >> "{runs}"; until [ -e "{gate}" ]; do sleep 0.02; done'
    with daemon.client() as client:
        job_id = submit(client, {"name": "cycle", **sh(script)}, repeat="forever")
        wait_until(lambda: runs.exists() and runs.read_text().count("run") == 1, what="run 1 to start")
        out = daemon.procctl("stop", job_id)
        assert out.returncode == 0, out.stderr
        assert f"job {job_id} ends after run 1" in out.stdout
        gate.write_text("")
        status = finished(client, job_id)
        explained = client.explain(job_id)
    assert runs.read_text().count("run") == 1  # no second run
    job = status["job"]
    assert job["state"] == "completed" and job["run"] == 1
    assert job["reason"].startswith("stopped by ") and "no run after run 1" in job["reason"]
    assert explained["stopped"] is True
    assert any("stopped by" in line for line in explained["text"]), explained["text"]
    out = daemon.procctl("stop", job_id)
    assert out.returncode == 1 and "already completed" in out.stderr


def test_a_stop_survives_a_crash_of_the_daemon(daemon: DaemonProcess, tmp_path: Path, engine: str) -> None:
    if engine != "local":
        pytest.skip("the stop is the scheduler's state, whatever the engine: tested once")
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    script = f'echo run >> "{runs}"; until [ -e "{gate}" ]; do sleep 0.02; done'
    with daemon.client() as client:
        job_id = submit(client, {"name": "cycle", **sh(script)}, repeat="forever")
        wait_until(lambda: runs.exists() and runs.read_text().count("run") == 1, what="run 1 to start")
        assert daemon.procctl("stop", job_id).returncode == 0
    daemon.crash()
    daemon.restart()
    with daemon.client() as client:
        # the interrupted attempt of run 1 runs again (on_interrupt: retry), and no run follows
        wait_until(lambda: runs.read_text().count("run") == 2, what="run 1's attempt to run again")
        gate.write_text("")
        status = finished(client, job_id)
    assert status["job"]["state"] == "completed" and status["job"]["run"] == 1
    assert "no run after run 1" in status["job"]["reason"]
    assert runs.read_text().count("run") == 2


def test_stop_of_a_job_that_does_not_repeat_is_refused(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id = submit(client, sh("sleep 300"))
        out = daemon.procctl("stop", job_id)
        assert out.returncode == 1 and "does not repeat" in out.stderr and "cancel" in out.stderr
        client.cancel(job_id, signal="SIGKILL")
        finished(client, job_id)


def test_replace_cancels_the_running_job_of_the_same_key(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        out = daemon.procctl("run", "--key", "build-main", "--", "sleep", "300")
        assert out.returncode == 0, out.stderr
        first = out.stdout.strip()
        started(client, first)
        out = daemon.procctl("run", "--key", "build-main", "--", "true")  # no --replace: the same job
        assert out.stdout.strip() == first and "already submitted" in out.stderr
        out = daemon.procctl("run", "--key", "build-main", "--replace", "--", "true")
        assert out.returncode == 0, out.stderr
        second = out.stdout.strip()
        assert second != first and f"replaced job {first}" in out.stderr
        old = finished(client, first)
        assert old["job"]["state"] == "cancelled"
        assert old["job"]["reason"] == f"replaced by job {second}"
        assert the_task(old)["error"]["message"].startswith(f"replaced by job {second}")
        assert finished(client, second)["job"]["state"] == "completed"
        # The key is the new job's now; once it has finished, a replace is a new job, and
        # without --replace the finished job is returned (as for any known key).
        out = daemon.procctl("run", "--key", "build-main", "--", "true")
        assert out.stdout.strip() == second
        out = daemon.procctl("--json", "run", "--key", "build-main", "--replace", "--", "true")
        reply = json.loads(out.stdout)
        assert reply["id"] not in (first, second) and reply["replaced"] == [] and not reply["existing"]
        assert finished(client, reply["id"])["job"]["state"] == "completed"


def test_replace_needs_a_key(daemon: DaemonProcess, tmp_path: Path) -> None:
    out = daemon.procctl("run", "--replace", "--", "true")
    assert out.returncode == 2 and "--replace needs --key" in out.stderr
    with daemon.client() as client, pytest.raises(ProcpoolError, match="key"):
        client.submit({"root": {"cmd": ["true"]}}, replace=True)


@pytest.fixture
def two_users() -> Iterator[tuple[ThrowawayUsers, DaemonProcess]]:
    """Two throwaway users that reach a daemon running as root through its group."""
    with throwaway_users(2) as users, probe_folder() as probes:
        daemon = DaemonProcess(extra_args=["--workers", "4", "--config", str(probes / "procpoold.toml")])
        (probes / "procpoold.toml").write_text(f'group = "{users.group}"\n')
        daemon.dir.chmod(0o755)  # the users reach run/ (the daemon's group may enter it) only
        with serving(daemon.start()):
            yield users, daemon


def test_replace_and_filters_act_only_on_jobs_the_caller_may_change(
    two_users: tuple[ThrowawayUsers, DaemonProcess], engine: str
) -> None:
    if engine != "local":
        pytest.skip("the access rules are the daemon's, whatever the engine: tested once")
    users, daemon = two_users
    alice, bob = users.users
    socket = str(daemon.socket)
    out = procctl_as(alice.name, socket, "run", "--key", "deploy", "--", "sleep", "300")
    assert out.returncode == 0, out.stderr
    mine = out.stdout.strip()
    with daemon.client() as client:
        started(client, mine)
        # Bob's replace finds alice's running job with that key: refused, and nothing changes.
        out = procctl_as(bob.name, socket, "run", "--key", "deploy", "--replace", "--", "true")
        assert out.returncode == 4, out.stdout + out.stderr
        assert f"job {mine}" in out.stderr and "only its submitter" in out.stderr
        # Bob's filter leaves alice's job, and says so; his cancel of it by id is refused.
        out = procctl_as(bob.name, socket, "cancel", "--all", "--yes")
        assert out.returncode == 0, out.stderr
        assert "no unfinished job matches (1 of other users left)" in out.stdout
        out = procctl_as(bob.name, socket, "cancel", mine, "999")
        assert out.returncode in (2, 4), out.stderr  # (999 is unknown, or job is alice's: nothing done)
        assert client.status(mine)["job"]["state"] == "running"
        # An administrator (root) may replace it.
        out = daemon.procctl("run", "--key", "deploy", "--replace", "--", "true")
        assert out.returncode == 0, out.stderr
        new = out.stdout.strip()
        old = finished(client, mine)
        assert old["job"]["state"] == "cancelled" and old["job"]["reason"] == f"replaced by job {new}"
        assert finished(client, new)["job"]["state"] == "completed"

"""Jobs on a clock through ``procctl`` against a real daemon: "every" between runs, a cron
"schedule" waiting for its first time, the ``scheduled`` state in status and explain, stop and
cancel while scheduled, validation, and the "missed" policy across a restart of the daemon.

No test guesses how long something takes: the waits poll for states, and a time between runs is
checked from below (a run cannot start before its time) or read from the job's next_run_at.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from procpool import Client
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def stamping(marks: Path, **extra: Any) -> dict[str, Any]:
    """A job whose run appends the time it ran to ``marks``."""
    cmd = ["python3", "-c", "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n')", str(marks)]
    return {"name": "periodic", "root": {"name": "stamp", "cmd": cmd}, **extra}


def stamps(marks: Path) -> list[float]:
    return [float(line) for line in marks.read_text().split()] if marks.exists() else []


def job_of(client: Client, job_id: str) -> dict[str, Any]:
    head: dict[str, Any] = client.status(job_id)["job"]
    return head


def scheduled(client: Client, job_id: str, run: int) -> dict[str, Any]:
    return wait_until(lambda: job_of(client, job_id),
                      lambda j: j["state"] == "scheduled" and j["run"] == run,
                      timeout=30, what=f"job {job_id} scheduled for run {run}")


def test_every_spaces_the_runs_and_status_shows_the_next_one(daemon: DaemonProcess, tmp_path: Path) -> None:
    quick, slow = tmp_path / "quick", tmp_path / "slow"
    with daemon.client() as client:
        quick_id = client.submit(stamping(quick, every=0.3, repeat=3))["id"]
        slow_id = client.submit(stamping(slow, every=600))["id"]
        head = scheduled(client, slow_id, 2)
        assert head["repeat"] == "forever" and head["next_run_at"] > time.time() + 500
        out = daemon.procctl("status", slow_id)
        assert out.returncode == 0, out.stderr
        assert "scheduled" in out.stdout and "next run: " in out.stdout and "(in 9m" in out.stdout
        explained = json.loads(daemon.procctl("explain", slow_id, "--json").stdout)
        assert explained["reason"] == "scheduled" and explained["next_run_at"] == head["next_run_at"]
        done = client.wait(quick_id, timeout=30)
        assert done["finished"] and done["status"]["job"]["state"] == "completed"
        runs = [r["finished_at"] for r in done["status"]["job"]["runs"]]
        began = stamps(quick)
        assert len(began) == 3 and len(runs) == 3
        for ended, started in zip(runs, began[1:], strict=False):  # never before its time
            assert started >= ended + 0.3
        out = daemon.procctl("stop", slow_id)
        assert out.returncode == 0, out.stderr
        head = job_of(client, slow_id)
        assert head["state"] == "completed" and head["run"] == 1 and head["next_run_at"] is None
        assert "no run after run 1" in head["reason"] and len(stamps(slow)) == 1


def test_a_cron_job_waits_for_its_first_time_and_cancel_ends_it(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    with daemon.client() as client:
        job_id = client.submit(stamping(marks, schedule="0 0 1 1 *", timezone="Europe/Paris"))["id"]
        head = scheduled(client, job_id, 1)
        assert time.gmtime(head["next_run_at"])[1:5] == (12, 31, 23, 0)  # midnight in Paris, in UTC
        out = daemon.procctl("cancel", job_id)
        assert out.returncode == 0, out.stderr
        head = job_of(client, job_id)
        assert head["state"] == "cancelled" and head["counts"]["skipped"] == 1
    assert not marks.exists()


@pytest.mark.parametrize(("fields", "words"), [
    ({"schedule": "61 * * * *"}, "schedule: '61 * * * *' is not a cron schedule"),
    ({"schedule": "* * * * *", "timezone": "Nowhere/Land"}, "timezone: unknown time zone 'Nowhere/Land'"),
    ({"every": 5, "schedule": "@daily"}, 'every: a job has "every" or "schedule", not both'),
])
def test_validate_and_submit_name_a_bad_schedule(
    daemon: DaemonProcess, tmp_path: Path, fields: dict[str, Any], words: str
) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(stamping(tmp_path / "marks", **fields)))
    for command in ("validate", "submit"):
        out = daemon.procctl(command, str(path))
        assert out.returncode != 0 and words in out.stderr, (command, out.stdout, out.stderr)


@pytest.mark.parametrize("missed", ["run_once", "skip"])
def test_a_run_missed_while_the_daemon_was_down_follows_the_missed_policy(
    tmp_path: Path, missed: str
) -> None:
    marks = tmp_path / "marks"
    every = 10.0  # (the restart and the checks below must come before the next slot)
    d = DaemonProcess()
    try:
        d.start()
        with d.client() as client:
            job_id = client.submit(stamping(marks, every=every, missed=missed))["id"]
            due = scheduled(client, job_id, 2)["next_run_at"]
        d.stop()
        wait_until(time.time, lambda now: now > due + 0.2, timeout=30, what="the run's time to pass")
        d.restart()
        with d.client() as client:
            if missed == "run_once":  # one run at once, then on its cadence from its end
                head = scheduled(client, job_id, 3)
                began = stamps(marks)
                assert len(began) == 2 and due < began[1] < head["next_run_at"]
            else:  # the missed run is skipped: the next slot of its cadence that is still to come
                head = job_of(client, job_id)
                assert head["state"] == "scheduled" and head["run"] == 2, head
                slots = (head["next_run_at"] - due) / every
                assert slots >= 1 and abs(slots - round(slots)) < 1e-6
                assert len(stamps(marks)) == 1
            client.cancel(job_id)
        d.stop()
    finally:
        d.stop(check=False)
        d.cleanup()  # (its work dir too)


def test_the_example_scheduled_job_waits_for_its_next_five_minutes(daemon: DaemonProcess) -> None:
    doc = json.loads((Path(__file__).resolve().parents[2] / "examples" / "scheduled.json").read_text())
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        head = scheduled(client, job_id, 1)
        assert head["next_run_at"] % 300 == 0 and 0 < head["next_run_at"] - time.time() <= 300
        client.cancel(job_id)
        assert job_of(client, job_id)["state"] == "cancelled"


def test_a_scheduled_job_paused_keeps_its_next_run_and_waits_again_at_resume(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    with daemon.client() as client:
        job_id = client.submit(stamping(marks, every=600))["id"]
        head = scheduled(client, job_id, 2)
        out = daemon.procctl("pause", job_id)
        assert out.returncode == 0, out.stderr
        paused = job_of(client, job_id)
        assert paused["state"] == "paused" and paused["next_run_at"] == head["next_run_at"]
        daemon.stop()
        daemon.restart()
    with daemon.client() as client:
        assert job_of(client, job_id)["state"] == "paused"
        out = daemon.procctl("resume", job_id)
        assert out.returncode == 0 and "it was paused" in out.stdout, out.stderr
        again = job_of(client, job_id)
        assert again["state"] == "scheduled" and again["next_run_at"] == head["next_run_at"]
        assert len(stamps(marks)) == 1
        out = daemon.procctl("cancel", job_id)
        assert out.returncode == 0, out.stderr

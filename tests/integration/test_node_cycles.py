"""Groups and tasks that cycle on their own clock ("repeat"/"every" on a node) through ``procctl``
against a real daemon: a fast branch cycling beside a slow one, the cycle in status and explain,
``procctl stop`` of a job with a forever node, and the cycle kept across a crash of the daemon.

No test guesses how long something takes: the tasks wait for gate files the test creates, and the
waits poll for states (the time between cycles is checked from below, or read from the status).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from procpool import Client
from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import sh, tasks_by_name
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

engine = each_engine()

ROOT = Path(__file__).resolve().parents[2]


def local_only(engine: str) -> None:
    if engine != "local":
        pytest.skip("the node's cycles are the scheduler's state, whatever the engine: tested once")


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def cycles(client: Client, job_id: str) -> dict[str, dict[str, Any]]:
    """The job's cycling nodes by name, from its status."""
    head = client.status(job_id)["job"]
    return {c["name"]: c for c in head.get("cycles", [])}


def finished(client: Client, job_id: str) -> dict[str, Any]:
    result = client.wait(job_id, timeout=60)
    assert result["finished"], f"job {job_id} is still {result['state']}"
    status: dict[str, Any] = result["status"]
    return status


def test_a_fast_branch_runs_its_cycles_while_a_slow_one_still_runs(
    daemon: DaemonProcess, tmp_path: Path, engine: str
) -> None:
    fast, gate, slow = tmp_path / "fast", tmp_path / "gate", tmp_path / "slow"
    doc = {"name": "branches", "root": {"concurrent": [
        {"name": "fast", "repeat": 5, "sequential": [
            {"name": "tick", **sh(f'echo tick >> "{fast}"')},
            {"name": "tock", **sh("true")},
        ]},
        {"name": "slow", **sh(f'echo start > "{slow}"; until [ -e "{gate}" ]; do sleep 0.02; done')},
        {"name": "after", **sh("true"), "depends_on": ["fast"]},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        # the fast group's five cycles end, and its dependent runs, while the slow task still runs
        status = wait_until(lambda: client.status(job_id),
                            lambda s: tasks_by_name(s)["after"]["state"] == "completed",
                            timeout=60, what="the fast branch's last cycle and its dependent")
        assert lines(fast) == 5
        assert tasks_by_name(status)["slow"]["state"] == "running"
        assert status["job"]["cycles"] == [{"kind": "group", "index": 1, "name": "fast", "cycle": 5,
                                            "repeat": 5, "next_cycle_at": None}]
        out = daemon.procctl("status", job_id)
        assert out.returncode == 0, out.stderr
        assert "sequential fast  (cycle 5/5)" in out.stdout, out.stdout
        gate.write_text("")
        status = finished(client, job_id)
    assert status["job"]["state"] == "completed" and lines(fast) == 5
    assert {t["state"] for t in status["tasks"]} == {"completed"}


def test_every_spaces_a_node_s_cycles_and_status_and_explain_show_the_next(
    daemon: DaemonProcess, tmp_path: Path, engine: str
) -> None:
    local_only(engine)
    marks = tmp_path / "marks"
    code = "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n')"
    stamp = ["python3", "-c", code, str(marks)]
    doc = {"name": "spaced", "root": {"concurrent": [
        {"name": "quick", "cmd": stamp, "every": 0.3, "repeat": 3},
        {"name": "rare", "cmd": ["true"], "every": 600},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        rare = wait_until(lambda: cycles(client, job_id)["rare"], lambda c: c["next_cycle_at"] is not None,
                          timeout=30, what="the rare task to wait for its next cycle")
        assert rare["cycle"] == 1 and rare["repeat"] == "forever"
        assert rare["next_cycle_at"] > time.time() + 500
        out = daemon.procctl("status", job_id)
        assert "cycle 1, next cycle in 9m" in out.stdout, out.stdout
        explained = json.loads(daemon.procctl("explain", f"{job_id}/rare", "--json").stdout)
        waits = 'waits for the next cycle of task "rare" at '
        assert any(line.startswith(waits) for line in explained["text"]), explained["text"]
        quick = wait_until(lambda: cycles(client, job_id)["quick"], lambda c: c["cycle"] == 3 and
                           lines(marks) == 3, timeout=30, what="the quick task's third cycle")
        assert quick["next_cycle_at"] is None
        times = [float(x) for x in marks.read_text().split()]
        assert all(b - a >= 0.3 for a, b in itertools.pairwise(times)), times
        out = daemon.procctl("stop", job_id)
        assert out.returncode == 0, out.stderr
        status = finished(client, job_id)
    assert status["job"]["state"] == "completed"


def test_stop_ends_a_forever_node_after_its_current_cycle(daemon: DaemonProcess, tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    # each cycle appends a line, then waits for the gate of its number: cycle 2 waits for gate.2
    script = f'echo run >> "{runs}"; n=$(wc -l < "{runs}"); until [ -e "{gate}.$n" ]; do sleep 0.02; done'
    doc = {"name": "forever", "root": {"sequential": [
        {"name": "loop", "repeat": "forever", "concurrent": [{"name": "step", **sh(script)}]},
        {"name": "after", **sh("true")},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        wait_until(lambda: lines(runs), lambda n: n == 1, what="cycle 1 to run")
        Path(f"{gate}.1").write_text("")
        wait_until(lambda: lines(runs), lambda n: n == 2, what="cycle 2 to run")
        assert cycles(client, job_id)["loop"]["cycle"] == 2
        out = daemon.procctl("stop", job_id)
        assert out.returncode == 0, out.stderr
        assert "after their current cycle" in out.stdout, out.stdout
        Path(f"{gate}.2").write_text("")
        status = finished(client, job_id)
    assert lines(runs) == 2  # no third cycle
    job = status["job"]
    assert job["state"] == "completed" and job["reason"].startswith("stopped by ")
    assert "no node cycle after the current ones" in job["reason"]
    assert tasks_by_name(status)["after"]["state"] == "completed"  # the loop completed with its cycle
    assert job["cycles"][0]["cycle"] == 2


def test_a_node_resumes_in_its_cycle_after_a_crash(
    daemon: DaemonProcess, tmp_path: Path, engine: str
) -> None:
    local_only(engine)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    script = f'echo run >> "{runs}"; n=$(wc -l < "{runs}"); until [ -e "{gate}.$n" ]; do sleep 0.02; done'
    doc = {"name": "crash", "root": {"concurrent": [
        {"name": "steps", "repeat": 3, "sequential": [{"name": "step", **sh(script)}]},
        {"name": "rare", "cmd": ["true"], "every": 3600, "repeat": 2},
    ]}}
    with daemon.client() as client:
        job_id = client.submit(doc)["id"]
        wait_until(lambda: lines(runs), lambda n: n == 1, what="cycle 1 to run")
        Path(f"{gate}.1").write_text("")
        wait_until(lambda: lines(runs), lambda n: n == 2, what="cycle 2 to run")
        rare = wait_until(lambda: cycles(client, job_id)["rare"], lambda c: c["next_cycle_at"] is not None,
                          timeout=30, what="the rare task to wait")
    daemon.crash()
    daemon.restart()
    with daemon.client() as client:
        # the interrupted attempt of cycle 2 runs again (on_interrupt: retry): still cycle 2
        wait_until(lambda: lines(runs), lambda n: n == 3, what="cycle 2's attempt to run again")
        now = cycles(client, job_id)
        assert now["steps"]["cycle"] == 2
        assert now["rare"]["cycle"] == 1 and now["rare"]["next_cycle_at"] == rare["next_cycle_at"]
        Path(f"{gate}.3").write_text("")
        wait_until(lambda: lines(runs), lambda n: n == 4, what="cycle 3 to run")
        assert cycles(client, job_id)["steps"]["cycle"] == 3
        Path(f"{gate}.4").write_text("")
        wait_until(lambda: cycles(client, job_id)["steps"], lambda c: c["cycle"] == 3 and
                   client.status(job_id)["tasks"][0]["state"] == "completed", what="the last cycle to end")
        client.cancel(job_id)
        status = finished(client, job_id)
    assert lines(runs) == 4 and status["job"]["state"] == "cancelled"


def test_a_dependent_on_a_task_inside_a_repeating_group_is_refused(
    daemon: DaemonProcess, tmp_path: Path, engine: str
) -> None:
    local_only(engine)
    doc = {"root": {"concurrent": [
        {"name": "g", "repeat": 2, "concurrent": [{"name": "inner", "cmd": ["true"]}]},
        {"name": "outside", "cmd": ["true"], "depends_on": ["inner"]},
    ]}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(doc))
    out = daemon.procctl("validate", str(path))
    assert out.returncode != 0
    assert "root.concurrent[1].depends_on" in out.stderr and 'depend on "g"' in out.stderr, out.stderr


def test_the_example_runs_its_fast_branch_beside_the_slow_one(daemon: DaemonProcess, engine: str) -> None:
    local_only(engine)
    path = ROOT / "examples" / "cycles.json"
    out = daemon.procctl("validate", str(path))
    assert out.returncode == 0, out.stderr
    assert "group poll cycles on its own clock: repeat 5, every 0.2 s" in out.stdout, out.stdout
    with daemon.client() as client:
        job_id = client.submit(json.loads(path.read_text()))["id"]
        status = finished(client, job_id)
    assert status["job"]["state"] == "completed"
    assert status["job"]["cycles"][0]["cycle"] == 5
    assert len(status["job"]["namespace"]["fetched"]) == 5

"""Named queues through ``procctl`` against a real daemon (commands engine): a queue's parallelism
across jobs, ``procctl queue set`` at run time, ``pause --queue`` (and ``--stop``), all kept
across a restart; a saturated queue holds back neither other work nor, thanks to priority aging, a
low-priority task behind a steady stream of high-priority ones.

Concurrency is observed through files the tasks write (see test_limits_locks), never by timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool import Client
from tests.integration.test_limits_locks import counts, finished, holder, notes, procctl_json, submit
from tests.support.daemon import DaemonProcess, serving
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def go(tmp_path: Path) -> Iterator[Path]:
    """Every holder may end once the test is over (torn down before the daemon)."""
    yield tmp_path
    (tmp_path / "go").touch()


def queued_daemon(config: str) -> DaemonProcess:
    proc = DaemonProcess(extra_args=["--workers", "6"])
    path = proc.dir / "procpoold.toml"
    path.write_text("[procpoold]\nworkers = 6\n" + config)
    proc.extra_args += ["--config", str(path)]
    return proc


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """6 command slots; [queues] io = 2, one = 1."""
    with serving(queued_daemon("\n[queues]\nio = 2\none = 1\n").start()) as running:
        yield running


def ok(daemon: DaemonProcess, *args: str) -> str:
    out = daemon.procctl(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def queue_row(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    rows = procctl_json(daemon, "queue")["queues"]
    row: dict[str, Any] = next(q for q in rows if q["name"] == name)
    return row


def test_a_queue_holds_its_tasks_across_jobs_and_is_shown_and_changed_at_run_time(
    daemon: DaemonProcess, go: Path
) -> None:
    tmp_path = go
    a = submit(daemon, {"name": "a", "queue": "io",
                        "root": {"concurrent": [holder(tmp_path, f"a{i}") for i in range(3)]}})
    b = submit(daemon, {"name": "b", "root": {"concurrent": [holder(tmp_path, f"b{i}", queue="io")
                                                             for i in range(3)]}})
    wait_until(lambda: queue_row(daemon, "io"), lambda q: q["running"] == 2 and q["waiting"] == 4,
               what="two of six running in queue io")
    assert len(notes(tmp_path)) == 2
    table = ok(daemon, "queue")
    assert "QUEUE" in table and "io" in table and "config" in table
    assert "io 2/2 running, 4 waiting" in ok(daemon, "status")
    assert "QUEUE" in ok(daemon, "pool")
    waiting = next(t for t in procctl_json(daemon, "status", b)["tasks"] if t["state"] == "ready")
    out = procctl_json(daemon, "explain", waiting["id"])
    assert out["reason"] == "queue" and out["queue_limit"]["parallel"] == 2
    assert any('waits for a place in queue "io": parallel 2' in line for line in out["text"])
    assert "queue io: 3 tasks at once (was 2)" in ok(daemon, "queue", "set", "io", "--parallel", "3")
    wait_until(lambda: len(notes(tmp_path)), lambda n: n == 3, what="a third task started")
    assert queue_row(daemon, "io")["source"] == "set"
    (tmp_path / "go").touch()
    assert (finished(daemon, a), finished(daemon, b)) == ("completed", "completed")
    assert len(counts(tmp_path)) == 6 and max(counts(tmp_path)) <= 3


def test_an_unknown_queue_is_refused_with_its_path(daemon: DaemonProcess, tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"root": {"sequential": [{"cmd": ["true"], "queue": "gpu"}]}}))
    out = daemon.procctl("submit", str(job))
    assert out.returncode != 0
    assert 'root.sequential[0].queue: there is no queue "gpu"' in out.stderr, out.stderr
    assert "procctl queue set gpu --parallel N" in out.stderr
    out = daemon.procctl("queue", "set", "bad name", "--parallel", "2")
    assert out.returncode != 0 and "must be a queue name" in out.stderr, out.stderr


def test_a_saturated_queue_holds_back_no_other_work(daemon: DaemonProcess, go: Path) -> None:
    tmp_path = go
    held = submit(daemon, {"name": "held", "queue": "one",
                           "root": {"concurrent": [holder(tmp_path, f"h{i}") for i in range(3)]}})
    wait_until(lambda: notes(tmp_path), lambda n: len(n) == 1, what="queue one full")
    other = submit(daemon, {"name": "other", "root": {"cmd": ["true"]}})
    assert finished(daemon, other) == "completed"  # while queue one stays full
    assert len(notes(tmp_path)) == 1
    (tmp_path / "go").touch()
    assert finished(daemon, held) == "completed"
    assert max(counts(tmp_path)) == 1


def test_a_paused_queue_and_its_parallelism_survive_a_restart_and_stop_reruns_without_a_retry(
    daemon: DaemonProcess, go: Path
) -> None:
    tmp_path = go
    ok(daemon, "queue", "set", "io", "--parallel", "1")
    first = submit(daemon, {"name": "first", "queue": "io", "root": holder(tmp_path, "first")})
    wait_until(lambda: notes(tmp_path), lambda n: n == {"first"}, what="first running")
    out = ok(daemon, "pause", "--queue", "io", "--stop")
    assert "queue io paused" in out and "1 running attempt" in out, out
    wait_until(lambda: procctl_json(daemon, "status", first)["tasks"][0]["state"], lambda s: s == "ready",
               what="the stopped attempt's task ready again")
    later = submit(daemon, {"name": "later", "queue": "io", "root": {"cmd": ["true"]}})
    daemon.stop()
    daemon.restart()
    row = queue_row(daemon, "io")
    assert row["paused"] is not None and row["parallel"] == 1 and row["source"] == "set"
    assert "io 0/1 running" in ok(daemon, "status") and "PAUSED" in ok(daemon, "status")
    explained = procctl_json(daemon, "explain", f"{later}.0")
    assert explained["reason"] == "queue_paused"
    health = daemon.procctl("health")
    assert health.returncode == 1 and "the queue io is paused" in health.stdout, health.stdout
    assert "io 0/1 running, 2 waiting PAUSED" in ok(daemon, "metrics")  # (first and later)
    (tmp_path / "go").touch()  # the holder may end at once when it runs again
    assert "queue io resumed" in ok(daemon, "resume", "--queue", "io")
    assert (finished(daemon, first), finished(daemon, later)) == ("completed", "completed")
    task = procctl_json(daemon, "status", first)["tasks"][0]
    assert [a["status"] for a in task["attempt_history"]] == ["paused", "completed"]
    out = daemon.procctl("resume", "--queue", "io")
    assert out.returncode != 0 and 'queue "io" is not paused' in out.stderr


def test_priority_aging_lets_a_batch_task_through_a_queue_saturated_by_high_priority_work(
    tmp_path: Path,
) -> None:
    """priority_aging 1.5 s: a waiter's key is when it became ready plus its rank times 1.5 s
    (high 1, batch 4), so a batch task goes ahead of every high-priority task that became ready
    more than 4.5 s after it, and behind those that came sooner. Queue q (parallel 1) is held
    full by a blocker while the batch job and two high-priority jobs wait: one submitted right
    after the batch job, one once the daemon's clock is 5 s past it. Each task appends its name
    to a file when it starts, so the order is read from the file: nothing depends on how fast
    the test submits or the tasks run (the unit tests of the gates follow a steady stream with a
    controlled clock)."""
    proc = queued_daemon("priority_aging = 1.5\n\n[queues]\nq = 1\n")
    order = tmp_path / "order"
    go = tmp_path / "go"

    def job(name: str, priority: str, then: str = "true") -> dict[str, Any]:
        script = f'echo "$N" >> "$D/order"; {then}'
        return {"name": name, "priority": priority,
                "root": {"cmd": ["sh", "-c", script], "env": {"D": str(tmp_path), "N": name}, "queue": "q"}}

    try:
        with serving(proc.start()) as daemon, daemon.client() as client:
            hold = 'while [ ! -e "$D/go" ]; do sleep 0.05; done'
            blocker = client.submit(job("blocker", "high", hold))["id"]
            wait_until(lambda: order.exists(), lambda seen: seen, what="the blocker holds queue q")
            batch = client.submit(job("batch", "batch"))["id"]
            soon = client.submit(job("soon", "high"))["id"]
            created = {j: float(client.status(j)["job"]["created_at"]) for j in (batch, soon)}
            gap = created[soon] - created[batch]
            assert gap < 4.0, f"'soon' was submitted {gap:.1f} s after the batch job (not within 4.5 s)"
            time.sleep(max(0.0, created[batch] + 5.0 - time.time()))  # the daemon's clock is this one
            late = client.submit(job("late", "high"))["id"]
            assert queue_row(daemon, "q")["waiting"] == 3
            go.touch()
            for job_id in (blocker, batch, soon, late):
                assert _finished(client, job_id) == "completed"
            # Without aging "late" would go ahead of "batch"; by rank alone "soon" goes first.
            assert order.read_text().split() == ["blocker", "soon", "batch", "late"]
    finally:
        go.touch()


def _finished(client: Client, job_id: str) -> str:
    result = client.wait(job_id, timeout=60)
    assert result["finished"], f"job {job_id} is still {result['state']}"
    state: str = result["state"]
    return state


def test_the_limits_example_runs_in_its_queue(daemon: DaemonProcess) -> None:
    """examples/limits.json: its shards in queue io (the fixture's config has it), two at a time."""
    example = Path(__file__).resolve().parents[2] / "examples" / "limits.json"
    out = daemon.procctl("submit", str(example), "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    [job] = procctl_json(daemon, "status", "--name", "nightly-shards")["jobs"]["list"]
    assert job["state"] == "completed", job
    assert queue_row(daemon, "io")["running"] == 0

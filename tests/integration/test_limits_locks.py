"""max_parallel and locks through ``procctl`` against a real daemon (commands engine).

Concurrency is observed through files the tasks write, never by timing: each task notes itself in
``in.<name>`` while it runs, records how many such notes it saw, and waits for the test's ``go``
file before it removes its note and ends. A limit that let one task too many run would show as a
count above the limit, and as more than that many notes at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess, serving
from tests.support.waiting import wait_until

#: 4 command slots: the limits below, not the slots, hold tasks back
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.daemon_args("--workers", "4")]

#: note itself, count the notes, wait for "go" (or "go.NAME"), then remove its note
HOLD = ('touch "$D/in.$N"; ls "$D" | grep -c "^in\\." >> "$D/counts"; '
        'while [ ! -e "$D/go" ] && [ ! -e "$D/go.$N" ]; do sleep 0.02; done; '
        'echo "$N" >> "$D/order"; rm "$D/in.$N"')


def holder(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cmd": ["sh", "-c", HOLD], "env": {"D": str(folder), "N": name}, **extra}


def submit(daemon: DaemonProcess, doc: dict[str, Any]) -> str:
    done = daemon.procctl("submit", "-", input=json.dumps(doc).encode())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def procctl_json(daemon: DaemonProcess, *args: str) -> Any:
    done = daemon.procctl("--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def notes(folder: Path) -> set[str]:
    return {p.name[3:] for p in folder.glob("in.*")}


def states(daemon: DaemonProcess, job_id: str) -> dict[str, str]:
    return {t["name"]: t["state"] for t in procctl_json(daemon, "status", job_id)["tasks"]}


def finished(daemon: DaemonProcess, job_id: str) -> str:
    with daemon.client() as client:
        result = client.wait(job_id, timeout=60)
    assert result["finished"], result
    state: str = result["state"]
    return state


def counts(folder: Path) -> list[int]:
    return [int(line) for line in (folder / "counts").read_text().split()]


@pytest.fixture
def go(tmp_path: Path) -> Any:
    """Every holder may end once the test is over (a failed test does not leave them waiting:
    requested after the daemon, this is torn down before it)."""
    yield tmp_path
    (tmp_path / "go").touch()


@pytest.fixture
def locked_daemon() -> Any:
    """A daemon of 4 command slots with [locks] gpu = 2 in its config."""
    proc = DaemonProcess(extra_args=["--workers", "4"])
    config = proc.dir / "procpoold.toml"
    config.write_text("[procpoold]\nworkers = 4\n\n[locks]\ngpu = 2\n")
    proc.extra_args += ["--config", str(config)]
    with serving(proc.start()) as running:
        yield running


def test_max_parallel_2_of_10_concurrent_tasks(daemon: DaemonProcess, go: Path) -> None:
    tmp_path = go
    tasks = [holder(tmp_path, f"t{i}") for i in range(10)]
    job_id = submit(daemon, {"name": "ten", "root": {"name": "g", "concurrent": tasks, "max_parallel": 2}})
    wait_until(lambda: len(notes(tmp_path)), lambda n: n == 2, what="two tasks running")
    seen = states(daemon, job_id)
    assert sorted(seen.values()).count("running") == 2 and list(seen.values()).count("ready") == 8
    waiting = next(name for name, state in seen.items() if state == "ready")
    out = procctl_json(daemon, "explain", f"{job_id}/{waiting}")
    assert out["reason"] == "max_parallel"
    assert any('group "g": max_parallel 2' in line for line in out["text"])
    (tmp_path / "go").touch()
    assert finished(daemon, job_id) == "completed"
    assert len(counts(tmp_path)) == 10 and max(counts(tmp_path)) <= 2


def test_a_mutex_shared_by_two_jobs_serializes_them(daemon: DaemonProcess, go: Path) -> None:
    tmp_path = go
    a = submit(daemon, {"name": "a", "locks": ["db"], "root": holder(tmp_path, "a")})
    wait_until(lambda: notes(tmp_path), lambda n: n == {"a"}, what="a running")
    b = submit(daemon, {"name": "b", "root": holder(tmp_path, "b", locks=["db"])})
    out = procctl_json(daemon, "explain", f"{b}.0")
    assert out["reason"] == "lock" and out["lock"]["holders"] == [f"{a}.0"]
    assert any('waits for lock "db"' in line and f"task {a}.0" in line for line in out["text"])
    human = daemon.procctl("explain", f"{b}.0")
    assert 'waits for lock "db"' in human.stdout, human.stdout + human.stderr
    (tmp_path / "go.a").touch()
    wait_until(lambda: notes(tmp_path), lambda n: n == {"b"}, what="b running after a")
    (tmp_path / "go").touch()
    assert (finished(daemon, a), finished(daemon, b)) == ("completed", "completed")
    assert max(counts(tmp_path)) == 1
    assert (tmp_path / "order").read_text().split() == ["a", "b"]


def test_a_semaphore_of_two(locked_daemon: DaemonProcess, go: Path) -> None:
    tmp_path = go
    jobs = [submit(locked_daemon, {"name": f"j{i}", "root": holder(tmp_path, f"j{i}", locks=["gpu"])})
            for i in range(4)]
    wait_until(lambda: len(notes(tmp_path)), lambda n: n == 2, what="two holders of gpu")
    assert [states(locked_daemon, j)["j" + str(i)] for i, j in enumerate(jobs)].count("ready") == 2
    (tmp_path / "go").touch()
    assert [finished(locked_daemon, j) for j in jobs] == ["completed"] * 4
    assert max(counts(tmp_path)) == 2
    # more units than the limit could never start: refused at submission, with the path
    done = locked_daemon.procctl("submit", "-", input=json.dumps(
        {"root": {"concurrent": [{"cmd": ["true"], "locks": ["gpu:3"]}]}}).encode())
    assert done.returncode == 2 and 'root.concurrent[0].locks[0]: needs 3 units of lock "gpu"' in done.stderr


@pytest.mark.parametrize("how", ["fails", "times out", "is cancelled"])
def test_a_lock_is_released_when_its_holder(daemon: DaemonProcess, go: Path, how: str) -> None:
    tmp_path = go
    first: dict[str, Any] = {"locks": ["db"]}
    if how == "fails":
        first = {"name": "a", "cmd": ["sh", "-c", 'while [ ! -e "$D/go.a" ]; do sleep 0.02; done; exit 3'],
                 "env": {"D": str(tmp_path)}, "locks": ["db"]}
    elif how == "times out":
        first = holder(tmp_path, "a", locks=["db"], timeout=2)
    else:
        first = holder(tmp_path, "a", locks=["db"])
    a = submit(daemon, {"name": "a", "root": first})
    # (a timeout of 2 s may end it before a loaded machine's procctl has asked)
    wait_until(lambda: states(daemon, a)["a"],
               lambda s: s == "running" or (how == "times out" and s == "timeout"), what="a running")
    b = submit(daemon, {"name": "b", "root": holder(tmp_path, "b", locks=["db"])})
    if how != "times out":  # (a timeout may come before the question)
        assert procctl_json(daemon, "explain", f"{b}.0")["reason"] == "lock"
    if how == "fails":
        (tmp_path / "go.a").touch()
    elif how == "is cancelled":
        assert daemon.procctl("cancel", a).returncode == 0
    assert finished(daemon, a) == {"fails": "failed", "times out": "failed", "is cancelled": "cancelled"}[how]
    # (a killed holder leaves its note behind)
    wait_until(lambda: notes(tmp_path), lambda n: "b" in n, what="b running after a")
    (tmp_path / "go").touch()
    assert finished(daemon, b) == "completed"


def test_a_lock_is_released_by_a_daemon_restart(tmp_path: Path) -> None:
    with serving(DaemonProcess(extra_args=["--workers", "4"]).start()) as daemon:
        a = submit(daemon, {"name": "a", "on_interrupt": "fail", "root": holder(tmp_path, "a", locks=["db"])})
        wait_until(lambda: notes(tmp_path), lambda n: n == {"a"}, what="a running")
        b = submit(daemon, {"name": "b", "root": holder(tmp_path, "b", locks=["db"])})
        assert procctl_json(daemon, "explain", f"{b}.0")["reason"] == "lock"
        daemon.crash()
        (tmp_path / "in.a").unlink()  # (killed before it could remove its note)
        daemon.restart()
        try:
            assert finished(daemon, a) == "failed"
            wait_until(lambda: notes(tmp_path), lambda n: n == {"b"}, what="b running after the restart")
        finally:
            (tmp_path / "go").touch()
        assert finished(daemon, b) == "completed"


def test_a_saturated_lock_does_not_starve_an_earlier_waiter(locked_daemon: DaemonProcess, go: Path) -> None:
    """gpu (limit 2) is kept busy by one-unit holders; a task needing both units came first and
    later one-unit tasks (at a higher priority) do not overtake it."""
    tmp_path = go
    d = locked_daemon
    one = [submit(d, {"name": f"s{i}", "root": holder(tmp_path, f"s{i}", locks=["gpu"])}) for i in range(2)]
    wait_until(lambda: notes(tmp_path), lambda n: n == {"s0", "s1"}, what="two one-unit holders")
    big = submit(d, {"name": "big", "root": holder(tmp_path, "big", locks=["gpu:2"])})
    urgent = {"locks": ["gpu"], "priority": "critical"}
    later = [submit(d, {"name": f"l{i}", "root": holder(tmp_path, f"l{i}", **urgent)}) for i in range(3)]
    out = procctl_json(d, "explain", f"{later[0]}.0")
    assert out["reason"] == "lock" and out["lock"]["waiting_ahead"] == 1
    (tmp_path / "go.s0").touch()
    assert finished(d, one[0]) == "completed"
    # one unit is free, but it is kept for the big task, first in line: no later one starts
    assert procctl_json(d, "explain", f"{big}.0")["lock"]["held"] == 1
    assert all(states(d, j)[f"l{i}"] == "ready" for i, j in enumerate(later))
    (tmp_path / "go.s1").touch()
    wait_until(lambda: notes(tmp_path), lambda n: n == {"big"}, what="the big task running")
    (tmp_path / "go").touch()
    assert [finished(d, j) for j in (big, *later)] == ["completed"] * 4
    assert (tmp_path / "order").read_text().split()[:3] == ["s0", "s1", "big"]

"""Job-tree semantics with Python callables (through a real daemon), on each engine: the local
worker pool, and a Dask cluster (``--engine dask``; see ``tests/support/fixtures.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.fixtures import each_engine
from tests.support.jobs import run_job, tasks_by_name, wait_task_state

ROOT = str(Path(__file__).resolve().parents[2])

engine = each_engine()


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"tests.support.tasks:{fn}", "args": list(args), **extra}


def job(daemon: DaemonProcess, root: Any, **extra: Any) -> dict[str, Any]:
    return run_job(daemon, root, python_path=[ROOT], **extra)


def test_results_and_exceptions_are_recorded(daemon: DaemonProcess) -> None:
    status = job(
        daemon,
        {
            "concurrent": [
                {"name": "sum", **call("add", 2, 3)},
                {"name": "asum", **call("async_add", 4, 5)},
                {"name": "bad", **call("boom", "no good")},
                {"name": "odd", **call("not_msgpackable")},
            ]
        },
        on_failure="continue",
    )
    t = tasks_by_name(status)
    assert (t["sum"]["state"], t["sum"]["result"]) == ("completed", 5)
    assert (t["asum"]["state"], t["asum"]["result"]) == ("completed", 9)
    assert t["bad"]["state"] == "failed"
    assert (t["bad"]["error"]["type"], t["bad"]["error"]["message"]) == ("ValueError", "no good")
    assert "in boom" in t["bad"]["error"]["traceback"]
    assert t["odd"]["state"] == "failed" and "msgpack" in t["odd"]["error"]["message"]


def test_200_concurrent_increments_leave_exactly_200(daemon: DaemonProcess) -> None:
    status = job(
        daemon,
        {"concurrent": [{"name": f"i{i}", **call("incr", "n")} for i in range(200)]},
        namespace={"n": 0},
    )
    assert status["job"]["state"] == "completed"
    assert status["job"]["namespace"] == {"n": 200}
    assert sorted(t["result"] for t in status["tasks"]) == list(range(1, 201))


def test_namespace_cas_and_append(daemon: DaemonProcess) -> None:
    status = job(daemon, {"concurrent": [{"name": f"w{i}", **call("cas_append", "seen")} for i in range(10)]})
    ns = status["job"]["namespace"]
    assert sorted(ns["seen"]) == sorted(f"w{i}" for i in range(10))
    assert ns["first"] in ns["seen"]


def test_task_context_env_and_progress(daemon: DaemonProcess, tmp_path: Path) -> None:
    status = job(daemon, {"name": "ctx", **call("context"), "env": {"SPECIAL": "yes"}})
    result = tasks_by_name(status)["ctx"]["result"]
    job_id = status["job"]["id"]
    assert result == {
        "job_id": job_id,
        "task_id": f"{job_id}.0",
        "task_name": "ctx",
        "attempt": 1,
        "run": 1,
        "env": "yes",
    }
    gate = tmp_path / "gate"
    with daemon.client() as client:
        job_id = client.submit(
            {
                "name": "p",
                "python_path": [ROOT],
                "root": {"name": "half", **call("progress_then_wait", str(gate))},
            }
        )["id"]
        deadline = time.monotonic() + 30
        while (client.status(job_id)["tasks"][0]["progress"] or {}).get("fraction") != 0.5:
            assert time.monotonic() < deadline
            client.wait(job_id, timeout=0.05)
        out = daemon.procctl("status", job_id)
        assert "50% halfway" in out.stdout
        gate.touch()
        assert client.wait(job_id, timeout=30)["state"] == "completed"


def test_retry_after_an_exception(daemon: DaemonProcess, tmp_path: Path) -> None:
    status = job(
        daemon, {"name": "f", **call("flaky", str(tmp_path / "m")), "retries": 1, "retry_delay": 0.01}
    )
    t = tasks_by_name(status)["f"]
    assert (t["state"], t["attempts"], t["result"]) == ("completed", 2, "second attempt")


def test_timeout_of_a_call_task(daemon: DaemonProcess, engine: str) -> None:
    status = job(daemon, {"name": "spin", **call("sleep_forever"), "timeout": 0.3})
    t = tasks_by_name(status)["spin"]
    assert t["state"] == "timeout"
    with daemon.client() as client:  # the worker survived or was replaced: the engine still works
        workers = client.status()["workers"]
        if engine == "local":
            assert workers["configured"] == 2
        else:
            assert workers["engines"]["dask"]["up"], workers
    assert tasks_by_name(job(daemon, {"name": "ok", **call("add", 1, 1)}))["ok"]["result"] == 2


def test_cancelled_async_task_sees_cancelled_error(daemon: DaemonProcess, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with daemon.client() as client:
        job_id = client.submit(
            {
                "name": "a",
                "python_path": [ROOT],
                "root": {"name": "waiter", **call("async_wait_cancel", str(marker))},
            }
        )["id"]
        # Cancel once the coroutine runs: "running" is set at dispatch, and a cancel that reaches
        # the worker before the coroutine's first line leaves nothing to see the CancelledError.
        started = Path(f"{marker}.started")
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, client.status(job_id)["tasks"][0]
            client.wait(job_id, timeout=0.05)
        client.cancel(job_id)
        status = client.wait(job_id, timeout=30)["status"]
    assert status["tasks"][0]["state"] == "cancelled"
    assert marker.read_text() == "cancelled"


def test_procctl_run_a_callable(daemon: DaemonProcess) -> None:
    out = daemon.procctl("--json", "run", "--wait", "procpool.demo:checksum", '"abc"')
    assert out.returncode == 0, out.stderr
    import json

    data = json.loads(out.stdout)
    assert data["tasks"][0]["result"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.local_engine_only("procctl pool and resize are about the local worker pool's processes; "
                               "a Dask cluster's workers are not the daemon's to list or resize")
def test_pool_command_and_resize(daemon: DaemonProcess, tmp_path: Path) -> None:
    out = daemon.procctl("pool")
    assert out.returncode == 0 and "SLOT" in out.stdout and "idle" in out.stdout
    # A chain of no-ops, each sent alone to a worker: round trips the pool measures.
    chain = job(daemon, {"sequential": [{"name": f"n{i}", **call("add", i, 0)} for i in range(20)]})
    assert chain["job"]["state"] == "completed"
    gate = tmp_path / "gate"
    with daemon.client() as client:
        held = {"name": "held", **call("progress_then_wait", str(gate))}
        busy = client.submit({"name": "busy", "root": held, "python_path": [ROOT]})["id"]
        wait_task_state(client, busy, "held")
        info = client.pool()["info"]
        trips = [info["round_trip"], info["round_trip_woken"]]
        assert info["completed"] >= 20 and 20 <= sum(t["samples"] for t in trips) <= info["dispatched"]
        assert all(0 < t["p50_us"] <= t["p99_us"] for t in trips if t["samples"])
        out = daemon.procctl("pool")
        gate.write_text("go")
        assert client.wait(busy, timeout=30)["state"] == "completed"
    header, *rows = out.stdout.split("\n\n")[0].splitlines()
    assert header.split() == ["SLOT", "PID", "USER", "STATE", "TASK", "DONE", "RSS", "USS", "AGE"]
    [held] = [r.split() for r in rows if "held" in r]
    assert held[2:5] == ["root" if os.geteuid() == 0 else held[2], "busy", "held"]
    assert int(held[1]) > 0 and held[6].endswith("M")
    assert sum(int(r.split()[5]) for r in rows) >= 20  # tasks done, over the workers
    assert "round trip " in out.stdout and "completed 2" in out.stdout
    assert daemon.procctl("pool", "resize", "3").returncode == 0
    with daemon.client() as client:
        deadline = time.monotonic() + 30
        while len([w for w in client.pool()["workers"] if w["state"] == "idle"]) != 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.status()["workers"]["configured"] == 3
    assert daemon.procctl("pool", "resize", "1").returncode == 0
    status = job(daemon, {"concurrent": [{"name": f"x{i}", **call("add", i, 1)} for i in range(5)]})
    assert status["job"]["state"] == "completed"

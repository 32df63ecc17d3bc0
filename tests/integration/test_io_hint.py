"""Resource hints (through a real daemon): an I/O-bound task ("io": true, async def) shares a pool
worker's event loop with others of its job, up to async_per_worker; a CPU-bound task (the default,
or "io": false) holds its worker alone while it runs, async def or not. The time 200 I/O-bound
tasks take is measured by bench/io_bench.py, not here: this asserts the structure (the pool's own
record of the most attempts on one worker's loop at once, and which attempts overlapped where)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from procpool.contract.errors import ErrorCode, ProcpoolError
from tests.support.daemon import DaemonProcess
from tests.support.jobs import run_job, tasks_by_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = str(Path(__file__).resolve().parents[2])


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"tests.support.tasks:{fn}", "args": list(args), **extra}


def pool_info(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as client:
        info: dict[str, Any] = client.pool()["info"]
    return info


def most_at_once(spans: list[list[float]]) -> dict[int, int]:
    """Per worker pid, the most of these [pid, start, end] spans that overlapped at one time."""
    out: dict[int, int] = {}
    for pid in {int(s[0]) for s in spans}:
        edges = sorted([(s[1], 1) for s in spans if s[0] == pid] + [(s[2], -1) for s in spans if s[0] == pid])
        now = peak = 0
        for _, step in edges:  # (an end sorts before a start at the same instant: -1 < 1)
            now += step
            peak = max(peak, now)
        out[pid] = peak
    return out


def test_200_io_tasks_share_the_event_loops_of_2_workers(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"io": True, "concurrent": [call("io_wait", 0.05) for _ in range(200)]},
                     python_path=[ROOT])
    assert status["job"]["state"] == "completed"
    spans = [t["result"] for t in status["tasks"]]
    assert len(spans) == 200
    info = pool_info(daemon)
    # The pool's own record: up to async_per_worker (8 by default) attempts on one loop at once.
    assert 1 < info["io_peak"] <= 8, info
    # ... and what the tasks saw: their waits overlapped on each worker, never more than 8.
    seen = most_at_once(spans)
    assert len(seen) <= 2 and all(1 < n <= 8 for n in seen.values()), seen


@pytest.mark.parametrize("hint", [{}, {"io": False}])
def test_a_cpu_task_never_shares_its_worker_while_it_runs(
        daemon: DaemonProcess, hint: dict[str, Any]) -> None:
    # Async def tasks that await (they could share a loop, but are not I/O-bound by their hint),
    # and plain functions, in one job on 2 workers: no two ever ran on one worker at one time.
    tasks = [call("io_wait", 0.02) if i % 2 else call("sync_wait", 0.02) for i in range(40)]
    status = run_job(daemon, {**hint, "concurrent": tasks}, python_path=[ROOT])
    assert status["job"]["state"] == "completed"
    spans = [t["result"] for t in status["tasks"]]
    seen = most_at_once(spans)
    assert seen and all(n == 1 for n in seen.values()), seen
    assert pool_info(daemon)["io_peak"] == 0


def test_io_on_a_plain_function_fails_the_task_with_a_hint(daemon: DaemonProcess) -> None:
    status = run_job(daemon, {"concurrent": [{"name": "plain", **call("sync_wait", 0, io=True)},
                                             {"name": "fine", **call("io_wait", 0, io=True)}]},
                     python_path=[ROOT], on_failure="continue")
    t = tasks_by_name(status)
    assert t["plain"]["state"] == "failed"
    assert t["plain"]["error"]["type"] == "TypeError"
    assert "tests.support.tasks:sync_wait is not an async def function" in t["plain"]["error"]["message"]
    assert t["fine"]["state"] == "completed"


def test_io_errors_name_their_json_path_in_validate_and_submit(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    for root, message in (
        ({"concurrent": [{"cmd": ["true"], "io": True}]},
         'root.concurrent[0].io: "io": true is for call tasks (an async def function)'),
        ({"io": "yes", "sequential": [call("io_wait", 0)]}, "root.io: must be true or false, got a string"),
    ):
        doc = {"name": "j", "root": root}
        path.write_text(json.dumps(doc))
        out = daemon.procctl("validate", str(path))
        assert out.returncode == 2 and f"{path}: {message}" in out.stderr, out.stderr
        with daemon.client() as client, pytest.raises(ProcpoolError) as info:
            client.submit(doc)
        assert info.value.code == ErrorCode.INVALID_TREE and info.value.message.startswith(message)
    path.write_text(json.dumps({"name": "j", "io": True, "python_path": [ROOT],
                                "root": {"concurrent": [call("io_wait", 0), {"cmd": ["true"]}]}}))
    assert daemon.procctl("validate", str(path)).returncode == 0  # (a command inherits nothing of it)
    out = daemon.procctl("submit", "--wait", str(path))
    assert out.returncode == 0, out.stderr

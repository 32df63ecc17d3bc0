"""A task that floods its output must not make the daemon unresponsive (policy block and drop)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess

LINES = 500_000
FLOOD = [sys.executable, "-c",
         f"import sys\nw = sys.stdout.write\nfor i in range({LINES}): w(f'line {{i}}\\n')\n"]
#: An unresponsive daemon stalled for seconds. The 100 ms target of the worst ping is a speed,
#: measured by bench/flood.py; here the median must meet it and no ping may take a second.
PING_MEDIAN_LIMIT = 0.100
PING_LIMIT = 1.0


def flood_and_ping(daemon: DaemonProcess) -> tuple[list[float], float, dict[str, Any]]:
    """Submit the flood, ping the daemon until it ends; returns ping latencies, duration and status."""
    latencies = []
    with daemon.client() as client:
        started = time.monotonic()
        job = client.submit({"name": "flood", "root": {"cmd": FLOOD}})["id"]
        while True:
            t0 = time.perf_counter()
            client.ping()
            latencies.append(time.perf_counter() - t0)
            state = client.status(job)["job"]["state"]
            if state not in ("pending", "running"):
                break
            assert time.monotonic() - started < 60, "the flood did not finish within 60s"
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        assert state == "completed"
        # Still usable: a new job runs.
        small = client.submit({"name": "after", "root": {"cmd": ["true"]}})["id"]
        assert client.wait(small, timeout=30)["state"] == "completed"
        summary = client.status()
    return latencies, elapsed, summary


def report(policy: str, latencies: list[float], elapsed: float) -> None:
    print(f"\n{policy}: {LINES} lines in {elapsed:.2f}s ({LINES / elapsed:,.0f} lines/s); "
          f"{len(latencies)} pings, p50 {statistics.median(latencies) * 1e3:.1f} ms, "
          f"max {max(latencies) * 1e3:.1f} ms")


@pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-policy", "block",
                         "--log-level", "info")
def test_flood_with_block_loses_nothing_and_pings_stay_fast(daemon: DaemonProcess) -> None:
    latencies, elapsed, summary = flood_and_ping(daemon)
    report("block", latencies, elapsed)
    assert len(latencies) >= 10
    assert statistics.median(latencies) < PING_MEDIAN_LIMIT, statistics.median(latencies)
    assert max(latencies) < PING_LIMIT, sorted(latencies)[-5:]
    assert summary["logging"]["dropped"] == 0
    daemon.stop()
    lines = [line for line in daemon.log().splitlines() if "procpoold.task: line " in line]
    assert len(lines) == LINES
    assert lines[-1].startswith(f"INFO    procpoold.task: line {LINES - 1} [")


@pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-policy", "drop",
                         "--log-queue-size", "1000", "--log-level", "info")
def test_flood_with_drop_counts_and_reports_what_it_dropped(daemon: DaemonProcess) -> None:
    latencies, elapsed, summary = flood_and_ping(daemon)
    report("drop", latencies, elapsed)
    assert statistics.median(latencies) < PING_MEDIAN_LIMIT, statistics.median(latencies)
    assert max(latencies) < PING_LIMIT, sorted(latencies)[-5:]
    dropped = summary["logging"]["dropped"]
    assert dropped > 0
    daemon.stop()
    log = daemon.log()
    written = sum(1 for line in log.splitlines() if "procpoold.task: line " in line)
    assert written + dropped == LINES
    assert "MESSAGE_ID=0b2dee34cd1b4b10b1c0689c56c5793a" in log and "log record(s) of task 1.0" in log


@pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-policy", "block",
                         "--log-queue-size", "1000", "--log-level", "info")
def test_a_command_that_exits_with_its_pipe_full_loses_nothing_with_block(daemon: DaemonProcess) -> None:
    # seq writes faster than the daemon reads and exits at once: when it is reaped, its pipe (and
    # the lines held back while the queue was full) still hold many times the queue's size. They
    # are passed on as the queue drains, and the task's outcome is reported after its last line.
    lines = 200_000
    with daemon.client() as client:
        job = client.submit({"name": "seq", "root": {"name": "seq", "cmd": ["seq", str(lines)]}})["id"]
        assert client.wait(job, timeout=60)["state"] == "completed"
        assert client.status()["logging"]["dropped"] == 0
    daemon.stop()
    log = daemon.log().splitlines()
    out = [i for i, line in enumerate(log) if line.startswith("INFO    procpoold.task: ") and
           line.split("procpoold.task: ", 1)[1].split(" [", 1)[0].isdigit()]
    assert len(out) == lines
    assert log[out[-1]].startswith(f"INFO    procpoold.task: {lines} [")
    [done] = [i for i, line in enumerate(log) if 'task "seq" completed' in line]
    assert done > out[-1]


@pytest.mark.daemon_args("--workers", "2", "--log-target", "stderr", "--log-policy", "block",
                         "--log-queue-size", "1000", "--log-level", "info")
def test_a_call_task_that_floods_loses_nothing_with_block(daemon: DaemonProcess) -> None:
    # The pool stops reading the worker's result ring while the queue is full; the task waits on its
    # full ring. (It used to read on and drop past twice the queue: 110,005 of 200,000 lines here.)
    lines = 200_000
    root = str(Path(__file__).resolve().parents[2])
    with daemon.client() as client:
        job = client.submit({"name": "spew", "python_path": [root],
                             "root": {"name": "spew", "call": "tests.support.pool_probes:output",
                                      "args": [lines]}})["id"]
        assert client.wait(job, timeout=60)["state"] == "completed"
        logging_stats = client.status()["logging"]
    assert logging_stats["dropped"] == 0 and logging_stats["paused"] > 0
    daemon.stop()
    log = daemon.log().splitlines()
    out = [i for i, line in enumerate(log) if line.startswith("INFO    procpoold.task: out ")]
    assert len(out) == lines
    assert log[out[-1]].startswith(f"INFO    procpoold.task: out {lines - 1} [")
    [done] = [i for i, line in enumerate(log) if 'task "spew" completed' in line]
    assert done > out[-1]

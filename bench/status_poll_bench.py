"""What one status poll of a big job costs: built in process, and through a real daemon while the
job runs.

    python bench/status_poll_bench.py [--tasks 20000] [--reps 50] [--polls 100] [--no-daemon]

In process: the time to build one reply for a job of ``--tasks`` tasks (half completed with a
result, a few running): the whole columnar status (what a progress poll sent before), the
summary view, and the tasks changed since a cursor (10 changes between two polls); medians of
``--reps``. Through a daemon (2 workers, tasks of 2 ms): ``--polls`` polls of the running job,
alternating a ``wait`` in the columnar view with timeout 0 (the reply a progress poll got) and
one with ``changes_since`` (its cursor from the previous poll): the median round trip and reply
size of each. Modes a checkout does not have are left out (to run it against an older one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procpool.contract.codec import pack  # noqa: E402
from procpool.contract.tree import parse_job  # noqa: E402
from procpoold.core import status  # noqa: E402
from procpoold.core.jobs import Job  # noqa: E402


def build_job(n: int) -> Job:
    raw: dict[str, Any] = {
        "name": "big",
        "root": {"name": "g", "concurrent": [{"name": f"t{i}", "call": "m:f"} for i in range(n)]},
    }
    job = Job("1", parse_job(raw), raw, 1000.0)
    job.start_run(1000.0)
    for i in range(n // 2):
        job.mark_running(i, f"a{i}", 1001.0)
        job.complete(i, 1002.0, result=i)
    for i in range(n // 2, n // 2 + 8):
        job.mark_running(i, f"a{i}", 1003.0)
    return job


def median_us(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def in_process(n: int, reps: int) -> None:
    job = build_job(n)
    print(f"in process, a job of {n} tasks: median of {reps} builds")
    size = len(pack(status.columns_page(job, 0)))
    us = median_us(lambda: status.columns_page(job, 0), reps)
    print(f"  columns view, every task:  {us:9.0f} us  {size} B")
    if hasattr(status, "summary_status"):
        size = len(pack(status.page(job, "summary", 0, 1000)))  # type: ignore[arg-type]
        us = median_us(lambda: status.page(job, "summary", 0, 1000), reps)  # type: ignore[arg-type]
        print(f"  summary view:              {us:9.1f} us  {size} B")
    if hasattr(status, "changes_page"):
        cursor = status.changes_page(job, "")["cursor"]
        nxt = [n // 2 + 8]
        times, sizes = [], []
        for _ in range(reps):
            for _ in range(10):  # ten changes between two polls: five tasks start, five complete
                i = nxt[0]
                if job.tasks[i].state == "ready":
                    job.mark_running(i, f"b{i}", 1004.0)
                else:
                    job.complete(i, 1005.0, result=i)
                    nxt[0] += 1
            start = time.perf_counter()
            reply = status.changes_page(job, cursor)
            times.append(time.perf_counter() - start)
            cursor = reply["cursor"]
            sizes.append(len(pack(reply)))
        med = statistics.median(times) * 1e6
        print(f"  changes since a cursor:    {med:9.1f} us  {int(statistics.median(sizes))} B (10 changes)")


def through_daemon(n: int, polls: int) -> None:
    from tests.support.daemon import DaemonProcess

    job = {
        "name": "big",
        "root": {"concurrent": [{"name": f"t{i}", "call": "time:sleep", "args": [0.002]} for i in range(n)]},
    }
    with DaemonProcess(extra_args=["--workers", "2"]) as d, d.client(timeout=60) as client:
        job_id = client.submit(job)["id"]
        time.sleep(0.5)
        has_changes = True  # until the daemon refuses the argument (an older checkout)
        cursor = ""
        runs: dict[str, list[tuple[float, int]]] = {"wait columns": [], "wait changes_since": []}
        for k in range(polls):
            args: dict[str, Any] = {"id": job_id, "timeout": 0.0, "view": "columns"}
            mode = "wait columns"
            if k % 2 and has_changes:
                mode = "wait changes_since"
                args["changes_since"] = cursor
            start = time.perf_counter()
            try:
                reply = client.call("wait", args)
            except Exception as exc:  # an older daemon: no changes_since
                print(f"  {mode}: {exc}")
                has_changes = False
                continue
            took = time.perf_counter() - start
            if reply["finished"]:
                break
            if mode == "wait changes_since":
                cursor = reply["status"]["cursor"]
                if k == 1:
                    continue  # the first is a full answer (no cursor yet)
            runs[mode].append((took, len(pack(reply))))
            time.sleep(0.02)
        done = client.status(job_id, tasks_limit=1)["job"]["counts"]
        print(f"through a daemon, a running job of {n} tasks (2 workers; counts at the end {done}):")
        for mode, got in runs.items():
            if got:
                rt = statistics.median(t for t, _ in got) * 1e3
                size = statistics.median(s for _, s in got)
                print(f"  {mode:20s} {len(got):4d} polls  round trip {rt:7.2f} ms  reply {int(size)} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--polls", type=int, default=100)
    parser.add_argument("--no-daemon", action="store_true")
    a = parser.parse_args()
    in_process(a.tasks, a.reps)
    if not a.no_daemon:
        through_daemon(a.tasks, a.polls)


if __name__ == "__main__":
    main()

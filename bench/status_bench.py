"""What a big job's status costs: the full view (format 1) against the columnar one (format 2).

Part 1, in one process: a finished job of N no-op tasks (one attempt each, as W1 leaves it);
per task, the daemon's build of every page, their msgpack encoding, and the client's decoding
(msgpack plus, for the columnar view, JobStatus.decode), with the reply bytes per task.
Part 2, through a real daemon: the same job run on 2 workers, then the wall time of
``procctl status JOB`` (the bounded summary), ``procctl status JOB --all`` (every task as a tree,
what ``procctl status JOB`` printed before the columnar view) and ``procctl --json status JOB``,
beside ``procctl ping`` (Python's start and the imports: the floor of any procctl command).

    .venv/bin/python bench/status_bench.py [--tasks 20000] [--rounds 5] [--no-daemon]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from procpool.contract.status import JobStatus
from procpool.contract.tree import parse_job
from procpoold.core import status
from procpoold.core.jobs import Job

BENCH = Path(__file__).resolve().parent
PAGE = 1_000  # the daemon's default status_page_size


def finished_job(n: int) -> Job:
    raw: dict[str, Any] = {
        "name": "w1",
        "root": {"concurrent": [{"name": f"t{i}", "call": "tasks:noop"} for i in range(n)]},
    }
    job = Job("1", parse_job(raw), raw, time.time())
    now = time.time()
    job.start_run(now)
    for i in range(n):
        job.mark_running(i, f"1.{i}.1", now)
        job.complete(i, now + 0.001)
    job.finish_run(now + 1)
    return job


def full_round(job: Job) -> tuple[float, float, int]:
    """Build + encode every page of the full view, then decode them as the client does."""
    t0 = time.perf_counter()
    frames = []
    first: int | None = 0
    while first is not None:
        page = status.full_page(job, first, PAGE)
        frames.append(msgpack.packb(page, use_bin_type=True))
        first = page["page"]["next"]
    t1 = time.perf_counter()
    tasks: list[Any] = []
    for frame in frames:
        tasks += msgpack.unpackb(frame, raw=False)["tasks"]
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, sum(len(f) for f in frames)


def columns_round(job: Job) -> tuple[float, float, int]:
    """Build + encode every page of the columnar view, then decode them as the client does."""
    t0 = time.perf_counter()
    frames = []
    first: int | None = 0
    while first is not None:
        page = status.columns_page(job, first)
        frames.append(msgpack.packb(page, use_bin_type=True))
        first = page["columns"]["next"]
    t1 = time.perf_counter()
    decoded = JobStatus.decode(msgpack.unpackb(frames[0], raw=False))
    for frame in frames[1:]:
        decoded.extend(JobStatus.decode(msgpack.unpackb(frame, raw=False)))
    t2 = time.perf_counter()
    assert decoded.counts() == {"completed": len(job.tasks)}
    return t1 - t0, t2 - t1, sum(len(f) for f in frames)


def in_process(n: int, rounds: int) -> None:
    job = finished_job(n)
    print(f"in-process, a finished job of {n} tasks, medians of {rounds} interleaved rounds, per task:")
    results: dict[str, list[tuple[float, float, int]]] = {"full (format 1)": [], "columns (format 2)": []}
    for _ in range(rounds):
        results["full (format 1)"].append(full_round(job))
        results["columns (format 2)"].append(columns_round(job))
    for name, runs in results.items():
        build = statistics.median(r[0] for r in runs) / n * 1e6
        decode = statistics.median(r[1] for r in runs) / n * 1e6
        size = runs[0][2] / n
        print(f"  {name:<20} build+encode {build:6.2f} us  decode {decode:6.2f} us  {size:6.1f} bytes")


def through_daemon(n: int, rounds: int) -> None:
    sys.path.insert(0, str(BENCH))
    from run import Daemon  # the benchmark's own daemon harness

    with Daemon(workers=2) as daemon:
        client = daemon.client()
        job = {"name": "w1", "python_path": [str(BENCH)],
               "root": {"concurrent": [{"name": f"t{i}", "call": "tasks:noop"} for i in range(n)]}}
        job_id = client.submit(job, wait=600)["id"]
        client.close()
        env = {**os.environ, "PROCPOOL_SOCKET": str(daemon.socket)}
        procctl = [sys.executable, "-m", "procpool.cli"]
        variants = {
            "procctl ping (the floor)": [*procctl, "ping"],
            "procctl status JOB": [*procctl, "status", job_id],
            "procctl status JOB --all": [*procctl, "status", job_id, "--all"],
            "procctl --json status JOB": [*procctl, "--json", "status", job_id],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        lines: dict[str, int] = {}
        for _ in range(rounds):
            for name, cmd in variants.items():
                t0 = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, check=True).stdout
                times[name].append(time.perf_counter() - t0)
                lines[name] = out.count(b"\n")
        print(f"through a daemon, a finished job of {n} tasks, wall time (median of {rounds}):")
        for name, values in times.items():
            print(f"  {name:<28} {statistics.median(values) * 1000:7.0f} ms  {lines[name]:>6} lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-daemon", action="store_true", help="only the in-process part")
    args = parser.parse_args()
    in_process(args.tasks, args.rounds)
    if not args.no_daemon:
        through_daemon(args.tasks, args.rounds)


if __name__ == "__main__":
    main()

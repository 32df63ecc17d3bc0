"""Benchmark of the worker pool (``PoolExecutor``) driven as the daemon drives it.

Run from the repository root (with the extension built): ``python bench/pool_bench.py``.

A real :class:`~procpoold.loop.EventLoop` runs the pool; a minimal scheduler stand-in submits
attempts from inside ``attempt_finished``, exactly where the daemon's scheduler would.

* round trip: one no-op attempt at a time (the next one is submitted when the previous one is
  reported), busy, for ``--rounds`` attempts: p50/p99 from ``submit`` to ``attempt_finished``;
* throughput: ``--tasks`` no-op attempts, submitted in bursts of whatever ``free_slots()`` allows
  (scheduler style), and all at once (queued in the pool);
* multiprocessing.Pool(2).apply_async on the same no-op, for reference on this machine;
* idle CPU: a pool of 4 workers left idle for ``--idle`` seconds, CPU of daemon + zygote + workers;
* USS per worker (unshared memory, psutil) after the workers have run a few attempts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import psutil

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))

from procpoold.engines import AttemptSpec, Outcome  # noqa: E402
from procpoold.loop import EventLoop  # noqa: E402
from procpoold.pool.pool import PoolExecutor  # noqa: E402
from procpoold.pool.slot import PoolSettings  # noqa: E402

NOOP = "tasks:noop"  # bench/tasks.py


def _noop() -> None:
    return None


class Driver:
    """Scheduler stand-in: submits attempts and records when they finish."""

    def __init__(self, loop: EventLoop, pool: PoolExecutor) -> None:
        self.loop, self.pool = loop, pool
        self.n = 0
        self.left = 0
        self.finished = 0
        self.failed: list[Outcome] = []
        self.t_submit = 0.0
        self.samples: list[float] = []
        self.mode = "idle"

    def spec(self) -> AttemptSpec:
        self.n += 1
        return AttemptSpec(attempt_id=f"a{self.n}#1", job_id="j", job_name="bench", task_id=f"a{self.n}",
                           task_name="noop", attempt=1, kind="call", call=NOOP, python_path=[BENCH])

    def submit_one(self) -> None:
        self.left -= 1
        self.t_submit = time.perf_counter()
        self.pool.submit(self.spec())

    def burst(self) -> None:
        for _ in range(min(self.left, self.pool.free_slots())):
            self.left -= 1
            self.pool.submit(self.spec())

    # ExecutorEvents
    def attempt_started(self, attempt_id: str, pid: int | None, worker: str | None) -> None:
        pass

    def attempt_finished(self, outcome: Outcome) -> None:
        self.finished += 1
        if outcome.status != "completed":
            self.failed.append(outcome)
        if self.mode == "roundtrip":
            self.samples.append(time.perf_counter() - self.t_submit)
            if self.left > 0:
                self.submit_one()
            else:
                self.loop.stop()
        elif self.mode == "burst":
            if self.left > 0:
                self.burst()
            elif self.finished == self.target:
                self.loop.stop()
        elif self.mode == "flood" and self.finished == self.target:
            self.loop.stop()

    def attempt_progress(self, attempt_id: str, progress: dict[str, Any]) -> None:
        pass

    def attempt_log(self, attempt_id: str, stream: str, level: int, message: str,
                    fields: dict[str, str] | None = None) -> None:
        pass

    def namespace_op(self, attempt_id: str, op: str, args: dict[str, Any]) -> Any:
        return None

    target = 0


def _wait_idle(loop: EventLoop, pool: PoolExecutor, n: int) -> None:
    end = time.monotonic() + 10
    while sum(1 for w in pool.workers_info() if w["state"] == "idle") < n:
        if time.monotonic() > end:
            raise SystemExit("workers did not start")
        loop.run_once(20)


def make(workers: int, **settings: Any) -> tuple[EventLoop, PoolExecutor, Driver]:
    loop = EventLoop()
    pool = PoolExecutor(PoolSettings(workers=workers, **settings))
    pool.prefork()
    driver = Driver(loop, pool)
    pool.start(loop, driver)
    _wait_idle(loop, pool, workers)
    return loop, pool, driver


def roundtrip(rounds: int, spin_us: float) -> tuple[float, float]:
    loop, pool, d = make(1, spin_us=spin_us)
    try:
        d.mode, d.left = "roundtrip", rounds
        d.submit_one()
        loop.run()
        samples = d.samples[rounds // 10:]  # warm-up dropped
        assert not d.failed, d.failed[:3]
        q = statistics.quantiles(samples, n=100)
        return q[49] * 1e6, q[98] * 1e6
    finally:
        pool.shutdown(1)
        loop.close()


def throughput(tasks: int, workers: int, mode: str, spin_us: float) -> float:
    loop, pool, d = make(workers, spin_us=spin_us)
    try:
        d.mode, d.left, d.target = mode, tasks, tasks
        start = time.perf_counter()
        if mode == "burst":
            d.burst()
        else:
            d.left = 0
            for _ in range(tasks):
                pool.submit(d.spec())
        loop.run()
        elapsed = time.perf_counter() - start
        assert not d.failed and d.finished == tasks, (d.finished, d.failed[:3])
        return tasks / elapsed
    finally:
        pool.shutdown(1)
        loop.close()


def mp_throughput(tasks: int) -> float:
    with multiprocessing.get_context("fork").Pool(2) as mp:
        mp.apply(_noop)
        start = time.perf_counter()
        results = [mp.apply_async(_noop) for _ in range(tasks)]
        for r in results:
            r.get()
        return tasks / (time.perf_counter() - start)


def idle_cpu_and_uss(seconds: float) -> tuple[float, list[float]]:
    loop, pool, d = make(4)
    try:
        d.mode, d.left, d.target = "flood", 0, 400
        for _ in range(400):  # warm the workers up: imports, caches, a few attempts each
            pool.submit(d.spec())
        loop.run()
        _wait_idle(loop, pool, 4)
        time.sleep(0.2)
        zygote = pool._zygote
        assert zygote is not None
        procs = [psutil.Process()] + [psutil.Process(p) for p in
                                       [zygote.pid] + [w["pid"] for w in pool.workers_info()]]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        loop.call_later(seconds, loop.stop)
        loop.run()
        used = sum(sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True))
        uss = [p.memory_full_info().uss / 2**20 for p in procs[2:]]
        return 100 * used / seconds, uss
    finally:
        pool.shutdown(1)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--spin-us", type=float, default=PoolSettings.spin_us)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    p50, p99 = roundtrip(args.rounds, args.spin_us)
    rows.append((f"dispatch round trip, busy, spin {args.spin_us:g} us",
                 f"p50 {p50:.1f} us, p99 {p99:.1f} us"))
    p50, p99 = roundtrip(min(args.rounds, 3000), 0)
    rows.append(("dispatch round trip, busy, no spin", f"p50 {p50:.1f} us, p99 {p99:.1f} us"))
    for mode in ("burst", "flood"):
        rate = throughput(args.tasks, 2, mode, args.spin_us)
        rows.append((f"{args.tasks} no-ops, 2 workers, {mode}", f"{rate:,.0f} tasks/s"))
    rate = mp_throughput(args.tasks)
    rows.append((f"multiprocessing.Pool(2), {args.tasks} no-ops", f"{rate:,.0f} tasks/s"))
    cpu, uss = idle_cpu_and_uss(args.idle)
    rows.append((f"idle CPU, 4 workers, {args.idle:g} s", f"{cpu:.2f} % of a core"))
    rows.append(("USS per worker (after 100 attempts each)", ", ".join(f"{u:.2f}" for u in uss) + " MiB"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

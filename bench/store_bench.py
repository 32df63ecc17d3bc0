"""The state store alone: the loop's cost of a group commit, and of writing a 1 MiB value file.

Run from the repository root (no daemon needed)::

    python bench/store_bench.py [--commits 2000] [--entries 64] [--tasks 20000] [--values 200] [--repeat 5]

* commit: ``--commits`` flushes, each appending ``--entries`` small task entries (the size of a
  start or done entry) to one job, as a loop iteration of W1 does; the time the loop spends in
  ``flush`` (us per commit; with a write-ahead log, what the compactor thread spends applying is
  printed apart, as it is off the loop);
* w1: a W1 replica in this process: the scheduler with an executor that only records, ``--tasks``
  no-ops in one job, 70 attempts per loop iteration; the loop thread's CPU per task (what the
  daemon's loop would spend, without the pool), and the whole process's (with the compactor);
* value: ``--values`` values of 1 MiB written as a new job's document would be (``put``), with
  the jobs dropped again as retention would, and the store's background work done between two
  puts (spare files written ahead, when the store has them): ms per 1 MiB value on the loop.

Medians of ``--repeat`` runs. Works with the store before and after the write-ahead log (it
looks for what each has).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from procpoold.engines import AttemptSpec, ExecutorEvents, Outcome, StopReason
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store.sqlite import StateStore


class RecordingExecutor:
    """Takes ``slots`` attempts at a time and runs nothing (the test's, without its module)."""

    name = "recording"
    kinds = frozenset({"call", "cmd"})
    outlives_daemon = False

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.submitted: list[AttemptSpec] = []

    def prefork(self) -> None: ...

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None: ...

    def free_slots(self) -> int:
        return self.slots - len(self.submitted)

    def submit(self, spec: AttemptSpec) -> None:
        self.submitted.append(spec)

    def stop_attempt(self, attempt_id: str, reason: StopReason) -> None: ...

    def shutdown(self, grace: float) -> None: ...

    def info(self) -> dict[str, Any]:
        return {}


def w1(folder: Path, tasks: int) -> tuple[float, float]:
    """Loop-thread and process CPU per task (us) of a W1 job with the store on, in this process."""
    store = StateStore(folder / "state.db")
    loop = EventLoop()
    executor = RecordingExecutor(slots=70)
    scheduler = Scheduler(loop, Engines([executor]), store=store)
    scheduler.recover()
    thread0, process0 = time.thread_time(), time.process_time()
    job, _ = scheduler.submit({"name": "w1", "root": {"concurrent": [{"call": "m:f"}] * tasks}})
    while not job.finished:
        loop.run_once(0)
        done, executor.submitted = executor.submitted, []
        for spec in done:
            scheduler.attempt_finished(Outcome(spec.attempt_id, "completed", result=None))
    loop.run_once(0)
    thread, process = time.thread_time() - thread0, time.process_time() - process0
    store.close()
    loop.close()
    return thread / tasks * 1e6, process / tasks * 1e6


def commits(folder: Path, count: int, entries: int) -> tuple[float, float]:
    store = StateStore(folder / "state.db")
    store.add_job("1", None, "j", "running", 1.0, {"root": {}}, {"state": "running"})
    store.flush()
    entry = [2, 0, 1, 1.5, 1.6, None, 0, "w0"]  # about the size of a task's done entry
    spent = 0.0
    for n in range(count):
        store.append_tasks("1", [[entry[0], n * entries + i, *entry[2:]] for i in range(entries)])
        started = time.perf_counter()
        store.flush()
        spent += time.perf_counter() - started
    compactor = getattr(store, "compactor", None)
    if compactor is not None:
        store.settle()
        off_loop = compactor.busy
    else:
        off_loop = 0.0
    store.close()
    return spent / count * 1e6, off_loop / count * 1e6


def values(folder: Path, count: int) -> float:
    store = StateStore(folder / "state.db")
    large: Any = store.values
    data = b"v" * (1 << 20)
    spent = 0.0
    for n in range(count):
        job_id = str(n + 1)
        started = time.perf_counter()
        large.put(job_id, "doc", data)
        spent += time.perf_counter() - started
        if n >= 8:
            large.drop_job(str(n - 7))  # retention drops old jobs (the compactor does, off the loop)
        if hasattr(large, "refill"):
            large.refill()  # the compactor's work between two values, off the loop
    store.close()
    return spent / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--values", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    loop_us: list[float] = []
    off_us: list[float] = []
    value_ms: list[float] = []
    loop_cpu: list[float] = []
    process_cpu: list[float] = []
    for _ in range(args.repeat):
        folder = Path(tempfile.mkdtemp(prefix="ppstore-"))
        try:
            on, off = commits(folder / "c", args.commits, args.entries)
            loop_us.append(on)
            off_us.append(off)
            value_ms.append(values(folder / "v", args.values))
            thread, process = w1(folder / "w", args.tasks)
            loop_cpu.append(thread)
            process_cpu.append(process)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"commit of {args.entries} entries: {statistics.median(loop_us):.1f} us on the loop, "
          f"{statistics.median(off_us):.1f} us off it (runs: {', '.join(f'{u:.1f}' for u in loop_us)})")
    print(f"W1 replica, {args.tasks} no-ops: loop thread CPU {statistics.median(loop_cpu):.2f} us/task, "
          f"process CPU {statistics.median(process_cpu):.2f} us/task "
          f"(runs: {', '.join(f'{u:.2f}/{p:.2f}' for u, p in zip(loop_cpu, process_cpu, strict=True))})")
    print(f"1 MiB value file: {statistics.median(value_ms):.3f} ms on the loop "
          f"(runs: {', '.join(f'{m:.3f}' for m in value_ms)})")


if __name__ == "__main__":
    main()

"""The scheduler alone: its CPU per task for W1 and W3, without workers, pool or journal process.

Run from the repository root (with the extension built)::

    python bench/scheduler_bench.py [--store] [--w1-runs 5] [--w3-runs 10]

A :class:`~procpoold.scheduler.Scheduler` on a real :class:`~procpoold.loop.EventLoop` takes the
W1 job (one concurrent group of 20,000 ``tasks:noop``) and the W3 job (a sequential group of 50
concurrent groups of 40) from ``bench/harness.py``. A recording executor stands in for the pool
(64 free slots: it takes what a pump pass gives it), and a stand-in journal sink counts the
lifecycle events instead of packing them. Each round reports every attempt it was given as started
and then as completed in one batch (as the pool reports a drain of its result rings), then runs
one loop iteration (the pump, the flush). With ``--store`` a real state store in a temporary
directory takes the commits (its compactor thread's CPU counts too).

Printed: the best run's CPU per task (``time.process_time``, all threads), and the median over
the runs of each part: ``accept`` (``submit``: parse, the Job, its first ready tasks), ``pump``
(the loop iterations: preparing attempts, the flushes), ``started`` (``attempt_started``) and
``finished`` (``attempts_finished``).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "ctl"))
sys.path.insert(0, str(BENCH.parent / "daemon"))

from harness import w1_job, w3_job  # noqa: E402
from procpoold.engines import AttemptSpec, ExecutorEvents, Outcome, StopReason  # noqa: E402
from procpoold.engines.registry import Engines  # noqa: E402
from procpoold.loop import EventLoop  # noqa: E402
from procpoold.scheduler import Scheduler  # noqa: E402
from procpoold.store.sqlite import StateStore  # noqa: E402
from procpoold.supervisor import GC_THRESHOLDS  # noqa: E402

PARTS = ("accept", "pump", "started", "finished")


class CountingSink:
    """What the scheduler calls on the journal's sink, counting lifecycle events."""

    def __init__(self) -> None:
        self.named: dict[str, int] = {}
        self.acked = 0
        self.on_events: Any = None
        self.events = 0

    def caller_site(self, depth: int = 1) -> int:
        return 1

    def name_job(self, job_id: str, fields: dict[str, str], names: list[str]) -> int:
        self.named[job_id] = len(self.named) + 1
        return self.named[job_id]

    def event(self, *_item: object) -> None:
        self.events += 1

    def started(self, *_item: object) -> None:
        self.events += 1

    def seal(self) -> None: ...

    def forget_job(self, job_id: str) -> None:
        self.named.pop(job_id, None)

    def record(self, *_args: object) -> None: ...


class RecordingExecutor:
    """Takes up to ``slots`` attempts and keeps them for the benchmark to report on."""

    name: str = "recording"
    kinds = frozenset({"call", "cmd"})
    outlives_daemon = False

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.new: list[AttemptSpec] = []
        self.running = 0

    def prefork(self) -> None: ...

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None: ...

    def free_slots(self) -> int:
        return self.slots - self.running

    def submit(self, spec: AttemptSpec) -> None:
        self.new.append(spec)
        self.running += 1

    def expect_work(self, uid: int | None) -> None: ...

    def stop_attempt(self, attempt_id: str, reason: StopReason) -> None: ...

    def shutdown(self, grace: float) -> None: ...

    def info(self) -> dict[str, Any]:
        return {}


def run(raw: dict[str, Any], store_on: bool) -> dict[str, float]:
    """One job through a fresh scheduler; seconds of CPU per part (see the module docstring)."""
    folder = Path(tempfile.mkdtemp(prefix="sched-bench-"))
    loop = EventLoop()
    executor = RecordingExecutor(64)
    store = StateStore(folder / "state.db") if store_on else None
    scheduler = Scheduler(loop, Engines([executor]), store=store,
                          sink=CountingSink())  # type: ignore[arg-type]
    parts = dict.fromkeys(PARTS, 0.0)
    clock = time.process_time
    try:
        t0 = clock()
        job, _ = scheduler.submit(raw)
        t1 = clock()
        loop.run_once(0)
        parts["accept"], parts["pump"] = t1 - t0, clock() - t1
        while not job.finished:
            specs, executor.new = executor.new, []
            a = clock()
            for spec in specs:
                scheduler.attempt_started(spec.attempt_id, 1, "w")
            b = clock()
            executor.running -= len(specs)
            outcomes = [Outcome(spec.attempt_id, "completed") for spec in specs]
            c = clock()
            scheduler.attempts_finished(outcomes)
            d = clock()
            loop.run_once(0)
            parts["started"] += b - a
            parts["finished"] += d - c
            parts["pump"] += clock() - d
        return {k: v / len(job.tasks) * 1e6 for k, v in parts.items()}
    finally:
        if store is not None:
            store.close()
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)


def report(name: str, raw: dict[str, Any], runs: int, store_on: bool) -> None:
    results = [run(raw, store_on) for _ in range(runs)]
    best = min(sum(r.values()) for r in results)
    medians = ", ".join(f"{k} {statistics.median(r[k] for r in results):.2f}" for k in PARTS)
    print(f"{name}: {best:.2f} us of CPU per task (best of {runs}); medians: {medians}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", action="store_true", help="commit to a real state store")
    parser.add_argument("--w1-runs", type=int, default=5)
    parser.add_argument("--w3-runs", type=int, default=10)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # as the daemon runs
    print(f"store {'on' if args.store else 'off'}")
    report("W1 20,000 no-ops", w1_job(20000), args.w1_runs, args.store)
    report("W3 50 x 40 no-ops", w3_job(50, 40), args.w3_runs, args.store)


if __name__ == "__main__":
    main()

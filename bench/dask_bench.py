"""procpool's Dask engine against plain Dask on the same cluster, and against procpool's own pool.

Run from the repository root (with the extension built and the ``bench`` extra installed)::

    python bench/dask_bench.py [--workers 2] [--threads 1] [--sleep-tasks 200] [--sleep-ms 5]
                               [--noops 2000] [--repeat 5] [--quick]

One ``distributed.LocalCluster`` of ``--workers`` worker processes x ``--threads`` threads on
127.0.0.1 serves the whole run. Two workloads, each one job of one concurrent group:

* S: ``--sleep-tasks`` call tasks of ``tasks:sleep_ms(--sleep-ms)`` (ideal: tasks x ms / slots);
* N: ``--noops`` call tasks of ``tasks:noop``;

on three contenders, which take turns (a round is one run of each, ``--repeat`` rounds; every
figure is the median of the runs):

* procpool, local pool: a fresh ``procpoold --workers W``, the job through ``procpool.Client``;
* procpool, Dask engine: a fresh ``procpoold --workers W --engine dask --dask-scheduler ADDR``
  against the cluster, the same job (each attempt runs in a subprocess on a Dask worker);
* plain Dask: a ``distributed.Client`` on the cluster, ``client.map(tasks.sleep_ms, ...)`` for S
  and one ``client.submit(tasks.noop, pure=False)`` per task for N, then ``client.gather``.

From submit to every result in hand, each run after a warm-up of 20 no-ops. The overhead per
task that procpool adds over plain Dask is (procpool with the engine - plain Dask) / tasks, of
the medians. ``bench/run.py`` runs this after its rounds (``make bench``) and adds its table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
if str(BENCH) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # the Dask workers import tasks
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)

import tasks  # noqa: E402  (bench/*.py, after the path is set)
from harness import Daemon, job, noops, run_job  # noqa: E402

WARM_TASKS = 20


@dataclass
class DaskParams:
    workers: int = 2
    threads: int = 1
    sleep_tasks: int = 200
    sleep_ms: float = 5.0
    noops: int = 2_000
    repeat: int = 5

    @classmethod
    def quick(cls, workers: int = 2, threads: int = 1) -> DaskParams:
        return cls(workers=workers, threads=threads, sleep_tasks=40, noops=300, repeat=1)


@dataclass
class Side:
    """One contender's runs: workload -> seconds per run."""

    name: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    skipped: str = ""

    def add(self, key: str, seconds: float) -> None:
        self.runs.setdefault(key, []).append(seconds)

    def median(self, key: str) -> float | None:
        values = self.runs.get(key)
        return statistics.median(values) if values else None


def engine_available() -> bool:
    """Whether this procpoold has the Dask engine (``procpoold.engines.dask``)."""
    try:
        return importlib.util.find_spec("procpoold.engines.dask") is not None
    except ModuleNotFoundError:
        return False


def sleep_job(p: DaskParams) -> dict[str, Any]:
    return job("sleep", {"concurrent": [{"name": f"s{i}", "call": "tasks:sleep_ms", "args": [p.sleep_ms]}
                                        for i in range(p.sleep_tasks)]})


def noop_job(p: DaskParams) -> dict[str, Any]:
    return job("noops", {"concurrent": noops(p.noops)})


def procpool_run(p: DaskParams, side: Side, args: tuple[str, ...] = ()) -> None:
    """One run of both workloads on a fresh procpoold (``args``: the engine's options)."""
    with Daemon(p.workers, args=args) as daemon, contextlib.closing(daemon.client()) as client:
        run_job(client, job("warm", {"concurrent": noops(WARM_TASKS)}))
        for key, spec in (("sleep", sleep_job(p)), ("noops", noop_job(p))):
            start = time.perf_counter()
            status = run_job(client, spec)
            side.add(key, time.perf_counter() - start)
            assert status["status"].counts() == {"completed": status["status"].total}


def plain_run(p: DaskParams, address: str, side: Side) -> None:
    """One run of both workloads with a fresh ``distributed.Client`` on the cluster."""
    from distributed import Client

    with Client(address) as client:
        client.gather([client.submit(tasks.noop, pure=False) for _ in range(WARM_TASKS)])
        start = time.perf_counter()
        results = client.gather(client.map(tasks.sleep_ms, [p.sleep_ms] * p.sleep_tasks, pure=False))
        side.add("sleep", time.perf_counter() - start)
        assert len(results) == p.sleep_tasks
        start = time.perf_counter()
        results = client.gather([client.submit(tasks.noop, pure=False) for _ in range(p.noops)])
        side.add("noops", time.perf_counter() - start)
        assert len(results) == p.noops


@contextlib.contextmanager
def local_cluster(p: DaskParams) -> Iterator[str]:
    """A LocalCluster of worker processes on 127.0.0.1; its scheduler's address."""
    from distributed import LocalCluster

    saved = dict(os.environ)  # a Nanny writes its pre-spawn environment into os.environ: the
    cluster = LocalCluster(n_workers=p.workers, threads_per_worker=p.threads, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
    os.environ.clear()  # daemons started below must not inherit it
    os.environ.update(saved)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def measure(p: DaskParams, say: Callable[[str], None]) -> list[Side]:
    """``p.repeat`` interleaved rounds of the three contenders; their runs."""
    local = Side("procpool, local pool")
    engine = Side("procpool, Dask engine")
    plain = Side("plain Dask")
    if not engine_available():
        engine.skipped = "not run: this procpoold has no Dask engine (procpoold.engines.dask)"
    with local_cluster(p) as address:
        for r in range(p.repeat):
            say(f"dask bench: round {r + 1} of {p.repeat}")
            procpool_run(p, local)
            if not engine.skipped:
                procpool_run(p, engine, ("--engine", "dask", "--dask-scheduler", address))
            plain_run(p, address, plain)
    return [local, engine, plain]


def table(p: DaskParams, sides: list[Side]) -> tuple[list[str], list[str]]:
    """The result as plain-text lines and as Markdown lines."""
    local, engine, plain = sides
    slots = p.workers * p.threads
    ideal = p.sleep_tasks * p.sleep_ms / 1000 / slots
    head = ["workload", "unit", local.name, engine.name, plain.name, "procpool over plain Dask, per task"]
    rows: list[list[str]] = []
    for key, label, n in (("sleep", f"S {p.sleep_tasks} x {p.sleep_ms:g} ms sleep (ideal {ideal:.3f} s)",
                           p.sleep_tasks),
                          ("noops", f"N {p.noops:,} no-ops", p.noops)):
        cells = [label, "s"]
        for side in sides:
            value = side.median(key)
            cells.append(f"{value:.3f}" if value is not None else (side.skipped and "not run"))
        mine, base = engine.median(key), plain.median(key)
        cells.append(f"{(mine - base) / n * 1e3:+.2f} ms" if mine is not None and base is not None else "")
        rows.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [
        f"One LocalCluster of {p.workers} worker processes x {p.threads} thread(s) on 127.0.0.1 for the "
        f"whole run; procpoold with --workers {p.workers}. "
        + (f"Medians of {p.repeat} interleaved rounds (local pool, Dask engine, plain Dask in turn)."
           if p.repeat > 1 else "One round."),
        "Seconds from submit to every result; plain Dask: client.map (S) and one client.submit per task "
        "(N), then client.gather. Per-task overhead: (Dask engine - plain Dask) / tasks.",
    ]
    if engine.skipped:
        notes.append(f"{engine.name}: {engine.skipped}.")
    runs = [f"{side.name} {key}: " + ", ".join(f"{v:.3f}" for v in values)
            for side in sides for key, values in side.runs.items()]
    return ([*text, "", *notes, "", "Every run:", *runs],
            ["## procpool's Dask engine against plain Dask", "", *md, "", *[f"* {x}" for x in notes], "",
             "```", *runs, "```", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes and pool workers")
    parser.add_argument("--threads", type=int, default=1, help="threads per Dask worker")
    parser.add_argument("--sleep-tasks", type=int, default=200)
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--noops", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tasks, one round")
    args = parser.parse_args()
    if args.quick:
        p = DaskParams.quick(args.workers, args.threads)
    else:
        p = DaskParams(workers=args.workers, threads=args.threads, sleep_tasks=args.sleep_tasks,
                       sleep_ms=args.sleep_ms, noops=args.noops, repeat=args.repeat)
    sides = measure(p, lambda msg: print(msg, file=sys.stderr, flush=True))
    print("\n".join(table(p, sides)[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resource hints: I/O-bound tasks sharing the workers' event loops, against one real procpoold.

Run from the repository root (with the extension built)::

    python bench/io_bench.py [--workers 2] [--tasks 200] [--ms 50] [--repeat 5]

One job of ``--tasks`` concurrent ``async def`` tasks that each await ``--ms`` milliseconds
(``tasks:io_sleep_ms``), submitted and waited for in one round trip, twice per round: with
``"io": true`` (they share each worker's event loop, up to the daemon's ``async_per_worker``,
8 by default) and without (each holds its worker alone, as a CPU-bound task does). Without
sharing the floor is tasks x ms / workers (200 x 50 ms / 2 = 5 s); with it, tasks x ms /
(workers x async_per_worker) (0.625 s). The medians of ``--repeat`` rounds are printed, and the
pool's record of the most attempts on one worker's loop at once (``io_peak``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, job, run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tasks = [{"name": f"t{i}", "call": "tasks:io_sleep_ms", "args": [args.ms]} for i in range(args.tasks)]
    times: dict[bool, list[float]] = {True: [], False: []}
    with Daemon(args.workers) as daemon, daemon.client() as client:
        run_job(client, job("warm", {"io": True, "concurrent": tasks[:20]}))
        for _ in range(args.repeat):
            for io in (True, False):
                start = time.perf_counter()
                run_job(client, job("io" if io else "cpu", {"io": io, "concurrent": tasks}))
                times[io].append(time.perf_counter() - start)
        peak = client.pool()["info"]["io_peak"]
    floor = args.tasks * args.ms / 1000 / args.workers
    for io in (True, False):
        runs = ", ".join(f"{t:.3f}" for t in times[io])
        print(f'{args.tasks} x {args.ms:g} ms async tasks, {args.workers} workers, "io": {str(io).lower()}: '
              f"median {statistics.median(times[io]):.3f} s (runs: {runs})")
    print(f"without sharing at least {floor:.3f} s; most attempts on one worker's loop at once: {peak}")


if __name__ == "__main__":
    main()

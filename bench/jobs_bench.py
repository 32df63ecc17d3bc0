"""W1 and W2 of ``bench/run.py`` alone, against one real procpoold (procpool only, no peers).

Run from the repository root (with the extension built)::

    python bench/jobs_bench.py [--workers 2] [--tasks 20000] [--jobs 200] [--repeat 3]

* W1: ``--tasks`` no-op tasks in one concurrent group of one job: tasks/s, submit to all results;
* W2: ``--jobs`` one-task jobs submitted and waited for one after another (each a new job, so a
  worker switches jobs between every two of them): p50/p99 us per job.

The medians of ``--repeat`` runs are printed; a warm-up job runs first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, ProcpoolContender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    with Daemon(args.workers) as daemon:
        contender = ProcpoolContender(daemon)
        try:
            contender.warm()
            for _ in range(args.repeat):
                rates.append(args.tasks / contender.w1(args.tasks))
                samples = sorted(contender.w2(args.jobs))
                p50s.append(samples[len(samples) // 2] * 1e6)
                p99s.append(samples[min(len(samples) - 1, len(samples) * 99 // 100)] * 1e6)
        finally:
            contender.close()
    print(f"W1 {args.tasks} no-ops, {args.workers} workers: {statistics.median(rates):,.0f} tasks/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(f"W2 {args.jobs} one-task jobs: p50 {statistics.median(p50s):,.0f} us, "
          f"p99 {statistics.median(p99s):,.0f} us (p50 runs: {', '.join(f'{p:,.0f}' for p in p50s)})")


if __name__ == "__main__":
    main()

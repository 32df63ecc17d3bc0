"""What a refresh of ``procctl top`` costs the daemon, against a naive refresh, on a big queue.

    python bench/top_bench.py [--tasks 20000] [--rounds 5] [--refreshes 30]

A daemon with 2 workers runs a job of ``--tasks`` command tasks (``sleep 600``): 2 run, the rest
wait in the queue. First, the cost of top's first look (the whole job once, and the names and
priorities of the queued tasks, 4 pages a refresh) and how many refreshes it takes to read the
whole queue. Then, in interleaved rounds of ``--refreshes`` refreshes each, the daemon's CPU time
per refresh and the client's wall time per refresh of:

* ``top``: procctl top's collector (status summary and job list, pool, the job's changes since
  its cursor);
* ``naive``: the same summary and pool, and the job's whole columnar status, on a new connection
  each time (what a loop of ``procctl status JOB`` would cost at best).

Medians of the rounds. The job is cancelled at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, cpu_seconds
from procpool.cli.top import Collector


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--refreshes", type=int, default=30)
    args = parser.parse_args()
    with Daemon(workers=2) as daemon, daemon.client() as client:
        spec = {"name": "queue", "root": {"name": "all", "concurrent": [
            {"name": f"t{i}", "cmd": ["sleep", "600"]} for i in range(args.tasks)]}}
        job = client.submit(spec)["id"]
        try:
            collector = Collector(client)
            cpu, start = cpu_seconds(daemon.pid), time.perf_counter()
            snap = collector.poll()
            print(f"a job of {args.tasks} tasks, {snap.queued} queued: top's first look "
                  f"{(time.perf_counter() - start) * 1e3:.0f} ms, daemon CPU "
                  f"{(cpu_seconds(daemon.pid) - cpu) * 1e3:.0f} ms")
            refreshes = 1
            while snap.unread:
                snap = collector.poll()
                refreshes += 1
            print(f"the whole queue read after {refreshes} refreshes: {snap.by_priority}")

            def naive() -> None:
                with daemon.client() as other:
                    other.status(limit=20)
                    other.pool()
                    other.job_status(job)

            results: dict[str, tuple[list[float], list[float]]] = {"top": ([], []), "naive": ([], [])}
            for _ in range(args.rounds):
                for label, refresh in (("top", collector.poll), ("naive", naive)):
                    cpu, start = cpu_seconds(daemon.pid), time.perf_counter()
                    for _ in range(args.refreshes):
                        refresh()
                    results[label][0].append((cpu_seconds(daemon.pid) - cpu) / args.refreshes * 1e3)
                    results[label][1].append((time.perf_counter() - start) / args.refreshes * 1e3)
            for label, (cpus, walls) in results.items():
                print(f"{label:>5}: daemon CPU per refresh {statistics.median(cpus):.2f} ms "
                      f"(rounds: {', '.join(f'{c:.2f}' for c in cpus)}), client wall per refresh "
                      f"{statistics.median(walls):.2f} ms")
        finally:
            client.cancel(job)
            client.wait(job, timeout=60)


if __name__ == "__main__":
    main()

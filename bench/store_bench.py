"""The state store alone: the loop's cost of a group commit, and of writing a 1 MiB value file.

Run from the repository root (no daemon needed)::

    python bench/store_bench.py [--commits 2000] [--entries 64] [--values 200] [--repeat 5]

* commit: ``--commits`` flushes, each appending ``--entries`` small task entries (the size of a
  start or done entry) to one job, as a loop iteration of W1 does; the time the loop spends in
  ``flush`` (us per commit; with a write-ahead log, what the compactor thread spends applying is
  printed apart, as it is off the loop);
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

from procpoold.store.sqlite import StateStore


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
    parser.add_argument("--values", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    loop_us: list[float] = []
    off_us: list[float] = []
    value_ms: list[float] = []
    for _ in range(args.repeat):
        folder = Path(tempfile.mkdtemp(prefix="ppstore-"))
        try:
            on, off = commits(folder / "c", args.commits, args.entries)
            loop_us.append(on)
            off_us.append(off)
            value_ms.append(values(folder / "v", args.values))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"commit of {args.entries} entries: {statistics.median(loop_us):.1f} us on the loop, "
          f"{statistics.median(off_us):.1f} us off it (runs: {', '.join(f'{u:.1f}' for u in loop_us)})")
    print(f"1 MiB value file: {statistics.median(value_ms):.3f} ms on the loop "
          f"(runs: {', '.join(f'{m:.3f}' for m in value_ms)})")


if __name__ == "__main__":
    main()

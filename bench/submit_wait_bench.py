"""``procctl submit FILE --wait`` of a big job against ``Client.submit(job, wait=...)``.

One daemon, W1's job (one concurrent group of ``--tasks`` no-ops), ``--rounds`` interleaved
rounds; each round runs, in turn:

* ``client``: ``procpool.Client.submit(job, wait=600)`` in this process (an open client, the job
  already in memory, the reply in the full view with every task's result): the issue's reference;
* ``client-cols``: the same with ``view="columns"`` (the compact view procctl reads; the
  cheapest way to have every task's state and result);
* ``client-proc``: the full-view call in a fresh Python process that reads the job file, as a script
  would (Python's start, the imports and the file's decoding included, like procctl's);
* ``procctl``: the venv's ``procctl --socket S submit FILE --wait``, stdout and stderr to files
  (not a terminal), timed from process start to exit, as ``bench/run.py`` does.

Prints the median of each and the ratios of the medians, with every run, and the lines procctl
printed. Run from the repository root::

    .venv/bin/python bench/submit_wait_bench.py [--tasks 20000] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, ProcpoolContender, w1_job
from procpool.contract.status import View

_SCRIPT = """
import json, sys
from procpool import Client
with open(sys.argv[2]) as f:
    job = json.load(f)
with Client(sys.argv[1], timeout=60) as client:
    reply = client.submit(job, wait=600)
sys.exit(0 if reply["state"] == "completed" else 1)
"""


def client_in_process(contender: ProcpoolContender, spec: dict[str, Any], view: View = "full") -> float:
    start = time.perf_counter()
    reply = contender.client.submit(spec, wait=600, view=view)
    elapsed = time.perf_counter() - start
    status = reply["status"]
    held = len(status["tasks"]) if view == "full" else status.total
    if reply["state"] != "completed" or held != len(spec["root"]["concurrent"]):
        raise RuntimeError(f"the job ended {reply['state']}")
    return elapsed


def client_process(daemon: Daemon, path: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(daemon.socket), str(path)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the client process exited with {proc.returncode}: {proc.stderr[-2000:]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    spec = w1_job(args.tasks)
    runs: dict[str, list[float]] = {"client": [], "client-cols": [], "client-proc": [], "procctl": []}
    with Daemon(args.workers) as daemon:
        path = daemon.dir / "w1.json"
        path.write_text(json.dumps(spec))
        contender = ProcpoolContender(daemon)
        try:
            contender.warm()
            for _ in range(args.rounds):
                runs["client"].append(client_in_process(contender, spec))
                runs["client-cols"].append(client_in_process(contender, spec, "columns"))
                runs["client-proc"].append(client_process(daemon, path))
                runs["procctl"].append(contender.procctl(spec))
                # the finished jobs' history is cleaned between rounds: each round starts alike
                contender.client.call("clean", {})
        finally:
            contender.close()
    med = {name: statistics.median(values) for name, values in runs.items()}
    print(f"{args.tasks:,} no-ops in one concurrent group, {args.workers} workers, {args.rounds} rounds")
    for name, values in runs.items():
        print(f"  {name:12s} median {med[name]:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"  procctl / client       {med['procctl'] / med['client']:.2f}x")
    print(f"  procctl / client-cols  {med['procctl'] / med['client-cols']:.2f}x")
    print(f"  procctl / client-proc  {med['procctl'] / med['client-proc']:.2f}x")
    pairs = [p / c for p, c in zip(runs["procctl"], runs["client"], strict=True)]
    print(f"  procctl / client per round: {', '.join(f'{r:.2f}' for r in pairs)}"
          f" (median {statistics.median(pairs):.2f}x)")
    print(f"  procctl printed {contender.procctl_output}")


if __name__ == "__main__":
    main()

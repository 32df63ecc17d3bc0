"""The daemon's responsiveness while one task floods its output: the worst ``ping`` during it.

Run from the repository root: ``python bench/flood.py [--lines 200000] [--kind cmd|call] [--repeat 3]``.

A fresh procpoold in its default configuration (log level info, stderr to a file outside systemd)
runs one task that writes ``--lines`` short lines to its stdout as fast as it can: a command (a
Python process writing them) or a call (``tasks:spew`` in a pool worker). Meanwhile a second client
calls ``ping`` every 10 ms; the figure is the slowest ping from the submit until the job has
ended and the daemon's log has stopped growing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, job, run_job

PING_EVERY = 0.010
KINDS = ("cmd", "call")


@dataclass
class Flood:
    lines: int
    kind: str
    seconds: float  # submit to the job's final status
    pings: list[float]  # seconds each

    @property
    def worst_ms(self) -> float:
        return max(self.pings) * 1e3


def flood_job(lines: int, kind: str) -> dict[str, Any]:
    if kind == "cmd":
        writer = f"import sys\nw = sys.stdout.write\nfor i in range({lines}): w(f'line {{i}}\\n')\n"
        return job("flood", {"name": "flood", "cmd": [sys.executable, "-c", writer]})
    return job("flood", {"name": "flood", "call": "tasks:spew", "args": [lines]})


def _until_written(log: Path, timeout: float = 30.0) -> None:
    """Wait until the daemon's log stops growing: the flood's last lines may still be on their way
    to it after the job's end, and the pings go on until then."""
    end = time.monotonic() + timeout
    last, stable = -1, 0
    while stable < 3 and time.monotonic() < end:
        size = log.stat().st_size
        stable = stable + 1 if size == last else 0
        last = size
        time.sleep(0.05)


def flood_once(workers: int, lines: int, kind: str) -> Flood:
    with Daemon(workers) as daemon:
        pings: list[float] = []
        done = threading.Event()
        errors: list[BaseException] = []

        def pinger() -> None:
            try:
                with daemon.client() as client:
                    while not done.is_set():
                        start = time.perf_counter()
                        client.ping()
                        pings.append(time.perf_counter() - start)
                        done.wait(PING_EVERY)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=pinger, name="pinger", daemon=True)
        with daemon.client() as client:
            run_job(client, job("warm", {"name": "warm", "call": "tasks:noop"}))
            thread.start()
            try:
                start = time.perf_counter()
                run_job(client, flood_job(lines, kind))
                seconds = time.perf_counter() - start
                _until_written(daemon.dir / "daemon.log")
            finally:
                done.set()
                thread.join(70)
        if errors:
            raise RuntimeError(f"ping failed during the flood: {errors[0]!r}")
        if not pings:
            raise RuntimeError("no ping completed during the flood")
        return Flood(lines, kind, seconds, pings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--kind", choices=KINDS, action="append", help="default: both")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for kind in args.kind or KINDS:
        runs = [flood_once(args.workers, args.lines, kind) for _ in range(args.repeat)]
        for r in runs:
            print(f"{kind}: {r.lines:,} lines in {r.seconds:.2f} s; {len(r.pings)} pings, "
                  f"p50 {statistics.median(r.pings) * 1e3:.1f} ms, worst {r.worst_ms:.1f} ms")


if __name__ == "__main__":
    main()

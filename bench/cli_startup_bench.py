"""What one ``procctl`` call costs: ``procctl ping`` (and any other command given) against a real
procpoold, wall time and CPU time (user + sys of the procctl process), beside a bare interpreter.

    .venv/bin/python bench/cli_startup_bench.py [--runs 21] [--base SRC] [-- ARGS...]

``--base SRC`` also times the procctl of another source tree (its ``ctl`` folder first on
PYTHONPATH, this interpreter and its packages otherwise), interleaved run by run with this one, so
that a change is compared with its base under the same load. Each command and each tree runs once
per round, in turn; the medians and minima are printed. On a busy machine the wall time follows
the load and the CPU time much less: both are shown.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, Daemon


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one run of ``cmd``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--base", type=Path, help="another source tree to compare with (its ctl/ is used)")
    parser.add_argument("args", nargs="*", default=["ping"], help="procctl's arguments (default: ping)")
    opts = parser.parse_args()
    with Daemon(workers=1) as daemon:
        trees = {"this tree": ROOT / "ctl"}
        if opts.base is not None:
            trees["base"] = opts.base.resolve() / "ctl"
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            ("python -c pass", [sys.executable, "-c", "pass"], dict(os.environ))
        ]
        for label, ctl in trees.items():
            env = {**os.environ, "PYTHONPATH": str(ctl)}
            cmd = [sys.executable, "-m", "procpool.cli", "--socket", str(daemon.socket), *opts.args]
            cases.append((f"procctl {' '.join(opts.args)} ({label})", cmd, env))
        for _, cmd, env in cases:  # warm the page cache and the bytecode caches
            timed(cmd, env)
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in cases}
        for _ in range(opts.runs):
            for label, cmd, env in cases:
                samples[label].append(timed(cmd, env))
    load = os.getloadavg()[0]
    print(f"{opts.runs} interleaved runs each; load average {load:.1f} on {os.cpu_count()} CPUs")
    for label, runs in samples.items():
        wall = [w for w, _ in runs]
        cpu = [c for _, c in runs]
        print(f"  {label:<40} wall median {statistics.median(wall) * 1000:6.1f} ms"
              f" (min {min(wall) * 1000:6.1f})   CPU median {statistics.median(cpu) * 1000:6.1f} ms"
              f" (min {min(cpu) * 1000:6.1f})")


if __name__ == "__main__":
    main()

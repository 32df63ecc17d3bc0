"""The daemon's CPU time (all its threads, ``utime + stime`` of ``/proc/PID/stat``) per W1 task, per
W2 job and per line of a flood: a figure that other work on the machine disturbs far less than
wall-clock rates do.

Run from the repository root: ``python bench/daemon_cpu.py [--tasks 20000] [--jobs 300]
[--lines 200000]``. One fresh procpoold (2 workers, default configuration, stderr log target);
a warm-up job first; then W1 (``--tasks`` no-ops in one job), W2 (``--jobs`` one-task jobs one
after another) and a flood (one command writing ``--lines`` short lines). The clock tick is
10 ms, so a figure is exact to about 10 ms divided by the count.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flood import flood_job
from harness import Daemon, ProcpoolContender, run_job

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--lines", type=int, default=200000)
    args = parser.parse_args()
    with Daemon(2) as daemon:
        contender = ProcpoolContender(daemon)
        try:
            contender.warm()
            before = cpu_seconds(daemon.pid)
            contender.w1(args.tasks)
            w1 = (cpu_seconds(daemon.pid) - before) / args.tasks * 1e6
            before = cpu_seconds(daemon.pid)
            contender.w2(args.jobs)
            w2 = (cpu_seconds(daemon.pid) - before) / args.jobs * 1e6
        finally:
            contender.close()
        with daemon.client() as client:
            before = cpu_seconds(daemon.pid)
            run_job(client, flood_job(args.lines, "cmd"))
            flood = (cpu_seconds(daemon.pid) - before) / args.lines * 1e6
    print(f"daemon CPU: W1 {w1:.1f} us/task, W2 {w2:.0f} us/job, flood {flood:.2f} us/line")


if __name__ == "__main__":
    main()

"""W1 with journald as the log target, in the systemd container the e2e tier boots.

Run from the repository root, as root, with systemd-nspawn and nsenter installed::

    python bench/journald_bench.py [--workers 2] [--tasks 20000] [--repeat 5]

The container is the one of ``tests/e2e/container.py`` (the host's /usr, a volatile root, a real
systemd and journald). The checkout and its venv are bound into it read-only at the same path;
procpoold runs there as a transient service (``Type=notify``, no journald rate limit, as the
shipped unit) with ``--log-target journal``; the W1 job (``--tasks`` no-ops in one concurrent
group) is submitted through :class:`procpool.Client` from inside the container. For each run:

* tasks/s, from submit to the ``wait`` reply;
* journald's own CPU time (utime + stime of systemd-journald, all threads, from /proc) from just
  before the submit until every record of the run is in the journal (the journal's sequence
  number stops moving), divided by the number of records written in that window (the difference
  of the sequence numbers: every record journald wrote, the daemon's and any other);
* the records per task, the share of the records the daemon sent (its ``logging.written``
  counter) that the journal holds, and the daemon's own CPU per task over the same window.

journald's rate limit is turned off in the container (``RateLimitIntervalSec=0``): a unit's
``LogRateLimitIntervalSec=0`` does not do that (systemd applies journald's default then).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH, ROOT, cpu_seconds, noops, run_job, w1_job

UNIT = "procpoold-bench"
#: journald's rate limit off: the shipped unit's LogRateLimitIntervalSec=0 does not turn it off (systemd
#: exports a unit's limit only when it is not 0, and journald then applies its own default: 10,000
#: records per 30 s, scaled with free space; systemd issue 22034), and W1 writes 40,000 records.
JOURNALD_CONF = "[Journal]\nRateLimitIntervalSec=0\n"
SOCKET = f"/run/{UNIT}/control.sock"
STATE = f"/var/lib/{UNIT}"


def problems() -> list[str]:
    """Why the container cannot run here (empty when it can)."""
    found = []
    if os.geteuid() != 0:
        found.append("not root")
    found += [f"no {tool}" for tool in ("systemd-nspawn", "nsenter") if shutil.which(tool) is None]
    if not Path(sys.executable).resolve().is_relative_to("/usr"):
        # The container has the host's /usr and nothing else of it: a venv of another interpreter
        # (pyenv, a build in a home folder) cannot start there.
        found.append(f"{sys.executable} is not a venv of an interpreter under /usr (make venv makes one)")
    if not found:
        sys.path.insert(0, str(ROOT))
        from tests.e2e.container import cgroup_roots

        if not cgroup_roots():
            found.append("no cgroup hierarchy under /sys/fs/cgroup")
    return found


def measure(workers: int, tasks: int, repeat: int) -> dict[str, list[float]]:
    """Boot the container, run W1 ``repeat`` times with journald as the log target, shut it down."""
    sys.path.insert(0, str(ROOT))
    from tests.e2e.container import Bind

    conf = Path(tempfile.mkdtemp(prefix="ppb-journald-"))
    try:
        (conf / "bench.conf").write_text(JOURNALD_CONF)
        binds = [Bind(ROOT, str(ROOT)), Bind(conf, "/etc/systemd/journald.conf.d")]
        if not Path(sys.prefix).is_relative_to(ROOT):
            binds.append(Bind(Path(sys.prefix), sys.prefix))
        return _measure(binds, workers, tasks, repeat)
    finally:
        shutil.rmtree(conf, ignore_errors=True)


def _measure(binds: list[Any], workers: int, tasks: int, repeat: int) -> dict[str, list[float]]:
    from tests.e2e.container import booted

    with booted(binds) as c:
        c.run("systemd-run", f"--unit={UNIT}", "--collect", "-p", "Type=notify", "-p", "NotifyAccess=main",
              "-p", "LogRateLimitIntervalSec=0", "-p", "KillMode=mixed", "-p", "TimeoutStartSec=60",
              "-p", "LimitNOFILE=65536", "--", sys.executable, "-m", "procpoold", "--socket", SOCKET,
              "--state-dir", STATE, "--workers", str(workers), "--log-target", "journal")
        try:
            out = c.run(sys.executable, str(BENCH / "journald_bench.py"), "inside", "--tasks", str(tasks),
                        "--repeat", str(repeat), timeout=120 + 60 * repeat).stdout
        finally:
            c.systemctl("stop", f"{UNIT}.service", check=False)
    result: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    return result


# -- inside the container --------------------------------------------------------------------------

def _show(unit: str, prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", unit], capture_output=True,
                          text=True, check=True).stdout.strip()


def _seqnum() -> int:
    """The sequence number of the journal's newest record (its cursor's ``i=`` field)."""
    out = subprocess.run(["journalctl", "-n", "1", "-o", "export", "--no-pager"], capture_output=True,
                         text=True, check=True).stdout
    cursor = next(line for line in out.splitlines() if line.startswith("__CURSOR="))
    fields = dict(part.split("=", 1) for part in cursor[len("__CURSOR="):].split(";"))
    return int(fields["i"], 16)


def _settled(timeout: float = 60.0) -> int:
    """Wait until the journal's sequence number stops moving (0.3 s twice); returns it."""
    end = time.monotonic() + timeout
    last, stable = _seqnum(), 0
    while stable < 2 and time.monotonic() < end:
        time.sleep(0.3)
        now = _seqnum()
        stable = stable + 1 if now == last else 0
        last = now
    return last


def inside(tasks: int, repeat: int) -> dict[str, list[float]]:
    from procpool import Client

    journald = int(_show("systemd-journald.service", "MainPID"))
    out: dict[str, list[float]] = {"rate": [], "journald_us_per_record": [], "records_per_task": [],
                                   "stored_per_sent": [], "daemon_us_per_task": []}
    with Client(SOCKET, timeout=60) as client:
        daemon = int(client.ping()["pid"])
        run_job(client, {"name": "warm", "python_path": [str(BENCH)], "root": {"concurrent": noops(200)}})
        for _ in range(repeat):
            spec = w1_job(tasks)
            seq0 = _settled()
            sent0 = client.status()["logging"]["written"]
            journald0, daemon0 = cpu_seconds(journald), cpu_seconds(daemon)
            start = time.perf_counter()
            run_job(client, spec)
            elapsed = time.perf_counter() - start
            seq1 = _settled()
            journald_cpu, daemon_cpu = cpu_seconds(journald) - journald0, cpu_seconds(daemon) - daemon0
            records = seq1 - seq0
            sent = client.status()["logging"]["written"] - sent0
            out["rate"].append(tasks / elapsed)
            out["journald_us_per_record"].append(journald_cpu / max(1, records) * 1e6)
            out["records_per_task"].append(records / tasks)
            out["stored_per_sent"].append(records / max(1, sent))
            out["daemon_us_per_task"].append(daemon_cpu / tasks * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", choices=["host", "inside"], default="host",
                        help="inside: the driver run in the container (by the host side)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.role == "inside":
        print(json.dumps(inside(args.tasks, args.repeat)))
        return
    missing = problems()
    if missing:
        raise SystemExit("cannot boot the container here: " + ", ".join(missing))
    r = measure(args.workers, args.tasks, args.repeat)
    print(f"W1 {args.tasks:,} no-ops with journald, {args.workers} workers, medians of {args.repeat}: "
          f"{statistics.median(r['rate']):,.0f} tasks/s; journald "
          f"{statistics.median(r['journald_us_per_record']):.1f} us/record, "
          f"{statistics.median(r['records_per_task']):.2f} records/task, at least "
          f"{min(r['stored_per_sent']):.0%} of those sent stored; daemon "
          f"{statistics.median(r['daemon_us_per_task']):.1f} us/task")
    for key, values in r.items():
        print(f"  {key}: {', '.join(f'{v:,.2f}' for v in values)}")


if __name__ == "__main__":
    main()

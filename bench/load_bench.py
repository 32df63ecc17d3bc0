"""The control plane under load: many submitters, clients that never read, clients that vanish.

Run from the repository root (with the extension built)::

    python bench/load_bench.py [--submitters 50] [--jobs 5000] [--workers 2]

It starts a real ``procpoold`` (temporary socket and state directory) and, at once:

* ``--submitters`` threads, each with its own :class:`procpool.Client`, submit ``--jobs`` one-task
  jobs in all (a no-op call), each with an idempotency key;
* ``--stalled`` clients send ``status`` requests (a list of 1,000 jobs each) and never read a reply;
* ``--vanishing`` clients send a submit and close their socket before the reply, then submit
  the same key again with a fresh client (the daemon must not run it twice);
* one client pings every 10 ms and records the round trip.

Then it waits for every job and prints the ping p50/p99, the daemon's RSS (peak and final), the
replies the daemon dropped, and whether every accepted id was distinct and completed. The
integration test (tests/integration/test_load.py) runs the same driver with assertions;
timings are only reported, never asserted beyond generous sanity bounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from procpool import Client
from procpool.contract.codec import encode_request
from procpool.contract.paths import endpoint

BENCH = str(Path(__file__).resolve().parent)  # tasks.py: noop()


def noop_job(key: str) -> dict[str, Any]:
    return {"name": key, "key": key, "python_path": [BENCH], "root": {"name": "t", "call": "tasks:noop"}}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class LoadResult:
    """What one load run saw."""

    ids: list[str] = field(default_factory=list)
    vanished_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)  # seconds
    rss_peak: int = 0
    rss_end: int = 0
    stray_replies: int = 0
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    def ping_percentile(self, q: float) -> float:
        data = sorted(self.pings)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def run_load(
    socket_path: Path,
    daemon_pid: int,
    submitters: int = 50,
    jobs: int = 5000,
    stalled: int = 5,
    vanishing: int = 5,
    timeout: float = 120.0,
) -> LoadResult:
    """Drive the daemon on ``socket_path`` as the module docstring says; returns what it saw."""
    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()
    ctx = zmq.Context()

    def submitter(n: int) -> None:
        mine = jobs // submitters + (1 if n < jobs % submitters else 0)
        try:
            with Client(socket_path, timeout=60) as client:
                got = [client.submit(noop_job(f"s{n}-{i}"))["id"] for i in range(mine)]
                sock = client._sock  # a reply answered twice would be waiting here
                stray = 0
                while sock is not None and sock.poll(50):
                    sock.recv()
                    stray += 1
            with lock:
                result.ids.extend(got)
                result.stray_replies += stray
        except Exception as exc:
            with lock:
                result.errors.append(f"submitter {n}: {exc!r}")

    def stalled_client(n: int) -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.connect(endpoint(socket_path))
        i = 0
        while not stop.is_set():
            sock.send(encode_request(f"stall-{n}-{i}", "status", {"limit": 1000}))
            i += 1
            stop.wait(0.005)
        sock.close(linger=0)

    def vanishing_client(n: int) -> None:
        try:
            key = f"v{n}"
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)  # the request leaves; the reply finds nobody
            sock.connect(endpoint(socket_path))
            sock.send(encode_request(f"vanish-{n}", "submit", {"job": noop_job(key)}))
            sock.close()
            with Client(socket_path, timeout=60) as client:
                again = client.submit(noop_job(key))
            with lock:
                result.vanished_ids.append(again["id"])
        except Exception as exc:
            with lock:
                result.errors.append(f"vanishing {n}: {exc!r}")

    def pinger() -> None:
        with Client(socket_path, timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                client.ping()
                dt = time.perf_counter() - t0
                with lock:
                    result.pings.append(dt)
                    result.rss_peak = max(result.rss_peak, rss_bytes(daemon_pid))
                stop.wait(0.01)

    background = [threading.Thread(target=stalled_client, args=(n,), daemon=True) for n in range(stalled)]
    background.append(threading.Thread(target=pinger, daemon=True))
    for t in background:
        t.start()
    workers = [threading.Thread(target=submitter, args=(n,)) for n in range(submitters)]
    workers += [threading.Thread(target=vanishing_client, args=(n,)) for n in range(vanishing)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout)
    # Every job finishes: wait for each one (the replies of a finished job come at once).
    try:
        with Client(socket_path, timeout=60) as client:
            end = time.monotonic() + timeout
            for job_id in result.ids + result.vanished_ids:
                left = max(0.1, end - time.monotonic())
                client.wait(job_id, timeout=left)
            result.summary = client.status(limit=1)
    except Exception as exc:
        result.errors.append(f"final wait: {exc!r}")
    result.seconds = time.monotonic() - started
    stop.set()
    for t in background:
        t.join(10)
    ctx.term()
    result.rss_end = rss_bytes(daemon_pid)
    return result


def report(result: LoadResult) -> str:
    p50 = result.ping_percentile(0.50) * 1e3
    p99 = result.ping_percentile(0.99) * 1e3
    return (
        f"{len(result.ids) + len(result.vanished_ids)} jobs accepted in {result.seconds:.1f} s; "
        f"ping p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(result.pings)} pings; "
        f"daemon RSS peak {result.rss_peak / 2**20:.0f} MiB, end {result.rss_end / 2**20:.0f} MiB; "
        f"replies dropped {result.summary.get('requests', {}).get('replies_dropped', '?')}; "
        f"errors {len(result.errors)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--stalled", type=int, default=5)
    parser.add_argument("--vanishing", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.daemon import DaemonProcess

    with DaemonProcess(extra_args=["--workers", str(opts.workers), "--log-level", "warning"]) as daemon:
        result = run_load(daemon.socket, daemon.pid, opts.submitters, opts.jobs, opts.stalled, opts.vanishing)
    print(report(result))
    for error in result.errors[:10]:
        print("error:", error)
    if result.pings:
        mean, top = statistics.fmean(result.pings) * 1e3, max(result.pings) * 1e3
        print(f"ping mean {mean:.2f} ms, max {top:.2f} ms")
    if result.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()

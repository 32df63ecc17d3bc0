"""Memory of a daemon against its history: RSS with N finished jobs in its store.

Run from the repository root (with the extension built)::

    python bench/finished_rss.py [--jobs 50000] [--keep DIR]

Fills a state store with ``--jobs`` finished one-task jobs through the scheduler itself (an
executor that completes every attempt at once: no processes, so 50,000 jobs take seconds, and the
rows are exactly what a daemon writes), then starts a real ``procpoold`` on it and on an empty
store (retention off in both) and reports each one's RSS once it is ready, and the difference.
Prints one line of JSON. ``tests/integration/test_memory.py`` runs it with fewer jobs and asserts
a bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procpoold.engines import AttemptSpec, ExecutorEvents, Outcome, StopReason
from procpoold.engines.registry import Engines
from procpoold.loop import EventLoop
from procpoold.scheduler import Scheduler
from procpoold.store import StateStore


class InstantExecutor:
    """Completes every attempt in the loop iteration after it was submitted."""

    name = "instant"
    kinds = frozenset({"call", "cmd"})
    outlives_daemon = False

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.events: ExecutorEvents | None = None

    def prefork(self) -> None: ...

    def start(self, loop: EventLoop, events: ExecutorEvents) -> None:
        self.events = events

    def free_slots(self) -> int:
        return 1_000

    def submit(self, spec: AttemptSpec) -> None:
        assert self.events is not None
        events = self.events
        self.loop.call_soon(lambda: events.attempt_finished(Outcome(spec.attempt_id, "completed", result=1)))

    def stop_attempt(self, attempt_id: str, reason: StopReason) -> None: ...

    def shutdown(self, grace: float) -> None: ...

    def info(self) -> dict[str, Any]:
        return {}


def fill(state_dir: Path, jobs: int) -> None:
    """``jobs`` finished one-task jobs in ``state_dir``'s store, as a daemon would have written them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(state_dir / "state.db")
    loop = EventLoop()
    executor = InstantExecutor(loop)
    scheduler = Scheduler(loop, Engines([executor]), store=store)
    executor.start(loop, scheduler)
    scheduler.recover()
    for n in range(jobs):
        scheduler.submit({"name": f"job-{n}", "root": {"name": "t", "cmd": ["true", str(n)]}}, uid=0)
        if n % 100 == 99:
            for _ in range(3):
                loop.run_once(0)
    for _ in range(5):
        loop.run_once(0)
    scheduler.flush()
    store.close()
    loop.close()


def rss_of(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def daemon_rss(state_dir: Path, work: Path, timeout: float = 300.0) -> int:
    """Start procpoold on ``state_dir``, wait for READY=1, return its RSS, stop it."""
    cfg = work / "rss.toml"
    cfg.write_text("retention_count = 0\nretention_age = 0\n")
    notify_path = work / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "procpoold", "--socket", str(work / "c.sock"), "--state-dir", str(state_dir),
         "--workers", "1", "--config", str(cfg), "--log-level", "warning"],
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"procpoold exited with {proc.returncode} before it was ready")
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    time.sleep(0.5)  # let start-up garbage go
                    return rss_of(proc.pid)
            except TimeoutError:
                continue
        raise RuntimeError(f"procpoold was not ready within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(30)
        notify.close()


def measure(jobs: int, keep: Path | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pp-rss-", dir="/tmp"))
    try:
        started = time.monotonic()
        fill(work / "full", jobs)
        filled = time.monotonic() - started
        (work / "empty").mkdir()
        empty = daemon_rss(work / "empty", work)
        full = daemon_rss(work / "full", work)
        full_again = daemon_rss(work / "full", work)  # (a store from before is rewritten at the first start)
        if keep is not None:
            shutil.copytree(work / "full", keep, dirs_exist_ok=True)
        return {
            "finished_jobs": jobs,
            "fill_seconds": round(filled, 1),
            "rss_empty_mib": round(empty / 2**20, 1),
            "rss_full_mib": round(full / 2**20, 1),
            "rss_full_restart_mib": round(full_again / 2**20, 1),
            "growth_mib": round((max(full, full_again) - empty) / 2**20, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--keep", type=Path, help="copy the filled state directory here")
    args = parser.parse_args()
    print(json.dumps(measure(args.jobs, args.keep)))


if __name__ == "__main__":
    main()

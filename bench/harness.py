"""A real procpoold for the benchmarks, the job shapes they submit, and procpool as a contender.

Shared by ``bench/run.py`` (the table), ``bench/jobs_bench.py`` (W1 and W2 alone),
``bench/flood.py`` (ping during an output flood) and ``bench/journald_bench.py`` (W1 with journald).
Every process started here belongs to a :class:`Daemon`, stopped by its context manager (also when
the run is interrupted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from procpool import Client

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- process accounting ----------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread (alive or gone) of process ``pid``, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def tree_cpu_seconds(pids: list[int]) -> float:
    """The sum of :func:`cpu_seconds` of ``pids``; a process that has exited counts as 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def percentiles(samples: list[float], drop_warmup: bool = True) -> tuple[float, float]:
    """(p50, p99) in us of ``samples`` in seconds; the first 10 % are dropped as warm-up."""
    if drop_warmup:
        samples = samples[len(samples) // 10:] or samples
    if len(samples) < 2:
        return samples[0] * 1e6, samples[0] * 1e6
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1e6, q[98] * 1e6


# -- procpoold -------------------------------------------------------------------------------------

class Daemon:
    """A procpoold on a temporary socket and state dir; readiness through a fake NOTIFY_SOCKET."""

    def __init__(self, workers: int, config: str | None = None, args: tuple[str, ...] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ppb-"))
        self.socket = self.dir / "run" / "control.sock"
        self.workers = workers
        self.config = config
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        notify_path = self.dir / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        cmd = [sys.executable, "-m", "procpoold", "--socket", str(self.socket),
               "--state-dir", str(self.dir / "state"), "--workers", str(self.workers), *self.args]
        if self.config is not None:
            (self.dir / "procpoold.toml").write_text(self.config)
            cmd += ["--config", str(self.dir / "procpoold.toml")]
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        env.pop("PROCPOOL_SOCKET", None)
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        try:
            notify.settimeout(0.1)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"procpoold exited with {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(TimeoutError):
                    if b"READY=1" in notify.recv(4096).split(b"\n"):
                        return
            raise RuntimeError(f"procpoold sent no READY=1 within 30 s:\n{self.log()}")
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)

    def log(self) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> Client:
        return Client(self.socket, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        if self.proc is not None:
            # Whatever is left of its session (it should be nothing) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- jobs ------------------------------------------------------------------------------------------

def job(name: str, root: dict[str, Any]) -> dict[str, Any]:
    """A job whose calls import ``bench/tasks.py`` as ``tasks``."""
    return {"name": name, "python_path": [str(BENCH)], "root": root}


def noops(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "call": "tasks:noop"} for i in range(n)]


def w1_job(n: int) -> dict[str, Any]:
    return job("w1", {"concurrent": noops(n)})


def w3_job(stages: int, width: int) -> dict[str, Any]:
    return job("w3", {"sequential": [{"concurrent": noops(width, f"s{s}t")} for s in range(stages)]})


def run_job(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit and wait in one round trip (the daemon replies when the job has finished).

    The reply's status is the columnar view (a :class:`procpool.contract.status.JobStatus`):
    every task's state, and every result that is not None, without a map per task; the peers'
    rows likewise end with every result in hand.
    """
    status = client.submit(spec, wait=600, view="columns")
    if not status.get("finished"):
        status = client.wait(status["id"], view="columns")
    if status["state"] != "completed":
        columns = status["status"]
        failed = [columns.task(i) for i in columns.indices("failed", "timeout", "cancelled", "skipped")][:3]
        raise RuntimeError(f"benchmark job {spec['name']} ended {status['state']}: {failed}")
    return status


def procctl_path() -> Path | None:
    """The ``procctl`` entry point installed beside this interpreter (the venv's), if any."""
    path = Path(sys.executable).parent / "procctl"
    return path if os.access(path, os.X_OK) else None


# -- procpool as a contender -----------------------------------------------------------------------

class ProcpoolContender:
    """procpool's side of every workload, through :class:`procpool.Client` on one daemon.

    ``w1`` also records the CPU time the daemon used for it: ``daemon_cpu`` (the procpoold
    process, all its threads) and ``helper_cpu`` (the other processes of its tree that are not
    pool workers, such as the zygote), both in seconds.
    """

    name = "procpool"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.client = daemon.client()
        self.daemon_cpu = 0.0
        self.helper_cpu = 0.0
        #: what the last ``procctl`` run printed, in lines per stream
        self.procctl_output = ""

    def close(self) -> None:
        self.client.close()

    def warm(self) -> None:
        run_job(self.client, job("warm", {"concurrent": noops(200)}))

    def _helpers(self) -> list[int]:
        """Pids of the daemon's other processes that are not pool workers (nor their tasks)."""
        workers = {w["pid"] for w in self.client.pool()["workers"] if w.get("pid")}
        helpers = []
        for proc in psutil.Process(self.daemon.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.pid not in workers and not any(p.pid in workers for p in proc.parents()):
                    helpers.append(proc.pid)
        return helpers

    def w1(self, n: int) -> float:
        spec = w1_job(n)
        helpers = self._helpers()
        cpu0, helper0 = cpu_seconds(self.daemon.pid), tree_cpu_seconds(helpers)
        start = time.perf_counter()
        status = run_job(self.client, spec)
        elapsed = time.perf_counter() - start
        self.daemon_cpu = cpu_seconds(self.daemon.pid) - cpu0
        self.helper_cpu = tree_cpu_seconds(helpers) - helper0
        assert status["status"].total == n and status["status"].counts() == {"completed": n}
        return elapsed

    def w2(self, rounds: int) -> list[float]:
        spec = job("w2", {"name": "t", "call": "tasks:noop"})
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            run_job(self.client, spec)
            samples.append(time.perf_counter() - start)
        return samples

    def w3(self, stages: int, width: int) -> float:
        spec = w3_job(stages, width)
        start = time.perf_counter()
        run_job(self.client, spec)
        return time.perf_counter() - start

    def w4(self, rounds: int, size: int) -> float:
        payload = os.urandom(size)
        spec = job("w4", {"name": "t", "call": "tasks:echo", "args": [payload]})
        start = time.perf_counter()
        for _ in range(rounds):
            status = run_job(self.client, spec)
            assert status["status"].task(0).result == payload
        return time.perf_counter() - start

    def w5(self, n: int, ms: float) -> float:
        spec = job("w5", {"concurrent": [{"name": f"t{i}", "call": "tasks:cpu", "args": [ms]}
                                          for i in range(n)]})
        start = time.perf_counter()
        run_job(self.client, spec)
        return time.perf_counter() - start

    def w6(self, n: int) -> float:
        spec = job("w6", {"concurrent": [{"name": f"t{i}", "cmd": ["true"]} for i in range(n)]})
        start = time.perf_counter()
        run_job(self.client, spec)
        return time.perf_counter() - start

    def procctl(self, spec: dict[str, Any]) -> float:
        """Seconds of ``procctl submit FILE --wait`` as a user runs it: the job in a file, the venv's
        entry point, timed from the process's start to its exit. What it prints (its progress
        on stderr, the job's counts and what failed on stdout) goes to files, not a terminal."""
        exe = procctl_path()
        if exe is None:
            raise RuntimeError(f"no procctl beside {sys.executable}")
        path = self.daemon.dir / f"{spec['name']}.json"
        path.write_text(json.dumps(spec))
        out_path, err_path = self.daemon.dir / "procctl.out", self.daemon.dir / "procctl.err"
        cmd = [str(exe), "--socket", str(self.daemon.socket), "submit", str(path), "--wait"]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            # A blocking wait: Popen.wait(timeout) polls every 50 ms or so, which would round
            # every figure up by up to that; a timer kills a procctl that is stuck instead.
            watchdog = threading.Timer(600, proc.kill)
            watchdog.start()
            try:
                rc = proc.wait()
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            elapsed = time.perf_counter() - start
        if rc != 0:
            raise RuntimeError(f"procctl submit --wait exited with {rc}:\n"
                               f"{err_path.read_text(errors='replace')[-2000:]}")
        lines = [len(path.read_bytes().splitlines()) for path in (out_path, err_path)]
        self.procctl_output = f"{lines[0]:,} lines on stdout, {lines[1]:,} on stderr"
        return elapsed

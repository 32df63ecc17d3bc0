"""``make bench``: procpool end to end against its peers, in one run, on this machine.

Run from the repository root (with the extension built)::

    python bench/run.py [--workers 2] [--quick] [--skip-peers] [--output bench/results.md]

procpool runs as a real ``procpoold`` (temporary socket and state directory, the state store on,
default log level) driven through :class:`procpool.Client`. The peers (multiprocessing.Pool and
ProcessPoolExecutor always; loky and Dask distributed when importable: ``pip install
'procpool[bench]'``) get the same number of workers and run the same functions (``bench/tasks.py``).

Workloads (figures are medians of ``--repeat`` runs where a run is short):

* W1 20,000 no-op tasks in one concurrent group: tasks/s from submit to all results;
* W2 2,000 sequential single-task round trips: p50/p99 us (procpool: ``submit(wait=...)`` of a
  one-task job; peers: ``apply_async(...).get()`` / ``submit(...).result()``);
* W3 50 sequential stages of 40 concurrent no-ops: seconds (procpool: one job, a sequential group
  of 50 concurrent groups);
* W4 a 1 MiB ``bytes`` argument returned, 200 sequential round trips: MB/s (MiB moved one way);
* W5 200 tasks of 5 ms pure-Python CPU: seconds, against the ideal ``200 x 5 ms / workers``;
* W6 500 ``true`` commands, ``workers`` in flight: seconds, against ``xargs -P<workers>``;

plus the pool's own dispatch round trip inside the daemon (``bench/pool_bench.py``), the idle CPU
of a daemon with 4 workers, the unshared memory (USS) of a worker before it runs user code, and
W1 with the state store on and off in fresh daemons taken in turns (the store's cost). Dask is
slow enough that its W1/W2/W4 use a tenth of the tasks (rates and percentiles do not depend on
the count). Every process started here is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)  # the peers' spawned workers

import tasks  # noqa: E402  (bench/tasks.py, after the path is set)
from procpool import Client  # noqa: E402

MiB = 1 << 20


# -- parameters ------------------------------------------------------------------------------------

@dataclass
class Params:
    workers: int = 2
    w1_tasks: int = 20_000
    w2_rounds: int = 2_000
    w3_stages: int = 50
    w3_width: int = 40
    w4_rounds: int = 200
    w4_size: int = MiB
    w5_tasks: int = 200
    w5_ms: float = 5.0
    w6_cmds: int = 500
    repeat: int = 3
    idle_seconds: float = 10.0
    idle_workers: int = 4
    rt_rounds: int = 20_000
    chain_tasks: int = 2_000
    store_pairs: int = 3

    @classmethod
    def quick(cls, workers: int) -> Params:
        return cls(workers=workers, w1_tasks=2_000, w2_rounds=300, w3_stages=10, w4_rounds=30, w5_tasks=40,
                   w6_cmds=100, repeat=1, idle_seconds=2.0, rt_rounds=3_000, store_pairs=1,
                   chain_tasks=500)


# -- process hygiene -------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGTERM while benchmarking: unwind through every cleanup."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, _frame: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a forked peer worker (Pool.terminate): die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Interrupted()


# -- procpoold -------------------------------------------------------------------------------------

class Daemon:
    """A procpoold on a temporary socket and state dir; readiness through a fake NOTIFY_SOCKET."""

    def __init__(self, workers: int, config: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ppb-", dir="/tmp"))
        self.socket = self.dir / "run" / "control.sock"
        self.workers = workers
        self.config = config
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
        cmd = [*self.launcher(), "--socket", str(self.socket),
               "--state-dir", str(self.dir / "state"), "--workers", str(self.workers)]
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

    def launcher(self) -> list[str]:
        """The command that runs procpoold (options follow)."""
        return [sys.executable, "-m", "procpoold"]

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
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            # Whatever is left of its session (it should be nothing) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _job(name: str, root: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "python_path": [str(BENCH)], "root": root}


def _run(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    # Submit and wait in one round trip (the daemon replies when the job has finished).
    status = client.submit(job, wait=600)
    if not status.get("finished"):
        status = client.wait(status["id"])
    if status["state"] != "completed":
        failed = [t for t in status["status"]["tasks"] if t["state"] != "completed"][:3]
        raise RuntimeError(f"benchmark job {job['name']} ended {status['state']}: {failed}")
    return status


def _noops(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "call": "tasks:noop"} for i in range(n)]


class ProcpoolContender:
    name = "procpool"

    def __init__(self, daemon: Daemon) -> None:
        self.client = daemon.client()

    def close(self) -> None:
        self.client.close()

    def warm(self) -> None:
        _run(self.client, _job("warm", {"concurrent": _noops(200)}))

    def w1(self, n: int) -> float:
        job = _job("w1", {"concurrent": _noops(n)})
        start = time.perf_counter()
        status = _run(self.client, job)
        elapsed = time.perf_counter() - start
        assert len(status["status"]["tasks"]) == n
        return elapsed

    def w2(self, rounds: int) -> list[float]:
        job = _job("w2", {"name": "t", "call": "tasks:noop"})
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            _run(self.client, job)
            samples.append(time.perf_counter() - start)
        return samples

    def w3(self, stages: int, width: int) -> float:
        root = {"sequential": [{"concurrent": _noops(width, f"s{s}t")} for s in range(stages)]}
        start = time.perf_counter()
        _run(self.client, _job("w3", root))
        return time.perf_counter() - start

    def w4(self, rounds: int, size: int) -> float:
        payload = os.urandom(size)
        job = _job("w4", {"name": "t", "call": "tasks:echo", "args": [payload]})
        start = time.perf_counter()
        for _ in range(rounds):
            status = _run(self.client, job)
            assert status["status"]["tasks"][0]["result"] == payload
        return time.perf_counter() - start

    def w5(self, n: int, ms: float) -> float:
        job = _job("w5", {"concurrent": [{"name": f"t{i}", "call": "tasks:cpu", "args": [ms]}
                                          for i in range(n)]})
        start = time.perf_counter()
        _run(self.client, job)
        return time.perf_counter() - start

    def w6(self, n: int) -> float:
        job = _job("w6", {"concurrent": [{"name": f"t{i}", "cmd": ["true"]} for i in range(n)]})
        start = time.perf_counter()
        _run(self.client, job)
        return time.perf_counter() - start


# -- peers -----------------------------------------------------------------------------------------

class Peer:
    """A pool with ``submit(fn, *args) -> handle`` and ``result(handle)``."""

    name = "peer"
    scale = 1  # divide W1/W2/W4 counts by this (slow peers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def result(self, handle: Any) -> Any:
        raise NotImplementedError

    def gather(self, handles: list[Any]) -> list[Any]:
        return [self.result(h) for h in handles]

    def close(self) -> None:
        raise NotImplementedError

    def warm(self) -> None:
        self.gather([self.submit(tasks.noop) for _ in range(200)])

    def w1(self, n: int) -> float:
        start = time.perf_counter()
        self.gather([self.submit(tasks.noop) for _ in range(n)])
        return time.perf_counter() - start

    def w2(self, rounds: int) -> list[float]:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            self.result(self.submit(tasks.noop))
            samples.append(time.perf_counter() - start)
        return samples

    def w3(self, stages: int, width: int) -> float:
        start = time.perf_counter()
        for _ in range(stages):
            self.gather([self.submit(tasks.noop) for _ in range(width)])
        return time.perf_counter() - start

    def w4(self, rounds: int, size: int) -> float:
        payload = os.urandom(size)
        start = time.perf_counter()
        for _ in range(rounds):
            assert self.result(self.submit(tasks.echo, payload)) == payload
        return time.perf_counter() - start

    def w5(self, n: int, ms: float) -> float:
        start = time.perf_counter()
        self.gather([self.submit(tasks.cpu, ms) for _ in range(n)])
        return time.perf_counter() - start


class MpPool(Peer):
    name = "mp.Pool"

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def result(self, handle: Any) -> Any:
        return handle.get()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class FuturesPeer(Peer):
    executor: Any

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args)

    def result(self, handle: Any) -> Any:
        return handle.result()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class PPE(FuturesPeer):
    name = "ProcessPool"

    def __init__(self, workers: int) -> None:
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


class Loky(FuturesPeer):
    name = "loky"

    def __init__(self, workers: int) -> None:
        from loky import get_reusable_executor

        self.executor = get_reusable_executor(max_workers=workers, timeout=600)

    def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)


class Dask(Peer):
    name = "dask"
    scale = 10

    def __init__(self, workers: int) -> None:
        from distributed import Client as DaskClient
        from distributed import LocalCluster

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = DaskClient(self.cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def result(self, handle: Any) -> Any:
        return handle.result()

    def gather(self, handles: list[Any]) -> list[Any]:
        return list(self.client.gather(handles))

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def available_peers(missing: list[str] | None = None) -> list[type[Peer]]:
    """The peers that can run here; the names of those that cannot go to ``missing``."""
    found: list[type[Peer]] = [MpPool, PPE]
    for module, peer in (("loky", Loky), ("distributed", Dask)):
        try:
            __import__(module)
        except ImportError:
            if missing is not None:
                missing.append(peer.name)
            continue
        found.append(peer)
    return found


# -- measurements ----------------------------------------------------------------------------------

@dataclass
class Figures:
    """One contender's results: key -> value (tasks/s, seconds, us, MB/s)."""

    name: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def _pcts(samples: list[float]) -> tuple[float, float]:
    samples = samples[len(samples) // 10:] or samples  # warm-up dropped
    if len(samples) < 2:
        return samples[0] * 1e6, samples[0] * 1e6
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1e6, q[98] * 1e6


def measure(c: Any, p: Params, scale: int = 1) -> dict[str, float]:
    out: dict[str, float] = {}
    c.warm()
    n1 = max(100, p.w1_tasks // scale)
    out["w1"] = n1 / _median(lambda: c.w1(n1), p.repeat)
    out["w2_p50"], out["w2_p99"] = _pcts(c.w2(max(50, p.w2_rounds // scale)))
    out["w3"] = _median(lambda: c.w3(p.w3_stages, p.w3_width), p.repeat)
    n4 = max(10, p.w4_rounds // scale)
    out["w4"] = n4 * p.w4_size / 1e6 / c.w4(n4, p.w4_size)
    out["w5"] = _median(lambda: c.w5(p.w5_tasks, p.w5_ms), p.repeat)
    if hasattr(c, "w6"):
        out["w6"] = _median(lambda: c.w6(p.w6_cmds), p.repeat)
    return out


def xargs_seconds(n: int, workers: int) -> float:
    data = b"x\n" * n
    start = time.perf_counter()
    subprocess.run(["xargs", f"-P{workers}", "-n1", "true"], input=data, check=True)
    return time.perf_counter() - start


def daemon_roundtrip(p: Params) -> dict[str, dict[str, Any]]:
    """The pool's round trip as procpoold itself measures it (``procctl pool``), over a chain of
    no-ops in a fresh daemon: each attempt is pushed alone to a worker that is either still
    spinning after the previous one (awake) or asleep (the push wakes it)."""
    with Daemon(p.workers) as daemon:
        c = ProcpoolContender(daemon)
        try:
            c.warm()
            _run(c.client, _job("chain", {"sequential": _noops(p.chain_tasks, "c")}))
            info = c.client.pool()["info"]
        finally:
            c.close()
    return {"awake": info["round_trip"], "woken": info["round_trip_woken"]}


def dispatch_roundtrip(rounds: int) -> tuple[float, float]:
    """The pool alone, in a fresh process driven by a stand-in scheduler (the pool must fork
    before any thread): one no-op at a time, each submitted when the previous one is reported."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); import pool_bench; "
            f"print(json.dumps(pool_bench.roundtrip({rounds}, pool_bench.PoolSettings.spin_us)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    p50, p99 = json.loads(out.stdout.strip().splitlines()[-1])
    return float(p50), float(p99)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _workers(daemon: Daemon) -> list[psutil.Process]:
    """The pool's workers: the zygote's children (the daemon's grandchildren)."""
    return [p for child in psutil.Process(daemon.pid).children()
            for p in child.children()]


def idle_and_uss(p: Params) -> tuple[float, list[float], list[float]]:
    """(idle CPU % of one core, USS MiB of fresh workers, USS MiB after some attempts)."""
    with Daemon(p.idle_workers) as daemon:
        fresh = [w.memory_full_info().uss / MiB for w in _workers(daemon)]
        with daemon.client() as client:
            _run(client, _job("warm", {"concurrent": _noops(400)}))
        time.sleep(0.5)
        procs = _tree(daemon.pid)
        before = [sum(proc.cpu_times()[:2]) for proc in procs]
        time.sleep(p.idle_seconds)
        used = sum(sum(proc.cpu_times()[:2]) - b for proc, b in zip(procs, before, strict=True))
        warm = [w.memory_full_info().uss / MiB for w in _workers(daemon)]
        return 100 * used / p.idle_seconds, fresh, warm


def _w1_daemon(p: Params, config: str | None) -> float:
    with Daemon(p.workers, config=config) as daemon:
        c = ProcpoolContender(daemon)
        try:
            c.warm()
            return p.w1_tasks / _median(lambda: c.w1(p.w1_tasks), p.repeat)
        finally:
            c.close()


def store_cost(p: Params) -> tuple[float, float] | None:
    """W1 with the state store on and off, in fresh daemons taken in turns (this machine's speed
    drifts by tens of percent within minutes, so only pairs run side by side compare): the median
    W1 with the store off, and the median ratio on/off of the pairs. None if this procpoold has
    no ``store = false`` setting."""
    off_rates: list[float] = []
    ratios: list[float] = []
    for _ in range(p.store_pairs):
        on = _w1_daemon(p, None)
        try:
            off = _w1_daemon(p, "[procpoold]\nstore = false\n")
        except RuntimeError as exc:
            if "unknown setting" in str(exc):
                return None
            raise
        off_rates.append(off)
        ratios.append(on / off)
    return statistics.median(off_rates), statistics.median(ratios)


# -- the table -------------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    key: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


ROWS = [
    Row("W1 no-ops in one group", "w1", "tasks/s", True),
    Row("W2 round trip p50", "w2_p50", "us", False),
    Row("W2 round trip p99", "w2_p99", "us", False),
    Row("W3 50 stages x 40", "w3", "s", False, "{:.3f}"),
    Row("W4 1 MiB echo", "w4", "MB/s", True),
    Row("W5 200 x 5 ms CPU", "w5", "s", False, "{:.3f}"),
    Row("W6 500 `true`", "w6", "s", False, "{:.3f}"),
]


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return {"cpu": model, "cores": str(os.cpu_count()), "memory": f"{mem:.1f} GiB",
            "kernel": platform.release(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _targets(p: Params, mine: dict[str, float], mp: dict[str, float], xargs: float | None,
             extra: dict[str, Any]) -> dict[str, tuple[str, bool | None]]:
    ideal = p.w5_tasks * p.w5_ms / 1000 / p.workers
    t: dict[str, tuple[str, bool | None]] = {}

    def check(key: str, text: str, ok: Callable[[float, float], bool], ref: dict[str, float]) -> None:
        if key in mine and key in ref:
            t[key] = (text, ok(mine[key], ref[key]))
        else:
            t[key] = (text, None)

    check("w1", ">= 2x mp.Pool", lambda a, b: a >= 2 * b, mp)
    check("w2_p50", "<= mp.Pool", lambda a, b: a <= b, mp)
    check("w3", "<= 0.5x mp.Pool", lambda a, b: a <= 0.5 * b, mp)
    check("w4", ">= 1.5x mp.Pool", lambda a, b: a >= 1.5 * b, mp)
    t["w5"] = (f"<= 1.05x ideal ({ideal:.3f} s)", mine["w5"] <= 1.05 * ideal if "w5" in mine else None)
    t["w6"] = ("<= xargs", mine["w6"] <= xargs if xargs is not None and "w6" in mine else None)
    awake = extra["rt_daemon"]["awake"]
    t["rt"] = ("<= 10 us p50", awake["p50_us"] <= 10 if awake["samples"] else None)
    t["idle"] = ("< 1 %", extra["idle"] < 1)
    t["uss"] = ("<= 5 MiB", max(extra["uss_fresh"]) <= 5)
    if extra.get("w1_off") is not None:
        t["w1_off"] = ("store on >= 0.85x off", extra["w1_off"][1] >= 0.85)
    return t


def _speedup(row: Row, mine: float, peers: list[float]) -> str:
    if not peers:
        return ""
    best = max(peers) if row.higher_is_better else min(peers)
    ratio = mine / best if row.higher_is_better else best / mine
    return f"{ratio:.2f}x"


def render(p: Params, results: list[Figures], xargs: float | None, extra: dict[str, Any],
           info: dict[str, str]) -> tuple[str, str]:
    mine = results[0].values
    peers = results[1:]
    mp = next((r.values for r in peers if r.name == "mp.Pool"), {})
    targets = _targets(p, mine, mp, xargs, extra)
    head = ["workload", "unit", "procpool", *[r.name for r in peers], "xargs", "vs fastest peer", "target",
            "met"]
    lines: list[list[str]] = []
    for row in ROWS:
        if row.key not in mine:
            continue
        cells = [row.label, row.unit, row.fmt.format(mine[row.key])]
        values = []
        for r in peers:
            v = r.values.get(row.key)
            cells.append("" if v is None else row.fmt.format(v))
            if v is not None:
                values.append(v)
        xv = xargs if row.key == "w6" else None
        cells.append("" if xv is None else row.fmt.format(xv))
        if xv is not None:
            values.append(xv)
        cells.append(_speedup(row, mine[row.key], values))
        text, ok = targets.get(row.key, ("", None))
        cells += [text, "" if ok is None else ("met" if ok else "MISSED")]
        lines.append(cells)
    blank = [""] * len(peers)
    t = targets

    def trip(rt: dict[str, Any]) -> str:
        if not rt["samples"]:
            return "no samples"
        return f"p50 {rt['p50_us']:.1f} / p99 {rt['p99_us']:.1f} ({rt['samples']:,})"

    met = {True: "met", False: "MISSED", None: ""}
    lines.append(["pool round trip in the daemon, worker awake", "us", trip(extra["rt_daemon"]["awake"]),
                  *blank, "", "", t["rt"][0], met[t["rt"][1]]])
    lines.append(["pool round trip in the daemon, worker woken", "us", trip(extra["rt_daemon"]["woken"]),
                  *blank, "", "", "", ""])
    rt50, rt99 = extra["rt"]
    lines.append(["pool round trip, pool alone (stand-in scheduler)", "us",
                  f"p50 {rt50:.1f} / p99 {rt99:.1f}", *blank, "", "", "", ""])
    lines.append([f"idle CPU, {p.idle_workers} workers, {p.idle_seconds:g} s", "% core",
                  f"{extra['idle']:.2f}", *blank, "", "", t["idle"][0], "met" if t["idle"][1] else "MISSED"])
    lines.append(["USS per worker, before user code", "MiB",
                  "/".join(f"{u:.1f}" for u in extra["uss_fresh"]), *blank, "", "", t["uss"][0],
                  "met" if t["uss"][1] else "MISSED"])
    lines.append(["USS per worker, after 100 no-ops each", "MiB",
                  "/".join(f"{u:.1f}" for u in extra["uss_warm"]), *blank, "", "", "", ""])
    if extra.get("w1_off") is not None:
        off, ratio = extra["w1_off"]
        lines.append(["W1 with the store off (on/off in pairs)", "tasks/s",
                      f"{off:,.0f} (on/off {ratio:.2f})", *blank, "", "", t["w1_off"][0],
                      "met" if t["w1_off"][1] else "MISSED"])
    else:
        lines.append(["W1 with the store off", "tasks/s", "n/a (no store = false setting)", *blank, "", "",
                      "", ""])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    text_lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in [head, *lines]]
    cmd = "python bench/run.py" + (f" --workers {p.workers}" if p.workers != 2 else "") + \
        (" --quick" if p.repeat == 1 and p.w1_tasks < 20_000 else "")
    notes = [f"{r.name}: {n}" for r in results for n in r.notes]
    footer = [
        f"Command: `{cmd}` ({p.workers} workers for every contender; medians of {p.repeat} runs for "
        "W1, W3, W5, W6).",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['date']}.",
        "'vs fastest peer': procpool's speed relative to the fastest peer in that row (above 1: faster).",
        "W6 runs commands: the Python pools have no such workload, xargs -P is the reference.",
        f"Pool round trips: a chain of {p.chain_tasks:,} no-ops in a fresh procpoold, each attempt "
        "pushed alone to a worker, timed from push to result by the daemon itself (`procctl pool`); "
        "awake: the worker still spun after the previous attempt; woken: the push had to wake it. "
        f"Pool alone: `bench/pool_bench.py`'s round trip, {p.rt_rounds:,} attempts.",
        *notes,
    ]
    plain = "\n".join([*text_lines, "", *footer])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in lines]
    markdown = "\n".join(["# Benchmark results", "", *md, "", *[f"* {x}" for x in footer], ""])
    return plain, markdown


# -- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tasks, one repetition")
    parser.add_argument("--skip-peers", action="store_true", help="procpool only")
    parser.add_argument("--output", type=Path, default=BENCH / "results.md",
                        help="Markdown table (default bench/results.md; '-' for none)")
    args = parser.parse_args()
    p = Params.quick(args.workers) if args.quick else Params(workers=args.workers)
    signal.signal(signal.SIGTERM, _on_sigterm)
    results: list[Figures] = []
    extra: dict[str, Any] = {}

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"procpool: procpoold with {p.workers} workers, state store on")
    with Daemon(p.workers) as daemon:
        c = ProcpoolContender(daemon)
        try:
            results.append(Figures("procpool", measure(c, p)))
        finally:
            c.close()
    say(f"procpool: W1 with the store on and off, {p.store_pairs} pair(s) of daemons")
    extra["w1_off"] = store_cost(p)
    say("procpool: the pool's round trip in a daemon, and alone")
    extra["rt_daemon"] = daemon_roundtrip(p)
    extra["rt"] = dispatch_roundtrip(p.rt_rounds)
    say(f"procpool: idle CPU and USS, {p.idle_workers} workers")
    extra["idle"], extra["uss_fresh"], extra["uss_warm"] = idle_and_uss(p)
    xargs: float | None = None
    if not args.skip_peers:
        missing: list[str] = []
        for peer_cls in available_peers(missing):
            say(f"{peer_cls.name}: {p.workers} workers")
            peer = peer_cls(p.workers)
            try:
                figures = Figures(peer.name, measure(peer, p, peer.scale))
            finally:
                peer.close()
            if peer.scale != 1:
                figures.notes.append(f"runs 1/{peer.scale} of the W1, W2 and W4 tasks (it is slow enough "
                                     "to dominate the run otherwise)")
            results.append(figures)
        if missing:
            results[0].notes.append(f"peers not installed, left out: {', '.join(missing)} "
                                    "(`pip install '.[bench]'`; `make bench` installs them)")
        if shutil.which("xargs"):
            xargs = _median(lambda: xargs_seconds(p.w6_cmds, p.workers), p.repeat)
    plain, markdown = render(p, results, xargs, extra, machine())
    print(plain)
    if str(args.output) != "-":
        args.output.write_text(markdown)
        say(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)

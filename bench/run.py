"""``make bench``: procpool end to end against its peers, in one run, on this machine.

Run from the repository root (with the extension built)::

    python bench/run.py [--workers 2] [--quick] [--skip-peers] [--journald] [--output bench/results.md]

procpool runs as a real ``procpoold`` (temporary socket and state directory, the state store on,
default configuration) driven through :class:`procpool.Client`. The peers (multiprocessing.Pool and
ProcessPoolExecutor always; loky and Dask distributed when importable: ``pip install
'procpool[bench]'``) get the same number of workers and run the same functions (``bench/tasks.py``).

The contenders take turns: a *run* starts one contender (a fresh daemon, a fresh pool), warms it
up, runs every workload once and stops it; procpool, mp.Pool, ProcessPool, loky, Dask, the bare
ZeroMQ echo and xargs each do one run, and that round is repeated ``--repeat`` times (5). Every
figure is the median of its runs, so procpool and each peer are measured minutes apart at most,
on a machine whose speed drifts by tens of percent within minutes. Workloads:

* W1 20,000 no-op tasks in one concurrent group: tasks/s from submit to all results; with it, the
  CPU time of the procpoold process (all threads, /proc/PID/stat) per task; and the same job
  through ``procctl submit FILE --wait`` as a user runs it (a job file, the venv's entry point,
  process start to exit);
* W2 1,000 sequential single-task round trips per run: p50/p99 us (procpool: ``submit(wait=...)`` of a
  one-task job; peers: ``apply_async(...).get()`` / ``submit(...).result()``); its floor, a bare
  ZeroMQ DEALER->ROUTER echo over ipc:// between two Python processes (``bench/zmq_echo.py``);
* W3 50 sequential stages of 40 concurrent no-ops: seconds (procpool: one job, a sequential group
  of 50 concurrent groups; also through ``procctl submit --wait``);
* W4 a 1 MiB ``bytes`` argument returned, 100 sequential round trips per run: MB/s (MiB moved one way);
* W5 200 tasks of 5 ms pure-Python CPU: seconds, against the ideal ``200 x 5 ms / workers``;
* W6 500 ``true`` commands, ``workers`` in flight: seconds, against ``xargs -P<workers>``;

then, each in fresh daemons: the worst ``ping`` during a 200,000-line output flood from one task
(``bench/flood.py``, a command and a call), W1 with the state store on and off taken in turns, the
pool's own dispatch round trip (``bench/pool_bench.py``), the idle CPU of a daemon with 4 workers
and the unshared memory (USS) of its workers; and with ``--journald`` (as root, with
systemd-nspawn) W1 with journald as the log target in the e2e tier's systemd container, with
journald's own CPU per record (``bench/journald_bench.py``); with Dask installed, procpool's Dask
engine against plain Dask on one LocalCluster (``bench/dask_bench.py``). Dask is slow enough that its
W1/W2/W4 use a tenth of the tasks (rates and percentiles do not depend on the count). Every
process started here is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
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

import dask_bench  # noqa: E402  (bench/*.py, after the path is set)
import flood  # noqa: E402
import journald_bench  # noqa: E402
import tasks  # noqa: E402
import zmq_echo  # noqa: E402
from harness import (  # noqa: E402
    Daemon,
    ProcpoolContender,
    job,
    noops,
    percentiles,
    procctl_path,
    run_job,
    w1_job,
    w3_job,
)

MiB = 1 << 20


# -- parameters ------------------------------------------------------------------------------------

@dataclass
class Params:
    workers: int = 2
    w1_tasks: int = 20_000
    w2_rounds: int = 1_000
    w3_stages: int = 50
    w3_width: int = 40
    w4_rounds: int = 100
    w4_size: int = MiB
    w5_tasks: int = 200
    w5_ms: float = 5.0
    w6_cmds: int = 500
    repeat: int = 5
    flood_lines: int = 200_000
    flood_repeat: int = 3
    idle_seconds: float = 10.0
    idle_workers: int = 4
    rt_rounds: int = 20_000
    chain_tasks: int = 2_000
    store_pairs: int = 5
    journald_tasks: int = 20_000

    @classmethod
    def quick(cls, workers: int) -> Params:
        return cls(workers=workers, w1_tasks=2_000, w2_rounds=300, w3_stages=10, w4_rounds=30, w5_tasks=40,
                   w6_cmds=100, repeat=1, flood_lines=50_000, flood_repeat=1, idle_seconds=2.0,
                   rt_rounds=3_000, store_pairs=1, chain_tasks=500, journald_tasks=2_000)


# -- process hygiene -------------------------------------------------------------------------------

class Interrupted(Exception):
    """SIGTERM while benchmarking: unwind through every cleanup."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, _frame: Any) -> None:
    if os.getpid() != _MAIN_PID:  # a forked peer worker that kept this handler: die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Interrupted()


def _default_sigterm_in_child() -> None:
    """A forked peer worker dies of SIGTERM (``Pool.terminate``) as by default. With the handler
    above inherited, one mp.Pool worker in a full run once lived on after ``terminate`` (its SIGTERM
    never reached Python's handler) and ``Pool.join`` waited for it for 6 minutes."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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

    def run_pass(self, p: Params) -> dict[str, float]:
        """One run of every workload (W6 is for commands: xargs is its reference)."""
        out: dict[str, float] = {}
        n1 = max(100, p.w1_tasks // self.scale)
        out["w1"] = n1 / self.w1(n1)
        out["w2_p50"], out["w2_p99"] = percentiles(self.w2(max(50, p.w2_rounds // self.scale)))
        out["w3"] = self.w3(p.w3_stages, p.w3_width)
        n4 = max(10, p.w4_rounds // self.scale)
        out["w4"] = n4 * p.w4_size / 1e6 / self.w4(n4, p.w4_size)
        out["w5"] = self.w5(p.w5_tasks, p.w5_ms)
        return out


class MpPool(Peer):
    name = "mp.Pool"

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def result(self, handle: Any) -> Any:
        return handle.get()

    def close(self) -> None:
        # Should a worker still outlive terminate(), it is killed after 10 s rather than waited for.
        pids = [p.pid for p in getattr(self.pool, "_pool", []) if p.pid is not None]
        guard = threading.Timer(10.0, _kill, (pids,))
        guard.daemon = True
        guard.start()
        try:
            self.pool.terminate()
            self.pool.join()
        finally:
            guard.cancel()


def _kill(pids: list[int]) -> None:
    """SIGKILL those of ``pids`` that are still this process's children (not reaped, not reused)."""
    for pid in pids:
        with contextlib.suppress(OSError, psutil.Error):
            if psutil.Process(pid).ppid() == os.getpid():
                os.kill(pid, signal.SIGKILL)


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


# -- the interleaved runs --------------------------------------------------------------------------

@dataclass
class Notes:
    """What the passes saw besides figures (shown under the table)."""

    procctl_output: str = ""


def procpool_pass(p: Params, notes: Notes) -> dict[str, float]:
    """One run of every workload on a fresh procpoold, W1 and W3 also through ``procctl``."""
    out: dict[str, float] = {}
    with Daemon(p.workers) as daemon:
        c = ProcpoolContender(daemon)
        try:
            c.warm()
            out["w1"] = p.w1_tasks / c.w1(p.w1_tasks)
            out["cpu"] = c.daemon_cpu / p.w1_tasks * 1e6
            out["cpu_helpers"] = c.helper_cpu / p.w1_tasks * 1e6
            if procctl_path() is not None:
                out["w1_procctl"] = p.w1_tasks / c.procctl(w1_job(p.w1_tasks))
                notes.procctl_output = c.procctl_output
            out["w2_p50"], out["w2_p99"] = percentiles(c.w2(p.w2_rounds))
            out["w3"] = c.w3(p.w3_stages, p.w3_width)
            if procctl_path() is not None:
                out["w3_procctl"] = c.procctl(w3_job(p.w3_stages, p.w3_width))
            out["w4"] = p.w4_rounds * p.w4_size / 1e6 / c.w4(p.w4_rounds, p.w4_size)
            out["w5"] = c.w5(p.w5_tasks, p.w5_ms)
            out["w6"] = c.w6(p.w6_cmds)
        finally:
            c.close()
    return out


def peer_pass(make: Callable[[int], Peer], p: Params) -> dict[str, float]:
    peer = make(p.workers)
    try:
        peer.warm()
        return peer.run_pass(p)
    finally:
        peer.close()


def zmq_pass(p: Params) -> dict[str, float]:
    p50, p99 = percentiles(zmq_echo.roundtrips(p.w2_rounds))
    return {"w2_p50": p50, "w2_p99": p99}


def xargs_seconds(n: int, workers: int) -> float:
    data = b"x\n" * n
    start = time.perf_counter()
    subprocess.run(["xargs", f"-P{workers}", "-n1", "true"], input=data, check=True)
    return time.perf_counter() - start


@dataclass
class Contender:
    name: str
    run: Callable[[Params], dict[str, float]]
    notes: list[str] = field(default_factory=list)
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if key in r]
        return statistics.median(values) if values else None


def interleaved(p: Params, contenders: list[Contender], say: Callable[[str], None]) -> None:
    """``p.repeat`` rounds; in each, every contender does one run of every workload in turn."""
    for round_ in range(p.repeat):
        for c in contenders:
            start = time.monotonic()
            c.runs.append(c.run(p))
            say(f"round {round_ + 1}/{p.repeat}: {c.name} ran in {time.monotonic() - start:.1f} s")


def flood_runs(p: Params, say: Callable[[str], None]) -> dict[str, list[flood.Flood]]:
    """The worst ping during a flood, in fresh daemons, the two kinds of task in turns."""
    found: dict[str, list[flood.Flood]] = {kind: [] for kind in flood.KINDS}
    for round_ in range(p.flood_repeat):
        for kind in flood.KINDS:
            say(f"flood {round_ + 1}/{p.flood_repeat}: {p.flood_lines:,} lines from a {kind} task")
            found[kind].append(flood.flood_once(p.workers, p.flood_lines, kind))
    return found


# -- the daemon's other figures --------------------------------------------------------------------

def daemon_roundtrip(p: Params) -> dict[str, dict[str, Any]]:
    """The pool's round trip as procpoold itself measures it (``procctl pool``), over a chain of
    no-ops in a fresh daemon: each attempt is pushed alone to a worker that is either still
    spinning after the previous one (awake) or asleep (the push wakes it)."""
    with Daemon(p.workers) as daemon:
        c = ProcpoolContender(daemon)
        try:
            c.warm()
            run_job(c.client, job("chain", {"sequential": noops(p.chain_tasks, "c")}))
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
            run_job(client, job("warm", {"concurrent": noops(400)}))
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
            return p.w1_tasks / statistics.median(c.w1(p.w1_tasks) for _ in range(min(3, p.repeat)))
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


def journald_w1(p: Params, wanted: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """W1 with journald in the e2e tier's container, or why it did not run."""
    if not wanted:
        return {"skipped": "not run (--journald not given; it needs root and systemd-nspawn)"}
    missing = journald_bench.problems()
    if missing:
        return {"skipped": "skipped: " + ", ".join(missing)}
    say(f"procpool: W1 with journald, in a systemd container, {p.repeat} run(s)")
    return {"runs": journald_bench.measure(p.workers, p.journald_tasks, p.repeat)}


# -- the table -------------------------------------------------------------------------------------

MET = {True: "met", False: "MISSED", None: ""}


def _fmt(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _ratio(mine: float | None, best: float | None, higher_is_better: bool) -> str:
    """procpool's speed relative to ``best`` (above 1: procpool is faster)."""
    if mine is None or best is None or mine == 0:
        return ""
    return f"{(mine / best if higher_is_better else best / mine):.2f}x"


def _best(peers: list[Contender], key: str, higher_is_better: bool) -> float | None:
    values = [v for c in peers if (v := c.median(key)) is not None]
    if not values:
        return None
    return max(values) if higher_is_better else min(values)


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}" if len(values) > 1 else ""


def render(p: Params, procpool: Contender, peers: list[Contender], zmq: Contender, xargs: Contender | None,
           floods: dict[str, list[flood.Flood]], extra: dict[str, Any], info: dict[str, str],
           notes: Notes) -> tuple[str, str]:
    me = procpool.median
    mp = next((c for c in peers if c.name == "mp.Pool"), None)
    mp_ = mp.median if mp is not None else (lambda key: None)
    ideal = p.w5_tasks * p.w5_ms / 1000 / p.workers
    refs = [*peers, *([xargs] if xargs is not None else [])]
    head = ["workload", "unit", "procpool", *[c.name for c in peers], "xargs", "vs fastest peer", "target",
            "met"]
    blank = [""] * (len(peers) + 1)
    lines: list[list[str]] = []

    def compared(label: str, key: str, unit: str, fmt: str, higher: bool, target: str,
                 ok: Callable[[float], bool | None] | None = None, ref_key: str | None = None,
                 show_peers: bool = True) -> None:
        """A row with procpool's median, the peers' (of ``ref_key``), and the ratio to the best."""
        ref_key = ref_key or key
        mine = me(key)
        cells = [label, unit, _fmt(mine, fmt)]
        cells += [_fmt(c.median(ref_key), fmt) if show_peers else "" for c in peers]
        cells.append(_fmt(xargs.median(ref_key), fmt) if xargs is not None and show_peers else "")
        verdict = ok(mine) if ok is not None and mine is not None else None
        cells += [_ratio(mine, _best(refs, ref_key, higher), higher), target, MET[verdict]]
        lines.append(cells)

    def single(label: str, unit: str, value: str, target: str = "", ok: bool | None = None) -> None:
        lines.append([label, unit, value, *blank, "", target, MET[ok]])

    def both(a: float | None, b: float | None, test: Callable[[float, float], bool]) -> bool | None:
        return None if a is None or b is None else test(a, b)

    floor50, floor99 = zmq.median("w2_p50"), zmq.median("w2_p99")
    mp_w1, mp_w3 = mp_("w1"), mp_("w3")
    best_w4 = _best(peers, "w4", True)
    compared(f"W1 {p.w1_tasks:,} no-ops in one group", "w1", "tasks/s", "{:,.0f}", True, ">= 2x mp.Pool",
             lambda v: both(v, mp_w1, lambda a, b: a >= 2 * b))
    compared("W1 through `procctl submit --wait`", "w1_procctl", "tasks/s", "{:,.0f}", True, "", ref_key="w1",
             show_peers=False)
    cpu, helpers = me("cpu"), me("cpu_helpers")
    single("W1 daemon CPU per task (procpoold, all threads)", "us",
           "" if cpu is None else f"{cpu:.1f}" + (f" (+{helpers:.1f} other)" if helpers else ""),
           "<= 10 us", None if cpu is None else cpu <= 10)
    compared("W2 round trip p50", "w2_p50", "us", "{:,.0f}", False,
             f"<= ZeroMQ + 100 us ({floor50 + 100:,.0f})" if floor50 is not None else "<= ZeroMQ + 100 us",
             lambda v: both(v, floor50, lambda a, b: a <= b + 100))
    compared("W2 round trip p99", "w2_p99", "us", "{:,.0f}", False, "<= 1,500 us", lambda v: v <= 1500)
    single("W2 floor: bare ZeroMQ ipc round trip, Python", "us",
           "" if floor50 is None or floor99 is None else f"p50 {floor50:,.0f} / p99 {floor99:,.0f}")
    compared(f"W3 {p.w3_stages} stages x {p.w3_width}", "w3", "s", "{:.3f}", False, "<= 0.5x mp.Pool",
             lambda v: both(v, mp_w3, lambda a, b: a <= 0.5 * b))
    compared("W3 through `procctl submit --wait`", "w3_procctl", "s", "{:.3f}", False, "", ref_key="w3",
             show_peers=False)
    compared(f"W4 {p.w4_size // MiB} MiB echo", "w4", "MB/s", "{:,.0f}", True, ">= the best peer",
             lambda v: both(v, best_w4, lambda a, b: a >= b))
    compared(f"W5 {p.w5_tasks} x {p.w5_ms:g} ms CPU", "w5", "s", "{:.3f}", False,
             f"<= 1.05x ideal ({ideal:.3f} s)", lambda v: v <= 1.05 * ideal)
    xargs_w6 = xargs.median("w6") if xargs is not None else None
    compared(f"W6 {p.w6_cmds} `true`", "w6", "s", "{:.3f}", False, "<= xargs",
             lambda v: both(v, xargs_w6, lambda a, b: a <= b))
    for kind, runs in floods.items():
        worst = [r.worst_ms for r in runs]
        median = statistics.median(worst)
        spread = _spread(worst, "{:.0f}")
        single(f"worst ping, {p.flood_lines:,}-line flood from a {kind} task", "ms",
               f"{median:.0f}" + (f" (runs {spread})" if spread else ""), "<= 100 ms", median <= 100)
    jd = extra["journald"]
    if "runs" in jd:
        runs = jd["runs"]
        single(f"W1 {p.journald_tasks:,} no-ops, journald log target (container)", "tasks/s",
               f"{statistics.median(runs['rate']):,.0f}")
        stored = min(runs["stored_per_sent"])
        single("  journald CPU per record in it", "us",
               f"{statistics.median(runs['journald_us_per_record']):.1f} "
               f"({statistics.median(runs['records_per_task']):.2f} records/task, "
               + ("all stored)" if stored >= 1 else f"only {stored:.0%} of those sent stored)"))
        single("  daemon CPU per task in it (procpoold)", "us",
               f"{statistics.median(runs['daemon_us_per_task']):.1f}")
    else:
        single("W1 with journald as the log target (container)", "", "not run (see below)")

    def trip(rt: dict[str, Any]) -> str:
        if not rt["samples"]:
            return "no samples"
        return f"p50 {rt['p50_us']:.1f} / p99 {rt['p99_us']:.1f} ({rt['samples']:,})"

    awake = extra["rt_daemon"]["awake"]
    single("pool round trip in the daemon, worker awake", "us", trip(awake), "<= 10 us p50",
           awake["p50_us"] <= 10 if awake["samples"] else None)
    single("pool round trip in the daemon, worker woken", "us", trip(extra["rt_daemon"]["woken"]))
    rt50, rt99 = extra["rt"]
    single("pool round trip, pool alone (stand-in scheduler)", "us", f"p50 {rt50:.1f} / p99 {rt99:.1f}")
    single(f"idle CPU, {p.idle_workers} workers, {p.idle_seconds:g} s", "% core", f"{extra['idle']:.2f}",
           "< 1 %", extra["idle"] < 1)
    single("USS per worker, before user code", "MiB", "/".join(f"{u:.1f}" for u in extra["uss_fresh"]),
           "<= 5 MiB", max(extra["uss_fresh"]) <= 5)
    single("USS per worker, after 100 no-ops each", "MiB", "/".join(f"{u:.1f}" for u in extra["uss_warm"]))
    if extra.get("w1_off") is not None:
        off, ratio = extra["w1_off"]
        single("W1 with the store off (on/off in pairs)", "tasks/s", f"{off:,.0f} (on/off {ratio:.2f})",
               "store on >= 0.85x off", ratio >= 0.85)
    else:
        single("W1 with the store off", "tasks/s", "n/a (no store = false setting)")

    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    text_lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in [head, *lines]]
    footer = _footer(p, procpool, [*peers, zmq, *([xargs] if xargs else [])], floods, jd, info, notes)
    runs_text = _runs([procpool, *peers, zmq, *([xargs] if xargs else [])])
    plain = "\n".join([*text_lines, "", *footer, "", "Every run (in the order they ran):", *runs_text])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in lines]
    markdown = "\n".join(["# Benchmark results", "", *md, "", *[f"* {x}" for x in footer], "",
                          "Every run, in the order they ran:", "", "```", *runs_text, "```", ""])
    return plain, markdown


def _footer(p: Params, procpool: Contender, others: list[Contender], floods: dict[str, list[flood.Flood]],
            jd: dict[str, Any], info: dict[str, str], notes: Notes) -> list[str]:
    cmd = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    order = ", ".join(c.name for c in [procpool, *others])
    pings = ", ".join(f"{kind}: {len(runs)} runs, {sum(len(r.pings) for r in runs):,} pings"
                      for kind, runs in floods.items())
    out = [
        f"Command: `{cmd}` ({p.workers} workers for every contender).",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['date']}.",
        (f"Medians of {p.repeat} interleaved runs: each round ran " if p.repeat > 1 else "One round ran ") +
        f"{order} in turn, each a fresh daemon or pool doing every workload once; W2's percentiles are "
        "per run (first 10 % dropped), then the median of the runs.",
        "'vs fastest peer': procpool's speed relative to the fastest peer in that row (above 1: faster); "
        "for the `procctl` rows, relative to the fastest peer's W1 or W3.",
        "W1 daemon CPU: utime + stime of the procpoold process (/proc/PID/stat) around the W1 job, per "
        "task; '+ other': its other processes that are not pool workers (the zygote).",
        "`procctl submit FILE --wait`: the job as a JSON file, the venv's procctl, timed from process start "
        f"to exit; what it printed ({notes.procctl_output or 'n/a'} for W1) went to files.",
        "W2 floor: a DEALER in this process and a ROUTER echoing in another over ipc://, 64 bytes, "
        "`bench/zmq_echo.py`; the target is its p50 of the same runs + 100 us.",
        "W6 runs commands: the Python pools have no such workload, xargs -P is the reference.",
        f"Flood: one task writes {p.flood_lines:,} lines to stdout (a Python command, or `tasks:spew` in a "
        "worker) in a fresh daemon (default configuration, stderr to a file); another client pings every "
        "10 ms until the job has ended and the daemon's log stopped growing; the median of the runs' worst "
        f"ping ({pings}).",
        f"Pool round trips: a chain of {p.chain_tasks:,} no-ops in a fresh procpoold, each attempt "
        "pushed alone to a worker, timed from push to result by the daemon itself (`procctl pool`); "
        "awake: the worker still spun after the previous attempt; woken: the push had to wake it. "
        f"Pool alone: `bench/pool_bench.py`'s round trip, {p.rt_rounds:,} attempts.",
    ]
    if "skipped" in jd:
        out.append(f"W1 with journald: {jd['skipped']}.")
    else:
        out.append("journald: procpoold as a transient Type=notify service with `--log-target journal` in "
                   "the e2e tier's systemd-nspawn container, W1 submitted from inside it; journald's CPU "
                   "(systemd-journald's /proc stat) from the submit until the journal stopped growing, over "
                   "the records written meanwhile (journal sequence numbers), checked against the records "
                   "the daemon sent; journald's rate limit off in the container (a unit's "
                   "LogRateLimitIntervalSec=0 leaves journald's default on); "
                   f"medians of {p.repeat} runs (`bench/journald_bench.py`).")
    out += [f"{c.name}: {n}" for c in [procpool, *others] for n in c.notes]
    return out


def _runs(contenders: list[Contender]) -> list[str]:
    out = []
    for c in contenders:
        keys = sorted({k for r in c.runs for k in r})
        for key in keys:
            values = [r[key] for r in c.runs if key in r]
            out.append(f"{c.name} {key}: " + ", ".join(f"{v:,.4g}" if v < 1000 else f"{v:,.0f}"
                                                       for v in values))
    return out


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


# -- main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tasks, one round (~30 s)")
    parser.add_argument("--repeat", type=int, help="rounds of interleaved runs (default 5, --quick 1)")
    parser.add_argument("--skip-peers", action="store_true", help="procpool (and its ZeroMQ floor) only")
    parser.add_argument("--journald", action="store_true",
                        help="also W1 with journald in a systemd container (root, systemd-nspawn)")
    parser.add_argument("--output", type=Path, default=BENCH / "results.md",
                        help="Markdown table (default bench/results.md; '-' for none)")
    args = parser.parse_args()
    p = Params.quick(args.workers) if args.quick else Params(workers=args.workers)
    if args.repeat is not None:
        p.repeat = args.repeat
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.register_at_fork(after_in_child=_default_sigterm_in_child)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    notes = Notes()
    procpool = Contender("procpool", lambda q: procpool_pass(q, notes))
    peers: list[Contender] = []
    xargs: Contender | None = None
    if not args.skip_peers:
        missing: list[str] = []
        for cls in available_peers(missing):
            peer = Contender(cls.name, functools.partial(peer_pass, cls))
            if cls.scale != 1:
                peer.notes.append(f"runs 1/{cls.scale} of the W1, W2 and W4 tasks (it is slow enough to "
                                  "dominate the run otherwise)")
            peers.append(peer)
        if missing:
            procpool.notes.append(f"peers not installed, left out: {', '.join(missing)} "
                                  "(`pip install '.[bench]'`; `make bench` installs them)")
        if shutil.which("xargs"):
            xargs = Contender("xargs", lambda q: {"w6": xargs_seconds(q.w6_cmds, q.workers)})
    zmq = Contender("ZeroMQ", zmq_pass)
    if procctl_path() is None:
        procpool.notes.append(f"no procctl beside {sys.executable}: the `procctl` rows are empty")
    say(f"{p.repeat} round(s) of interleaved runs, {p.workers} workers each")
    interleaved(p, [procpool, *peers, zmq, *([xargs] if xargs else [])], say)
    extra: dict[str, Any] = {}
    floods = flood_runs(p, say)
    say(f"procpool: W1 with the store on and off, {p.store_pairs} pair(s) of daemons")
    extra["w1_off"] = store_cost(p)
    say("procpool: the pool's round trip in a daemon, and alone")
    extra["rt_daemon"] = daemon_roundtrip(p)
    extra["rt"] = dispatch_roundtrip(p.rt_rounds)
    say(f"procpool: idle CPU and USS, {p.idle_workers} workers")
    extra["idle"], extra["uss_fresh"], extra["uss_warm"] = idle_and_uss(p)
    extra["journald"] = journald_w1(p, args.journald, say)
    plain, markdown = render(p, procpool, peers, zmq, xargs, floods, extra, machine(), notes)
    if not args.skip_peers and any(peer.name == Dask.name for peer in peers):
        dp = dask_bench.DaskParams.quick(p.workers) if args.quick else dask_bench.DaskParams(
            workers=p.workers, repeat=p.repeat)
        say(f"procpool's Dask engine against plain Dask: {dp.repeat} round(s)")
        dask_plain, dask_md = dask_bench.table(dp, dask_bench.measure(dp, say))
        plain = "\n".join([plain, "", "procpool's Dask engine against plain Dask (bench/dask_bench.py):",
                           *dask_plain])
        markdown = "\n".join([markdown, *dask_md])
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

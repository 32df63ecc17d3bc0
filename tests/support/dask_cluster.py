"""Real Dask clusters on 127.0.0.1 for the Dask engine's tests, started and always cleaned up.

Two kinds, both with Dask's processes outside the test process:

* :class:`LocalDaskCluster`: a ``distributed.LocalCluster(n_workers=2, threads_per_worker=4,
  processes=True)`` hosted by a helper process (this module run as ``python -m
  tests.support.dask_cluster local``), which prints the scheduler's address and closes the
  cluster when its stdin closes (also when the test process dies). Not in the test process: the
  suite turns every warning into an error (``filterwarnings = ["error"]``), which would raise in
  Dask's event-loop thread too, and a ``Nanny`` writes its ``pre-spawn-environ`` into
  ``os.environ`` of the process hosting it, which every daemon the tests start would inherit.
* :class:`ProcessDaskCluster`: ``dask scheduler`` and two ``dask worker`` processes, as a user runs
  them, on a free port; the scheduler can be killed and started again on the same port.

Dask's worker processes inherit the helper's environment (``multiprocessing``'s spawn starts them
with it; ``dask worker`` is started with it), so the daemon's tasks, which run in subprocesses of
a Dask worker, import ``procpool``, ``procpoold`` and ``tests.support.tasks`` like the daemon's own
workers: the repository root is put first on ``PYTHONPATH``. Every process of a cluster carries
``PROCPOOL_DASK_TAG=<tag>`` in its environment, and so does everything a Dask worker starts, so
:meth:`DaskCluster.strays` finds a task's process left behind (a subprocess that outlived its
attempt) and :meth:`DaskCluster.close` fails if any process is left at all.

Questions to the scheduler (its workers, their pids) go through a short-lived ``distributed.Client``
in a subprocess too (``python -m tests.support.dask_cluster probe ADDR``), with a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any, NamedTuple

import psutil

from tests.support.daemon import pids_with_env
from tests.support.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])
TAG_VAR = "PROCPOOL_DASK_TAG"
#: Why the Dask tests are skipped where ``distributed`` is not installed.
SKIP_REASON = ("Dask is not installed: the Dask engine's tests need the 'dask' extra "
               "(pip install -e '.[dev,dask]'; make test-venv)")
#: The command line of the Dask engine's fork server, one per Dask worker process (it forks the
#: attempts on that worker), which the engine starts the first time the worker runs an attempt.
FORK_SERVER = "procpoold.remote.forkserver"
#: Bounds of the waits below: reached only when something is broken.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class WorkerInfo(NamedTuple):
    """One Dask worker as its scheduler knows it."""

    address: str
    pid: int
    host: str
    name: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tagged(tag: str) -> list[int]:
    """Pids of live processes (not zombies) whose environment carries ``PROCPOOL_DASK_TAG=tag``."""
    return with_env_marker(TAG_VAR, tag)


def with_env_marker(name: str, value: str) -> list[int]:
    """Pids of live processes (not zombies) whose environment carries ``name=value``."""
    return pids_with_env(name, value, skip_zombies=True)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def probe(address: str, workers: int = 0, timeout: float = START_TIMEOUT) -> dict[str, WorkerInfo]:
    """The workers of the scheduler at ``address`` once it has at least ``workers`` of them.

    Asked in a subprocess (a short-lived ``distributed.Client``), bounded by ``timeout``."""
    cmd = [sys.executable, "-m", "tests.support.dask_cluster", "probe", address,
           "--workers", str(workers), "--timeout", str(timeout)]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise AssertionError(f"no {workers} Dask workers at {address} in {timeout}s:\n{out.stderr[-3000:]}")
    found = json.loads(out.stdout)
    return {a: WorkerInfo(a, int(w["pid"]), str(w["host"]), str(w["name"])) for a, w in found.items()}


def worker_imports(address: str, modules: list[str], timeout: float = START_TIMEOUT) -> dict[str, str]:
    """On every worker of ``address``: import ``modules`` in a subprocess of the worker, started as
    the engine starts an attempt's (the worker's interpreter and environment, cwd ``/``). Returns
    worker address -> "" if that worked, else the subprocess's error output."""
    cmd = [sys.executable, "-m", "tests.support.dask_cluster", "imports", address, *modules]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": _pythonpath()})
    if out.returncode != 0:
        raise AssertionError(f"could not ask the workers at {address}:\n{out.stderr[-3000:]}")
    found: dict[str, str] = json.loads(out.stdout)
    return found


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)


class DaskCluster:
    """What both kinds share: a tag, a work dir, log files, the scheduler's address, cleanup."""

    def __init__(self, workers: int = 2, threads: int = 4) -> None:
        self.n_workers = workers
        self.threads = threads
        self.tag = uuid.uuid4().hex
        self.dir = Path(tempfile.mkdtemp(prefix="ppdask-"))
        self.address = ""
        #: the processes this object started itself (the helper, or the scheduler and workers)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        # (Dask's scratch space, also the scheduler's, in the work dir: removed with it)
        return {**os.environ, TAG_VAR: self.tag, "PYTHONPATH": _pythonpath(),
                "DASK_TEMPORARY_DIRECTORY": str(self.dir / "tmp")}

    def _spawn(self, cmd: list[str], log_name: str, stdin: int | IO[Any] = subprocess.DEVNULL,
               stdout: int | IO[Any] | None = None) -> subprocess.Popen[bytes]:
        with open(self.dir / log_name, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=stdin, stdout=log if stdout is None else stdout, stderr=log,
                                    env=self.env(), cwd=self.dir, start_new_session=True)
        self.procs.append(proc)
        return proc

    def workers(self, at_least: int | None = None, timeout: float = START_TIMEOUT) -> dict[str, WorkerInfo]:
        """The scheduler's workers (once it has ``at_least``, by default all of them)."""
        return probe(self.address, self.n_workers if at_least is None else at_least, timeout)

    def kill_worker(self, address: str) -> int:
        """SIGKILL the worker process at ``address`` (its nanny, if any, starts another); its pid."""
        pid = self.workers(0)[address].pid
        _kill(pid)
        wait_until(lambda: _alive(pid), lambda alive: not alive, what=f"Dask worker {pid} to die")
        return pid

    def own_pids(self) -> set[int]:
        """The cluster's own processes: the ones started here, their children (nannies start the
        workers, multiprocessing its resource tracker), and the Dask engine's fork server of each
        worker (a child of the worker that lives as long as it: ``FORK_SERVER``). What an attempt
        starts is below these (a fork server's children are attempts)."""
        own: set[int] = set()
        for proc in self.procs:
            if proc.poll() is not None:
                continue
            own.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children():
                    own.add(child.pid)
                    with contextlib.suppress(psutil.Error):
                        own.update(c.pid for c in child.children() if FORK_SERVER in " ".join(c.cmdline()))
        return own

    def strays(self) -> list[int]:
        """Processes carrying the cluster's tag that are not the cluster's own: what a task left."""
        own = self.own_pids()
        return [pid for pid in tagged(self.tag) if pid not in own]

    def assert_no_strays(self, timeout: float = 10.0) -> None:
        """Fail (after killing them) if a task's processes outlive ``timeout`` on the cluster."""
        deadline = time.monotonic() + timeout
        left = self.strays()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.strays()
        if left:
            described = [_describe(pid) for pid in left]
            for pid in left:
                _kill(pid)
            raise AssertionError(f"processes left on the Dask workers after their attempts: {described}")

    def log(self) -> str:
        parts = []
        for path in sorted(self.dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def close(self, check: bool = True) -> None:
        """Stop everything (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``); with ``check``, fail if any
        tagged process outlived that."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        self._reap(check)

    def _wait(self, signum: int) -> float:
        """Wait up to ``STOP_TIMEOUT`` for every process; signal the group of one that has not
        ended by then (and, after a SIGKILL, reap it). Returns the deadline."""
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)
                if signum == signal.SIGKILL:
                    proc.wait(10)
        return deadline

    def _reap(self, check: bool) -> None:
        deadline = self._wait(signal.SIGKILL)
        left = tagged(self.tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = tagged(self.tag)
        described = [_describe(pid) for pid in left]
        for pid in left:
            _kill(pid)
        log = self.log()
        shutil.rmtree(self.dir, ignore_errors=True)
        if check and left:
            raise AssertionError(f"processes left behind by the Dask cluster: {described}\n{log}")

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(check=exc[0] is None)


def _describe(pid: int) -> str:
    try:
        return f"{pid} {' '.join(psutil.Process(pid).cmdline())[:200]}"
    except psutil.Error:
        return str(pid)


class LocalDaskCluster(DaskCluster):
    """A ``distributed.LocalCluster`` of worker processes, hosted by a helper process."""

    def start(self) -> LocalDaskCluster:
        cmd = [sys.executable, "-m", "tests.support.dask_cluster", "local", "--workers", str(self.n_workers),
               "--threads", str(self.threads), "--local-directory", str(self.dir / "scratch")]
        proc = self._spawn(cmd, "local.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = _read_line(proc, START_TIMEOUT)
            if not line:
                raise AssertionError(f"the LocalCluster helper exited with {proc.wait(10)}:\n{self.log()}")
            self.address = json.loads(line)["address"]
            self.workers()
        except BaseException:
            self.close(check=False)
            raise
        return self

    def close(self, check: bool = True) -> None:
        """Close the helper's stdin (it closes the cluster, workers first), then as the base."""
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.stdout is not None:
                proc.stdout.close()
        self._wait(signal.SIGTERM)
        self._reap(check)

    def __enter__(self) -> LocalDaskCluster:
        return self.start()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of ``proc``'s stdout, or b"" at its end; fails after ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no line from {proc.args!r} within {timeout}s")
    return proc.stdout.readline()


class ProcessDaskCluster(DaskCluster):
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, as a user starts them."""

    def __init__(self, workers: int = 2, threads: int = 4, start_workers: bool = True) -> None:
        super().__init__(workers, threads)
        #: whether :meth:`start` starts the workers too (False: the scheduler alone, see start_worker)
        self.start_workers = start_workers
        self.port = 0
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> ProcessDaskCluster:
        try:
            self.start_scheduler()
            if self.start_workers:
                for _ in range(self.n_workers):
                    self.start_worker()
                self.workers()
        except BaseException:
            self.close(check=False)
            raise
        return self

    def start_scheduler(self, attempts: int = 5) -> None:
        """Start ``dask scheduler`` on ``self.port`` (the same port again after a kill), or on a free
        port; returns once it accepts connections."""
        for _ in range(attempts):
            port = self.port or free_port()
            cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                   "--port", str(port), "--no-dashboard", "--no-jupyter"]
            proc = self._spawn(cmd, "scheduler.log")
            if self._listening(proc, port):
                self.port, self.scheduler = port, proc
                self.address = f"tcp://127.0.0.1:{port}"
                return
            proc.wait(10)
            self.procs.remove(proc)
            if self.port:  # the same port must be had (a restart): wait for it to be free again
                time.sleep(0.2)
        raise AssertionError(f"dask scheduler did not start:\n{self.log()}")

    def _listening(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Whether ``proc`` accepts connections on ``port`` (False if it exits first)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            time.sleep(0.05)
        raise AssertionError(f"dask scheduler not listening on {port} within {START_TIMEOUT}s:\n{self.log()}")

    def start_worker(self) -> subprocess.Popen[bytes]:
        """One more ``dask worker`` (a nanny and its worker process) for the scheduler."""
        index = len(self.worker_procs)
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
               "--nthreads", str(self.threads), "--nworkers", "1", "--name", f"w{index}", "--no-dashboard",
               "--local-directory", str(self.dir / f"scratch{index}")]
        proc = self._spawn(cmd, f"worker{index}.log")
        self.worker_procs.append(proc)
        return proc

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler process; its workers see the connection break and exit (Dask
        workers do not wait for a scheduler to come back): all are reaped before this returns."""
        assert self.scheduler is not None
        self.scheduler.kill()
        self.scheduler.wait(10)
        self.procs.remove(self.scheduler)
        self.scheduler = None
        for proc in self.worker_procs:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            self.procs.remove(proc)
        self.worker_procs = []

    def __enter__(self) -> ProcessDaskCluster:
        return self.start()


# -- the helper processes (``python -m tests.support.dask_cluster ...``) --------------------------

def _serve_local(args: argparse.Namespace) -> None:
    import logging

    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True,
                           host="127.0.0.1", dashboard_address=None, local_directory=args.local_directory,
                           silence_logs=logging.WARNING)
    try:
        print(json.dumps({"address": cluster.scheduler_address}), flush=True)
        sys.stdin.read()  # until the test closes it (or exits)
    finally:
        cluster.close(timeout=STOP_TIMEOUT)


def _probe(args: argparse.Namespace) -> None:
    from distributed import Client

    with Client(args.address, timeout=args.timeout) as client:
        if args.workers:
            client.wait_for_workers(args.workers, timeout=args.timeout)
        info = client.scheduler_info(n_workers=-1)["workers"]
        pids = client.run(os.getpid, workers=list(info)) if info else {}
        print(json.dumps({a: {"pid": pids[a], "host": w["host"], "name": str(w.get("name", ""))}
                          for a, w in info.items() if a in pids}))


def _import_in_subprocess(modules: list[str]) -> str:
    """(Runs on a Dask worker.) "" if a subprocess of this worker imports ``modules``, else why not."""
    code = "; ".join(f"import {m}" for m in modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    return "" if out.returncode == 0 else f"exit {out.returncode}: {out.stderr[-2000:]}"


def _imports(args: argparse.Namespace) -> None:
    from distributed import Client

    with Client(args.address, timeout=START_TIMEOUT) as client:
        print(json.dumps(client.run(_import_in_subprocess, args.modules)))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    local = sub.add_parser("local", help="host a LocalCluster until stdin closes")
    local.add_argument("--workers", type=int, default=2)
    local.add_argument("--threads", type=int, default=4)
    local.add_argument("--local-directory", required=True)
    ask = sub.add_parser("probe", help="print the workers of a scheduler as JSON")
    ask.add_argument("address")
    ask.add_argument("--workers", type=int, default=0)
    ask.add_argument("--timeout", type=float, default=START_TIMEOUT)
    imports = sub.add_parser("imports", help="whether a subprocess of each worker imports the modules")
    imports.add_argument("address")
    imports.add_argument("modules", nargs="+")
    args = parser.parse_args()
    {"local": _serve_local, "probe": _probe, "imports": _imports}[args.what](args)


if __name__ == "__main__":
    main()

"""Bounded memory and fds under load: quotas, paged status, per-connection caps, the connection cap.

Each test starts its own real procpoold with the limits it exercises. The load test drives the
daemon with the same code as ``bench/load_bench.py`` and prints its figures (ping p99, RSS);
it asserts only generous sanity bounds on them.
"""

from __future__ import annotations

import importlib.util
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from procpool.client import Client
from procpool.contract.codec import decode_reply, encode_request
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.paths import endpoint
from tests.support.daemon import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("load_bench", ROOT / "bench" / "load_bench.py")
assert _spec is not None and _spec.loader is not None
load_bench = importlib.util.module_from_spec(_spec)
sys.modules["load_bench"] = load_bench
_spec.loader.exec_module(load_bench)

BENCH = load_bench.BENCH


def config(tmp_path: Path, **settings: Any) -> list[str]:
    path = tmp_path / "procpoold.toml"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    return ["--config", str(path)]


def sleeper(name: str, gate: Path) -> dict[str, Any]:
    """A one-task command job that runs until ``gate`` exists."""
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    return {"name": name, "root": {"name": "s", "cmd": ["sh", "-c", script]}}


def wide_job(n: int, name: str = "wide") -> dict[str, Any]:
    tasks = [{"name": f"t{i}", "call": "tasks:noop"} for i in range(n)]
    return {"name": name, "python_path": [BENCH], "root": {"name": "g", "concurrent": tasks}}


class Raw:
    """A DEALER that sends requests and reads replies as they come."""

    def __init__(self, path: Path, rcvhwm: int | None = None) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
            self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.connect(endpoint(path))

    def send(self, request_id: Any, op: str, args: dict[str, Any] | None = None) -> None:
        self.sock.send(encode_request(request_id, op, args or {}))

    def reply(self, timeout: float = 10.0) -> Any:
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        return decode_reply(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def rss(pid: int) -> int:
    return int(load_bench.rss_bytes(pid))


# -- quotas -----------------------------------------------------------------------------------


def test_queue_full_refuses_with_limit_exceeded_and_frees_up(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    args = ["--workers", "2", *config(tmp_path, max_queued_tasks=3, max_user_tasks=2)]
    with DaemonProcess(extra_args=args) as d, d.client() as client:
        first = client.submit(sleeper("a", gate))["id"]
        client.submit(sleeper("b", gate))
        with pytest.raises(ProcpoolError) as refused:  # the per-user quota comes first here
            client.submit(sleeper("c", gate))
        assert refused.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "max_user_tasks = 2" in refused.value.message
        out = d.procctl("run", "--", "true")
        assert out.returncode == 5, out
        assert "queue full" in out.stderr and "max_user_tasks = 2" in out.stderr
        assert "Traceback" not in out.stderr
        gate.touch()
        client.wait(first, timeout=30)
        client.wait("2", timeout=30)
        assert client.status()["jobs"]["tasks_unfinished"] == 0
        client.submit(sleeper("d", gate))  # room again


def test_daemon_wide_queue_limit_names_itself(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    gate.touch()
    with DaemonProcess(extra_args=["--workers", "1", *config(tmp_path, max_queued_tasks=5)]) as d:
        with d.client() as client, pytest.raises(ProcpoolError) as refused:
            client.submit(wide_job(6))
        assert refused.value.code == ErrorCode.LIMIT_EXCEEDED
        assert refused.value.message.startswith("queue full: 0 tasks queued, max_queued_tasks = 5")


# -- paged status -----------------------------------------------------------------------------


def test_big_job_status_is_paged_and_clients_see_every_task(tmp_path: Path) -> None:
    n = 2_500
    with DaemonProcess(extra_args=["--workers", "2", *config(tmp_path, status_page_size=1000)]) as d:
        with d.client(timeout=60) as client:
            done = client.submit(wide_job(n), wait=120)  # submit-and-wait: every page fetched
            job_id = done["id"]
            assert done["state"] == "completed"
            assert len(done["status"]["tasks"]) == n
            assert done["status"]["page"]["next"] is None
            page = client.status(job_id, tasks_from=0)
            assert len(page["tasks"]) == 1000 and page["page"] == {
                "from": 0, "count": 1000, "total": n, "next": 1000,
            }
            assert page["job"]["counts"] == {"completed": n} and page["groups"]
            last = client.status(job_id, tasks_from=2000, tasks_limit=5000)
            assert len(last["tasks"]) == 500 and last["page"]["next"] is None and last["groups"] == []
            assert [t["name"] for t in client.status(job_id)["tasks"]] == [f"t{i}" for i in range(n)]
            assert len(client.wait(job_id)["status"]["tasks"]) == n
        out = d.procctl("status", job_id, "--all")  # every task, as a tree
        assert out.returncode == 0, out
        assert "t0" in out.stdout and f"t{n - 1}" in out.stdout
        out = d.procctl("status", job_id)  # a big job: its counts only (nothing failed or runs)
        assert out.returncode == 0, out
        assert out.stdout.splitlines()[1:] == [f"  {n} tasks: {n} completed"], out.stdout


def test_unread_status_replies_stay_bounded(tmp_path: Path) -> None:
    """The issue's case: a client asks for a big job's status again and again and never reads."""
    with DaemonProcess(extra_args=["--workers", "2"]) as d, d.client(timeout=120) as client:
        job_id = client.submit(wide_job(20_000), wait=120)["id"]
        before = rss(d.pid)
        stalled = Raw(d.socket, rcvhwm=1)
        try:
            for i in range(300):
                stalled.send(i, "status", {"job": job_id})
            wait_until(
                lambda: client.status()["requests"],
                lambda r: r["replies_refused"] > 0 and r["replies_dropped"] > 0,
                what="replies refused (max_queued_reply_bytes) and dropped (max_queued_replies)",
            )
            for _ in range(20):
                t0 = time.perf_counter()
                client.ping()
                assert time.perf_counter() - t0 < 5
            grown = rss(d.pid) - before
        finally:
            stalled.close()
        print(f"\nRSS growth with 300 unread status pages of a 20,000-task job: {grown / 2**20:.1f} MiB")
        assert grown < 64 * 2**20  # max_queued_reply_bytes (8 MiB) plus the kernel's buffers and noise


# -- pending waits ----------------------------------------------------------------------------


def test_pending_waits_are_capped_per_connection_and_in_all(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    args = ["--workers", "1", *config(tmp_path, max_waits_per_peer=3, max_pending_waits=5)]
    with DaemonProcess(extra_args=args) as d, d.client() as client:
        job_id = client.submit(sleeper("s", gate))["id"]
        one, two = Raw(d.socket), Raw(d.socket)
        try:
            for i in range(3):
                one.send(i, "wait", {"id": job_id, "timeout": 60.0})
            one.send(3, "wait", {"id": job_id, "timeout": 60.0})
            refused = one.reply()
            assert refused.id == 3 and refused.error.code == ErrorCode.LIMIT_EXCEEDED
            assert "max_waits_per_peer = 3" in refused.error.message
            for i in range(3):
                two.send(i, "wait", {"id": job_id, "timeout": 60.0})
            total = two.reply()
            assert total.id == 2 and "max_pending_waits = 5" in total.error.message
            assert client.status()["requests"]["pending_waits"] == 5
            gate.touch()
            answered = {one.reply(30).id for _ in range(3)} | {two.reply(30).id + 10 for _ in range(2)}
            assert answered == {0, 1, 2, 10, 11}
            assert client.status()["requests"]["pending_waits"] == 0
        finally:
            one.close()
            two.close()


def test_pending_waits_are_capped_per_user_across_connections(tmp_path: Path) -> None:
    gate = tmp_path / "open"
    args = ["--workers", "1", *config(tmp_path, max_waits_per_peer=2, max_waits_per_user=3)]
    with DaemonProcess(extra_args=args) as d, d.client() as client:
        job_id = client.submit(sleeper("s", gate))["id"]
        one, two = Raw(d.socket), Raw(d.socket)
        try:
            for i in range(2):
                one.send(i, "wait", {"id": job_id, "timeout": 60.0})
            # The daemon takes the connections in no set order: let it count the first two first.
            wait_until(lambda: client.status()["requests"]["pending_waits"] == 2, timeout=30)
            two.send(0, "wait", {"id": job_id, "timeout": 60.0})
            two.send(1, "wait", {"id": job_id, "timeout": 60.0})  # the same user's fourth
            refused = two.reply()
            assert refused.id == 1 and refused.error.code == ErrorCode.LIMIT_EXCEEDED
            assert "max_waits_per_user = 3" in refused.error.message
            gate.touch()
            assert {one.reply(30).id for _ in range(2)} == {0, 1} and two.reply(30).id == 0
        finally:
            one.close()
            two.close()


# -- connections and file descriptors ---------------------------------------------------------


class LowFdDaemon(DaemonProcess):
    """A daemon started with RLIMIT_NOFILE ``(soft, hard)`` (by default 1024 for both)."""

    limit = 1024
    hard = 1024

    def command(self) -> list[str]:
        boot = (
            "import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({self.limit}, {self.hard})); "
            "sys.argv = ['procpoold', *sys.argv[1:]]; "
            "runpy.run_module('procpoold', run_name='__main__', alter_sys=True)"
        )
        return [sys.executable, "-c", boot, *super().command()[3:]]


def shut_by_peer(s: socket.socket) -> bool:
    """Whether the daemon ended this raw connection (after the greeting libzmq sent on it)."""
    try:
        while True:
            data = s.recv(4096, socket.MSG_DONTWAIT)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit")


def test_the_soft_fd_limit_is_raised_for_the_daemon_not_for_its_workers() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("needs a hard open-file limit of 2,048")
    d = LowFdDaemon(extra_args=["--workers", "2"])
    d.hard = 2048
    with d, d.client() as client:
        assert nofile(d.pid) == (2048, 2048)
        assert client.status()["requests"]["max_connections"] == (2048 - 64 - 16) // 2
        workers = [w["pid"] for w in client.pool()["workers"] if w.get("pid")]
        assert workers and all(nofile(pid) == (1024, 2048) for pid in workers)


def test_1100_idle_connections_under_a_1024_fd_limit_are_refused_not_fatal(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip("this test needs an open-file limit of 1,400 in the test process")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle: list[socket.socket] = []
    d = LowFdDaemon(extra_args=["--workers", "2"])
    try:
        d.start()
        with d.client() as early:  # connected before the flood: keeps being served
            info = early.status()
            cap = info["requests"]["max_connections"]
            assert cap < 1024 // 2, info["requests"]
            peak = 0

            def shut() -> int:
                nonlocal peak
                peak = max(peak, open_fds(d.pid))
                return sum(shut_by_peer(s) for s in idle)

            for i in range(1100):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(d.socket))
                idle.append(s)
                if i % 50 == 0:
                    peak = max(peak, open_fds(d.pid))
            # No request meanwhile: the daemon sheds the connections over the cap by itself.
            wait_until(shut, lambda n: n >= 1100 - cap, what="over-cap connections shut down")

            def settled() -> dict[str, Any]:
                nonlocal peak
                peak = max(peak, open_fds(d.pid))
                return early.status()["requests"]  # type: ignore[no-any-return]

            seen = wait_until(
                settled, lambda r: r["connections_shed"] >= 1100 - cap, what="over-cap connections shed"
            )
            assert d.proc is not None and d.proc.poll() is None, d.log()
            assert peak < 1024
            # A new client while the cap is full: a clean refusal, and procctl exits 5.
            with pytest.raises(ProcpoolError) as refused, Client(d.socket, timeout=10) as late:
                late.ping()
            assert refused.value.code == ErrorCode.LIMIT_EXCEEDED
            assert "too many connections" in refused.value.message
            out = d.procctl("status")
            assert out.returncode == 5 and "too many connections" in out.stderr, out
            print(f"\ncap {cap}, peak fds {peak}, {seen}")
            for s in idle:
                s.close()
            idle.clear()
            wait_until(lambda: early.status()["requests"]["connections"] <= 2, what="connections closed")
            with Client(d.socket, timeout=10) as late:
                assert late.ping()["pid"] == d.pid
        d.stop()
    finally:
        for s in idle:
            s.close()
        d.cleanup()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the load test ----------------------------------------------------------------------------


def test_load_50_submitters_stalled_and_vanishing_clients(tmp_path: Path) -> None:
    with DaemonProcess(extra_args=["--workers", "2", "--log-level", "info"]) as d:
        result = load_bench.run_load(d.socket, d.pid, submitters=50, jobs=5000, stalled=5, vanishing=5)
        print("\n" + load_bench.report(result))
        assert result.errors == []
        assert len(result.ids) == 5000 and len(set(result.ids)) == 5000
        assert len(result.vanished_ids) == 5 and not set(result.vanished_ids) & set(result.ids)
        assert result.stray_replies == 0
        by_state = result.summary["jobs"]["by_state"]
        assert by_state == {"completed": 5005}, by_state  # one job per vanishing key, not two
        assert result.summary["requests"]["replies_dropped"] > 0  # the stalled clients' replies
        assert result.rss_peak < 512 * 2**20
        assert result.ping_percentile(0.99) < 5.0

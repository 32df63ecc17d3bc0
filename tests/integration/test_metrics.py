"""``procctl metrics`` and ``procctl health`` against a real daemon, the health verdicts a monitor
sees (a queue over its threshold, a low success rate, a crash-looping pool below its size), the
systemd status line that carries the verdict, and the Prometheus export (textfile and HTTP, on TCP
and on a Unix socket) read with prometheus_client's own parser.

Tasks that must stay running wait for a gate file the test creates once it has looked: no timing
luck.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procpool import Client
from tests.support.daemon import DaemonProcess, serving
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(120)]

ROOT = str(Path(__file__).resolve().parents[2])
HERE = "tests.integration.test_metrics"
#: Only reached when something is broken: a task waiting for a file gives up after this.
GIVE_UP = 60.0


# -- task code (runs in the daemon's workers, imported through python_path) ------------------------


def ok(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return "ok"


def fail() -> None:
    raise RuntimeError("meant to fail")


def wait_for(path: str) -> str:
    end = time.monotonic() + GIVE_UP
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


def call(fn: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"call": f"{HERE}:{fn}", "args": list(args), **extra}


def job(name: str, *tasks: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "python_path": [ROOT], "root": {"concurrent": list(tasks)}}


# -- helpers ---------------------------------------------------------------------------------------


@contextmanager
def daemon_with(config: str = "", *args: str, workers: int = 2,
                env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    """A daemon with ``config`` as its TOML config file and ``args`` on its command line."""
    proc = DaemonProcess(env=env)
    (proc.dir / "procpoold.toml").write_text(config)
    proc.extra_args = ["--workers", str(workers), "--log-target", "stderr",
                       "--config", str(proc.dir / "procpoold.toml"), *args]
    with serving(proc.start()) as running:
        yield running


def health(d: DaemonProcess) -> tuple[int, dict[str, Any]]:
    result = d.procctl("--json", "health")
    return result.returncode, json.loads(result.stdout)


def metrics(d: DaemonProcess) -> dict[str, Any]:
    result = d.procctl("--json", "metrics")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, suffix: str = "", **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {family}{suffix} {labels} in {fams[family].samples}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- tests -----------------------------------------------------------------------------------------


def test_metrics_count_tasks_by_outcome_name_and_worker(tmp_path: Path) -> None:
    with daemon_with() as d, d.client() as client:
        status = client.submit(job("m", *[call("ok", 0.01, name=f"work{i}") for i in range(6)],
                                   call("fail", name="broken")), wait=60)
        assert status["state"] == "failed"
        m = metrics(d)
        tasks = m["tasks"]
        assert (tasks["processed"], tasks["succeeded"], tasks["failed"], tasks["timed_out"],
                tasks["cancelled"]) == (7, 6, 1, 0, 0)
        assert tasks["success_rate"] == pytest.approx(6 / 7)
        work = m["durations"]["work*"]  # work0 .. work5: one line
        assert work["count"] == 6 and 0.01 <= work["mean"] <= work["max"] and work["p95"] <= work["max"]
        assert m["durations"]["broken"]["count"] == 1
        assert m["throughput"]["last_minute"] == 7 and len(m["throughput"]["per_second"]) == 60
        assert m["queue"] == {"total": 0, "by_priority": dict.fromkeys(
            ("critical", "high", "normal", "low", "batch"), 0)}
        assert m["running"] == 0 and m["uptime"] > 0
        pool = [w for w in m["workers"] if w["engine"] == "pool"]
        assert len(pool) == 2 and sum(w["tasks_done"] for w in pool) == 7
        assert sum(w["busy_time"] for w in pool) >= 0.06  # six calls of 10 ms at least
        for w in pool:
            assert 0 <= w["utilization"] <= 1 and w["rss"] > 0 and w["peak_rss"] >= w["rss"]
        assert m["logging"]["dropped"] == 0
        store = m["store"]
        assert store["database"] > 0 and store["total"] == sum(
            store[k] for k in ("database", "wal", "log", "values"))
        assert m["health"]["health"] == "healthy"
        text = d.procctl("metrics")
        assert text.returncode == 0, text.stderr
        assert "7 processed: 6 succeeded, 1 failed, 0 timed out, 0 cancelled" in text.stdout
        assert "work*" in text.stdout and "healthy" in text.stdout


def test_health_is_degraded_while_the_queue_is_over_its_threshold(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    config = "[procpoold]\nprefetch = 1\n[health]\nmax_queued = 2\n"
    with daemon_with(config, workers=1) as d, d.client() as client:
        assert health(d) == (0, {"health": "healthy", "reasons": []})
        client.submit(job("q", *[call("wait_for", str(gate), name=f"t{i}") for i in range(5)]))
        _, verdict = wait_until(lambda: health(d), lambda h: h[0] == 1, what="a degraded verdict")
        assert verdict["health"] == "degraded"
        assert verdict["reasons"] == ["4 tasks queued, more than health_max_queued (2)"]
        assert metrics(d)["queue"]["by_priority"]["normal"] == 4
        text = d.procctl("health")
        assert text.returncode == 1 and text.stdout.splitlines() == [
            "degraded", "  4 tasks queued, more than health_max_queued (2)"]
        gate.touch()
        wait_until(lambda: health(d), lambda h: h[0] == 0, what="healthy again once the queue drained")


def test_health_is_degraded_when_too_few_of_the_last_tasks_succeeded() -> None:
    config = "[health]\nsuccess_window = 4\nmin_success_rate = 0.75\n"
    with daemon_with(config) as d, d.client() as client:
        client.submit(job("good", call("ok", name="a")), wait=60)
        for i in range(3):  # (one job each: a failure stops the rest of its job)
            client.submit(job(f"bad{i}", call("fail", name="f")), wait=60)
        code, verdict = health(d)
        assert (code, verdict["reasons"]) == (
            1, ["25% of the last 4 tasks succeeded, under health_min_success_rate (75%)"])
        client.submit(job("good", *[call("ok", name=f"g{i}") for i in range(4)]), wait=60)
        assert health(d) == (0, {"health": "healthy", "reasons": []})


def test_a_crash_looping_pool_below_its_size_is_unhealthy() -> None:
    with daemon_with(workers=2) as d, d.client() as client:
        killed: set[int] = set()

        def kill_workers() -> tuple[int, dict[str, Any]]:
            kill_idle_workers(client, killed)
            return health(d)

        # Each death within the pool's death window makes its refill wait longer (backoff), so the
        # pool is soon seen below its size: kill what lives until the verdict says both.
        _, verdict = wait_until(
            kill_workers,
            lambda h: h[0] == 2 and any("live worker(s) of 2" in r for r in h[1]["reasons"]),
            what="an unhealthy verdict naming the crash loop and the missing workers")
        assert any("workers of the engine pool are crash-looping" in r for r in verdict["reasons"])
        # the pool recovers once nobody kills its workers (the deaths leave the window)
        wait_until(lambda: health(d), lambda h: h[0] == 0, timeout=60, what="healthy again")


@contextmanager
def notify_listener(d: DaemonProcess) -> Iterator[Callable[[], str]]:
    """The daemon's sd_notify datagrams from now on (the harness's socket is gone once READY=1 came:
    listen at its path again); yields a function that returns the last STATUS= of the next one."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(d.dir / "notify.sock"))
    listener.settimeout(GIVE_UP)

    def status_line() -> str:
        datagram = listener.recv(4096).decode()
        lines = [line for line in datagram.split("\n") if line.startswith("STATUS=")]
        return lines[-1] if lines else ""

    try:
        yield status_line
    finally:
        listener.close()
        (d.dir / "notify.sock").unlink(missing_ok=True)


def kill_idle_workers(client: Client, killed: set[int]) -> None:
    for w in client.pool()["workers"]:
        if w.get("pid") and w["state"] in ("idle", "busy") and w["pid"] not in killed:
            killed.add(w["pid"])
            os.kill(w["pid"], signal.SIGKILL)


def test_the_systemd_status_line_carries_the_verdict(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    config = "[procpoold]\nprefetch = 1\n[health]\nmax_queued = 1\n"
    with daemon_with(config, workers=1) as d, d.client() as client, notify_listener(d) as status_line:
        client.submit(job("s", *[call("wait_for", str(gate), name=f"t{i}") for i in range(3)]))
        # an end makes the status line follow (a command: the one worker is taken)
        client.submit({"name": "done", "root": {"cmd": ["true"]}})
        line = wait_until(status_line, lambda s: s.startswith("STATUS=degraded"), what="a degraded status")
        assert "tasks queued, more than health_max_queued (1)" in line and "queued" in line
        gate.touch()
        wait_until(status_line, lambda s: s.startswith("STATUS=healthy: "), what="a healthy status")


def test_the_status_line_follows_a_verdict_that_changed_with_no_task_ending() -> None:
    # A watchdog of 1 s (a tick every 0.5 s); no task runs, so only the ticks can send the status.
    with daemon_with(env={"WATCHDOG_USEC": "1000000"}) as d, d.client() as client, \
            notify_listener(d) as status_line:
        killed: set[int] = set()

        def after_kills() -> str:
            kill_idle_workers(client, killed)
            return status_line()

        line = wait_until(after_kills, lambda s: s.startswith("STATUS=unhealthy"),
                          what="an unhealthy status line")
        assert "crash-looping" in line
        wait_until(status_line, lambda s: s.startswith("STATUS=healthy: "), timeout=60,
                   what="a healthy status line once the deaths left the window")


def test_the_prometheus_textfile_is_written_while_things_change(tmp_path: Path) -> None:
    textfile = tmp_path / "procpoold.prom"
    config = f'[metrics]\ntextfile = "{textfile}"\ninterval = 1\n\n[queues]\nio = 3\n'
    with daemon_with(config) as d, d.client() as client:
        fams = families(wait_until(lambda: textfile.read_text() if textfile.exists() else "",
                                   what="the first textfile"))
        assert sample(fams, "procpoold_health") == 0.0
        assert sample(fams, "procpoold_tasks", "_total", outcome="completed") == 0.0
        client.submit(job("p", *[call("ok", name=f"w{i}") for i in range(5)]), wait=60)
        client.submit(job("x", call("fail", name="x")), wait=60)
        text = wait_until(lambda: textfile.read_text(),
                          lambda t: 'procpoold_tasks_total{outcome="completed"} 5.0' in t
                          and 'procpoold_tasks_total{outcome="failed"} 1.0' in t,
                          what="the textfile with the job's tasks")
        fams = families(text)
        assert sample(fams, "procpoold_tasks", "_total", outcome="failed") == 1.0
        assert sample(fams, "procpoold_task_duration_seconds", "_count", name="w*") == 5.0
        assert sample(fams, "procpoold_task_duration_seconds", "_bucket", name="w*", le="+Inf") == 5.0
        assert sample(fams, "procpoold_queued_tasks", priority="normal") == 0.0
        assert sample(fams, "procpoold_queue_parallel", queue="io") == 3.0
        assert sample(fams, "procpoold_queue_running_tasks", queue="io") == 0.0
        assert sample(fams, "procpoold_queue_paused", queue="io") == 0.0
        assert sample(fams, "procpoold_store_bytes", part="database") > 0
        assert sum(s.value for s in fams["procpoold_worker_tasks"].samples) == 6.0
        assert fams["procpoold_worker_peak_memory_bytes"].samples
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically
        # Idle: the timer is not armed again, so the file stays as it is.
        written = textfile.stat().st_mtime_ns
        time.sleep(2.5)
        assert textfile.stat().st_mtime_ns == written
    assert not textfile.exists()  # removed at the stop: its numbers would go stale


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_the_prometheus_http_endpoint(tmp_path: Path, where: str) -> None:
    sock = tmp_path / "metrics.sock"
    listen = f"127.0.0.1:{free_port()}" if where == "tcp" else f"unix:{sock}"
    with daemon_with("[metrics]\ninterval = 1\n", "--metrics-listen", listen) as d, d.client() as client:
        client.submit(job("h", call("ok", name="one")), wait=60)

        def scrape() -> str:
            if where == "tcp":
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as reply:
                    return str(reply.read().decode())
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(sock))
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200"), head
            return body.decode()

        text = wait_until(scrape, lambda t: 'procpoold_tasks_total{outcome="completed"} 1.0' in t,
                          what="the endpoint with the task")
        fams = families(text)
        assert sample(fams, "procpoold_running_tasks") == 0.0
        assert sample(fams, "procpoold_task_duration_seconds", "_count", name="one") == 1.0
        if where == "unix":
            assert (sock.stat().st_mode & 0o777) == 0o600
    assert not sock.exists()


@pytest.mark.parametrize("problem", ["folder", "address"])
def test_an_export_that_cannot_work_stops_the_start(tmp_path: Path, problem: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if problem == "folder":
            args = ["--metrics-textfile", str(tmp_path / "missing" / "procpoold.prom")]
            said = "metrics_textfile: cannot write in"
        else:
            args = ["--metrics-listen", f"127.0.0.1:{taken.getsockname()[1]}"]
            said = "Address already in use"
        proc = DaemonProcess(extra_args=["--workers", "1", *args])
        try:
            proc.start(wait_ready=False)
            assert proc.wait() != 0
            assert "cannot start" in proc.log() and said in proc.log()
            proc.stop(check=True)  # (nothing left behind)
        finally:
            proc.cleanup()

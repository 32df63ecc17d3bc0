"""The opt-in Prometheus export: a textfile for node_exporter's textfile collector and/or an HTTP
endpoint on a loopback address or a Unix socket, written with ``prometheus_client`` (imported only
when the export is on: ``pip install 'procpool[metrics]'``).

The metrics are read on the loop thread (:func:`procpoold.metrics_report.report`), at most every
``metrics_interval`` seconds and only while something changes: an ended task or an arriving submit
arms a timer (:meth:`PrometheusExport.changed`); its tick renders the families once, replaces the
textfile atomically (a temporary file in the same folder, then ``rename``), and hands the same
families to the HTTP endpoint's thread, which serves them as they are (it never reads the daemon's
state). An idle daemon arms no timer and so uses no CPU for the export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procpoold import metrics_report

if TYPE_CHECKING:
    from procpoold.loop import EventLoop, Timer
    from procpoold.supervisor import Daemon

log = logging.getLogger("procpoold.metrics")

PREFIX = "procpoold"


class PrometheusExport:
    """The textfile and/or HTTP endpoint of one daemon (see the module docstring)."""

    def __init__(self, daemon: Daemon, textfile: Path | None, listen: str | None, interval: float) -> None:
        self.daemon = daemon
        self.textfile = textfile
        self.listen = listen
        self.interval = interval
        self._loop: EventLoop | None = None
        self._timer: Timer | None = None
        #: the families of the last render, served as they are by the HTTP thread
        self._families: list[Any] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._unix_path: str | None = None
        #: renders so far (tests and the docs' claim that an idle daemon renders nothing)
        self.renders = 0

    def start(self, loop: EventLoop) -> None:
        """Import prometheus_client and open the endpoint (the first render comes with readiness:
        :meth:`render_now`)."""
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the Prometheus export (metrics_textfile, metrics_listen) needs the prometheus_client "
                "package: pip install 'procpool[metrics]'") from None
        if self.textfile is not None and not os.access(self.textfile.parent, os.W_OK | os.X_OK):
            raise RuntimeError(f"metrics_textfile: cannot write in {self.textfile.parent} "
                               "(it must be an existing folder the daemon may write in)")
        self._loop = loop
        if self.listen is not None:
            self._serve(self.listen)

    def changed(self) -> None:
        """Something the metrics show changed: render at the next tick (one timer at a time)."""
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def render_now(self) -> None:
        """Render and write now (the daemon is ready: its workers have started)."""
        if self._timer is not None:
            self._timer.cancel()
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        try:
            self._render()
        except Exception:  # the export must never stop the daemon
            log.exception("the Prometheus metrics could not be written")

    def _render(self) -> None:
        from prometheus_client import CollectorRegistry, generate_latest

        self._families = list(families(self.daemon))
        self.renders += 1
        if self.textfile is None:
            return
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self._families))
        write_atomically(self.textfile, generate_latest(registry))

    def _serve(self, listen: str) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Served(self))
        app = make_wsgi_app(registry)
        if listen.startswith("unix:"):
            server = _unix_server(listen[len("unix:"):], app)
            self._unix_path = listen[len("unix:"):]
        else:
            from prometheus_client import start_wsgi_server

            host, _, port = listen.rpartition(":")
            server, thread = start_wsgi_server(int(port), addr=host.strip("[]"), registry=registry)
            self._server, self._thread = server, thread
            return
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="procpoold-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the timer and the endpoint; remove the textfile (its metrics would go stale)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
        if self.textfile is not None:
            with contextlib.suppress(OSError):
                self.textfile.unlink()


class _Fixed:
    """A collector of families made beforehand."""

    def __init__(self, fams: list[Any]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Any]:
        return iter(self.fams)


class _Served:
    """The HTTP thread's collector: the families of the export's last render (one reference read)."""

    def __init__(self, export: PrometheusExport) -> None:
        self.export = export

    def collect(self) -> Iterator[Any]:
        return iter(self.export._families)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unix_server(path: str, app: Any) -> Any:
    """A threading WSGI server on a Unix socket at ``path`` (mode 0600; a stale socket is replaced)."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    from prometheus_client.exposition import ThreadingWSGIServer

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class UnixServer(ThreadingWSGIServer):
        address_family = socket.AF_UNIX

        def server_bind(self) -> None:
            old = os.umask(0o177)
            try:
                self.socket.bind(self.server_address)
            finally:
                os.umask(old)
            self.server_name, self.server_port = "localhost", 0
            self.setup_environ()

        def get_request(self) -> tuple[socket.socket, Any]:
            conn, _ = self.socket.accept()
            return conn, ("unix", 0)

    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    address: Any = path  # (an AF_UNIX address: typeshed knows only the inet ones)
    server: WSGIServer = UnixServer(address, Handler)
    server.set_app(app)
    return server


def families(daemon: Daemon) -> Iterator[Any]:
    """The daemon's metrics as Prometheus families (names under ``procpoold_``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    data = metrics_report.report(daemon)
    tasks = data["tasks"]
    g = GaugeMetricFamily(f"{PREFIX}_start_time_seconds",
                          "When the daemon started (seconds since the epoch).")
    g.add_metric([], data["started_at"])
    yield g
    c = CounterMetricFamily(f"{PREFIX}_tasks", "Tasks that reached a final state, by outcome.",
                            labels=["outcome"])
    for outcome in ("completed", "failed", "timeout", "cancelled", "skipped"):
        c.add_metric([outcome], tasks[outcome])
    yield c
    recent = data["recent"]
    if recent["success_rate"] is not None:
        g = GaugeMetricFamily(f"{PREFIX}_recent_success_ratio",
                              "Completed over completed, failed and timed out, of the last tasks.")
        g.add_metric([], recent["success_rate"])
        yield g
    h = HistogramMetricFamily(f"{PREFIX}_task_duration_seconds",
                              "Run time of tasks' last attempts, by task name (bounded).", labels=["name"])
    metrics = daemon.scheduler.metrics
    named = [*metrics.by_name.items()]
    if metrics.other.count:
        named.append(("(other)", metrics.other))
    for name, d in named:
        buckets = [(_le(bound), n) for bound, n in d.cumulative()]
        h.add_metric([name], buckets, d.total)
    yield h
    g = GaugeMetricFamily(f"{PREFIX}_throughput_tasks_per_second",
                          "Tasks ended per second over the last minute.")
    g.add_metric([], data["throughput"]["rate"])
    yield g
    g = GaugeMetricFamily(f"{PREFIX}_queued_tasks", "Tasks waiting in the ready queues, by priority.",
                          labels=["priority"])
    for priority, n in data["queue"]["by_priority"].items():
        g.add_metric([priority], n)
    yield g
    g = GaugeMetricFamily(f"{PREFIX}_running_tasks", "Attempts in flight.")
    g.add_metric([], data["running"])
    yield g
    if data["queues"]:
        fams = {
            "parallel": GaugeMetricFamily(f"{PREFIX}_queue_parallel",
                                          "Tasks of a named queue that may run at once.", labels=["queue"]),
            "running": GaugeMetricFamily(f"{PREFIX}_queue_running_tasks",
                                         "Tasks of a named queue running.", labels=["queue"]),
            "waiting": GaugeMetricFamily(f"{PREFIX}_queue_waiting_tasks",
                                         "Tasks waiting for a place in a named queue.", labels=["queue"]),
            "paused": GaugeMetricFamily(f"{PREFIX}_queue_paused", "1 while a named queue is paused.",
                                        labels=["queue"]),
        }
        for q in data["queues"]:
            for part, fam in fams.items():
                fam.add_metric([q["name"]], int(q[part] is not None) if part == "paused" else q[part])
        yield from fams.values()
    labels = ["engine", "slot", "pid"]
    done = CounterMetricFamily(f"{PREFIX}_worker_tasks", "Tasks a worker process ran.", labels=labels)
    busy = CounterMetricFamily(f"{PREFIX}_worker_busy_seconds", "Seconds a worker process ran calls.",
                               labels=labels)
    util = GaugeMetricFamily(f"{PREFIX}_worker_utilization_ratio", "Busy time over the worker's age.",
                             labels=labels)
    rss = GaugeMetricFamily(f"{PREFIX}_worker_memory_bytes", "Resident memory of a worker process.",
                            labels=labels)
    peak = GaugeMetricFamily(f"{PREFIX}_worker_peak_memory_bytes",
                             "Largest resident memory of a worker process.", labels=labels)
    for w in data["workers"]:
        key = [str(w["engine"]), "" if w["slot"] is None else str(w["slot"]),
               "" if w["pid"] is None else str(w["pid"])]
        if w["tasks_done"] is not None:
            done.add_metric(key, w["tasks_done"])
        if w["busy_time"] is not None:
            busy.add_metric(key, w["busy_time"])
        if w["utilization"] is not None:
            util.add_metric(key, w["utilization"])
        if w["rss"] is not None:
            rss.add_metric(key, w["rss"])
        if w["peak_rss"] is not None:
            peak.add_metric(key, w["peak_rss"])
    yield from (done, busy, util, rss, peak)
    c = CounterMetricFamily(f"{PREFIX}_log_records_dropped",
                            "Log records dropped (log_policy drop, stalls).")
    c.add_metric([], data["logging"]["dropped"])
    yield c
    if data["store"] is not None:
        g = GaugeMetricFamily(f"{PREFIX}_store_bytes", "Bytes of the state store, by part.", labels=["part"])
        for part in ("database", "wal", "log", "values"):
            g.add_metric([part], data["store"][part])
        yield g
    g = GaugeMetricFamily(f"{PREFIX}_health", "0 healthy, 1 degraded, 2 unhealthy (procctl health).")
    g.add_metric([], data["health"]["level"])
    yield g


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)

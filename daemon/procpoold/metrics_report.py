"""The daemon's metrics (the ``metrics`` operation) and its health verdict, one definition of each.

Runs on the loop thread, on request (``procctl metrics``, ``procctl health``, ``status``), at the
systemd watchdog's ticks and at the Prometheus export's: nothing here runs per task (the per-task
accounting is :class:`procpoold.metrics.TaskMetrics`, kept by the scheduler).

Health (``procctl health``, systemd's status line): ``healthy``, ``degraded`` or ``unhealthy``
with one sentence per reason.

- unhealthy: an engine is down; the log target has stalled; the state file cannot be written;
  workers are crash-looping (as many deaths in the pool's death window as start its respawn
  backoff);
- degraded: log records were dropped; the pool has fewer live workers than its size; more tasks
  queued than ``health_max_queued``; a success rate under ``health_min_success_rate`` over the last
  ``health_success_window`` tasks (judged once that many have ended); the daemon is paused
  (``procctl pause --all``: nothing new starts until ``procctl resume --all``), or a named queue is
  (``procctl pause --queue``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procpool.contract.tree import PRIORITIES
from procpoold.pool.lifecycle import DEATH_WINDOW

if TYPE_CHECKING:
    from procpoold.supervisor import Daemon

VERDICTS = ("healthy", "degraded", "unhealthy")
HEALTHY, DEGRADED, UNHEALTHY = 0, 1, 2


def health(daemon: Daemon) -> dict[str, Any]:
    """The daemon's verdict: ``{"health": name, "level": 0..2, "reasons": [...]}``."""
    level, reasons = HEALTHY, []

    def add(at: int, reason: str) -> None:
        nonlocal level
        level = max(level, at)
        reasons.append(reason)

    config = daemon.config
    alive = 0
    pool_engines = 0
    for engine in daemon.engines.all():
        state = engine.health()
        if not state.up:
            add(UNHEALTHY, f"the engine {engine.name} is down: {state.reason or 'no reason given'}")
        if state.workers:
            pool_engines += 1
            alive += sum(state.workers.get(s, 0) for s in ("idle", "busy", "starting"))
            info = engine.info()
            deaths, burst = info.get("recent_deaths", 0), info.get("crash_loop_deaths")
            if burst and deaths >= burst:
                add(UNHEALTHY, f"workers of the engine {engine.name} are crash-looping "
                               f"({deaths} died in the last {DEATH_WINDOW:g} s)")
    if pool_engines and alive < config.workers * pool_engines and daemon.stop_reason is None:
        add(DEGRADED, f"the pool has {alive} live worker(s) of {config.workers}")
    sink = daemon.sink
    logging = sink.stats() if sink is not None else {}
    if logging.get("stalled"):
        add(UNHEALTHY, f"the log target has accepted no record for {logging.get('stalled_for') or 0:.1f} s")
    if logging.get("dropped"):
        add(DEGRADED, f"{logging['dropped']} log record(s) dropped")
    store_error = daemon.store_failure or (daemon.store.failed if daemon.store is not None else None)
    if store_error:
        add(UNHEALTHY, f"the state file cannot be written: {store_error}")
    paused = daemon.scheduler.paused
    if paused is not None:
        add(DEGRADED, f"the daemon is paused (by {paused.get('by')} at "
                      f"{time.strftime('%H:%M:%S', time.localtime(paused['at']))}): nothing new starts "
                      "until procctl resume --all")
    for name, record in sorted(daemon.scheduler.gates.queue_paused.items()):
        add(DEGRADED, f"the queue {name} is paused (by {record.get('by')} at "
                      f"{time.strftime('%H:%M:%S', time.localtime(record['at']))}): nothing new of it "
                      f"starts until procctl resume --queue {name}")
    queued = daemon.scheduler.queued()
    if config.health_max_queued and queued > config.health_max_queued:
        add(DEGRADED, f"{queued} tasks queued, more than health_max_queued ({config.health_max_queued})")
    recent = daemon.scheduler.metrics.recent
    rate = recent.rate()
    if rate is not None and recent.filled >= recent.size and rate < config.health_min_success_rate:
        add(DEGRADED, f"{rate:.0%} of the last {recent.size} tasks succeeded, under health_min_success_rate "
                      f"({config.health_min_success_rate:.0%})")
    return {"health": VERDICTS[level], "level": level, "reasons": reasons}


def queue_by_priority(daemon: Daemon) -> dict[str, int]:
    """Tasks queued per priority (every priority named); O(queued), on request only."""
    out = dict.fromkeys(PRIORITIES, 0)
    jobs = daemon.scheduler.jobs
    for queue in daemon.scheduler.queues.values():
        for job_id, index in queue:
            job = jobs.get(job_id)
            if job is not None:
                priority = job.tasks[index].spec.priority
                out[priority] = out.get(priority, 0) + 1
    return out


def store_size(state_dir: Path) -> dict[str, int]:
    """Bytes of the state store: the database, its WAL (``-wal``, ``-shm``), the state log's
    segments and the files of large values."""
    out = {"database": 0, "wal": 0, "log": 0, "values": 0}
    try:
        entries = list(os.scandir(state_dir))
    except OSError:
        return {**out, "total": 0}
    for entry in entries:
        name = entry.name
        try:
            if name == "state.db":
                out["database"] += entry.stat().st_size
            elif name in ("state.db-wal", "state.db-shm"):
                out["wal"] += entry.stat().st_size
            elif name.startswith("state.log."):
                out["log"] += entry.stat().st_size
            elif name == "state-values" and entry.is_dir(follow_symlinks=False):
                for root, _dirs, files in os.walk(entry.path):
                    for f in files:
                        out["values"] += os.stat(os.path.join(root, f), follow_symlinks=False).st_size
        except OSError:
            continue  # (a file removed meanwhile)
    return {**out, "total": sum(out.values())}


def workers(daemon: Daemon) -> list[dict[str, Any]]:
    """Per worker process: tasks done, busy time, utilization (busy time over its age), memory."""
    out = []
    for engine in daemon.engines.all():
        for w in engine.workers():
            age = w.get("age") or 0.0
            busy = w.get("busy_time")
            out.append({
                "engine": engine.name,
                "slot": w.get("slot"),
                "pid": w.get("pid"),
                "state": w.get("state"),
                "tasks_done": w.get("tasks_done"),  # (None: an engine that does not count them)
                "busy_time": busy,
                "age": age,
                "utilization": min(1.0, busy / age) if busy is not None and age > 0 else None,
                "rss": w.get("rss"),
                "peak_rss": w.get("peak_rss"),
            })
    return out


def report(daemon: Daemon) -> dict[str, Any]:
    """The reply of the ``metrics`` operation (docs/protocol.md, metrics)."""
    now = time.time()
    scheduler = daemon.scheduler
    by_priority = queue_by_priority(daemon)
    sink = daemon.sink
    return {
        "uptime": daemon.uptime(),
        "started_at": daemon.started_at,
        **scheduler.metrics.snapshot(now),
        "queue": {"total": sum(by_priority.values()), "by_priority": by_priority},
        "running": scheduler.running(),
        "queues": daemon.queue_info()["queues"],
        "workers": workers(daemon),
        "logging": {"dropped": sink.stats()["dropped"] if sink is not None else 0},
        "store": store_size(daemon.config.state_dir) if daemon.store is not None else None,
        "health": health(daemon),
    }

"""``procctl pool`` and ``procctl pool resize N``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from procpool.cli.main import Settings, cli, emit, fail, pass_settings
from procpool.cli.render import duration
from procpool.contract.limits import WORKERS_MAX
from procpool.contract.ops import POOL_RESIZE_HINT
from procpool.contract.words import plural


def _mib(value: Any) -> str:
    return f"{value / 1048576:.1f}M" if isinstance(value, (int, float)) else "-"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def remote_table(workers: list[dict[str, Any]]) -> str:
    """Workers of a remote engine (a Dask cluster's), which have no slot of this daemon's pool."""
    rows = [("ENGINE", "WORKER", "HOST", "THREADS", "STATE", "ATTEMPTS")]
    for w in workers:
        rows.append((str(w.get("engine", "-")), str(w.get("worker", "-")), str(w.get("host") or "-"),
                     str(w.get("threads", "-")), str(w.get("state", "-")), str(w.get("busy", 0))))
    return _table(rows)


def pool_table(data: dict[str, Any]) -> str:
    rows = [("SLOT", "PID", "USER", "STATE", "TASK", "DONE", "RSS", "USS", "AGE")]
    remote = [w for w in data["workers"] if "slot" not in w]
    for w in data["workers"]:
        if "slot" not in w:
            continue
        tasks = ", ".join(a["task_name"] for a in w.get("attempts", [])) or "-"
        rows.append(
            (
                str(w["slot"]),
                str(w["pid"]),
                str(w.get("user") or w.get("uid") or "-"),
                w["state"] + (" (retiring)" if w.get("retiring") else "")
                + (" (waiting for the log)" if w.get("log_paused") else ""),
                tasks,
                str(w.get("tasks_done", 0)),
                _mib(w.get("rss")),
                _mib(w.get("uss")),
                duration(w.get("age")),
            )
        )
    if len(rows) == 1 and not remote:
        return "no workers"
    parts = []
    if len(rows) > 1:
        parts.append(_table(rows))
        summary = pool_summary(data.get("info") or {})
        if summary:
            parts.append(summary)
    if remote:
        parts.append(remote_table(remote))
    if data.get("queues"):
        parts.append(queue_table(data["queues"]))
    return "\n\n".join(parts)


def queue_table(queues: list[dict[str, Any]]) -> str:
    """The named queues: parallelism, tasks running and waiting for a place, pause."""
    if not queues:
        return "no named queues (the daemon's config [queues], or procctl queue set NAME --parallel N)"
    rows = [("QUEUE", "PARALLEL", "RUNNING", "WAITING", "STATE", "SET BY")]
    for q in queues:
        paused = q.get("paused")
        state = f"paused by {paused.get('by', '?')}" if isinstance(paused, dict) else "open"
        rows.append((str(q.get("name")), str(q.get("parallel", "-")), str(q.get("running", 0)),
                     str(q.get("waiting", 0)), state,
                     {"set": "procctl queue set", "config": "config"}.get(str(q.get("source")), "-")))
    return _table(rows)


def micros(us: float) -> str:
    """A duration given in microseconds, in the unit that reads best: ``13.5 us``, ``2.25 ms``,
    ``4.73 s`` (three significant digits, not ``4.73122e+06 us``)."""
    value, unit = us, "us"
    for name, scale in (("s", 1e6), ("ms", 1e3)):
        if abs(us) >= scale * 0.9995:  # what would print as 1000 of the smaller unit
            value, unit = us / scale, name
            break
    text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def pool_summary(info: dict[str, Any]) -> str:
    """The pool's counters, and its round trip when it has measured some."""
    counters = ("dispatched", "completed", "failed", "deaths", "recycled")
    if not all(isinstance(info.get(k), int) for k in counters):
        return ""
    text = ", ".join(f"{k} {info[k]:,}" for k in counters)
    for key, what in (("round_trip", "to an awake worker"), ("round_trip_woken", "with a wakeup")):
        rt = info.get(key) or {}
        if rt.get("samples"):
            text += (f"\nround trip {what}: p50 {micros(rt['p50_us'])}, p99 {micros(rt['p99_us'])}"
                     f" ({plural(rt['samples'], 'attempt')})")
    return text


@cli.group(invoke_without_command=True)
@click.pass_context
def pool(ctx: click.Context) -> None:
    """Show the worker pool (pid, state, current task, tasks done, memory).

    \b
      procctl pool                                 the workers and the pool's counters
      procctl pool resize 8                        eight workers from now on
    """
    if ctx.invoked_subcommand is None:
        settings = ctx.find_object(Settings)
        assert settings is not None
        with settings.client() as client:
            data = client.pool()
        emit(settings, data, lambda: pool_table(data))


@cli.group(invoke_without_command=True)
@click.pass_context
def queue(ctx: click.Context) -> None:
    """Show the named queues: each one's parallelism, its tasks running and waiting, its pause.

    A task runs in a queue named by its "queue" (or its group's, or its job's); at most the
    queue's parallelism of its tasks run at once, across every job.

    \b
      procctl queue                                every queue
      procctl queue set io --parallel 4            four tasks of queue io at once from now on
      procctl pause --queue io                     nothing new of queue io starts
    """
    if ctx.invoked_subcommand is None:
        settings = ctx.find_object(Settings)
        assert settings is not None
        with settings.client() as client:
            queues = client.queues()
        emit(settings, {"queues": queues}, lambda: queue_table(queues))


@queue.command("set")
@click.argument("name")
@click.option("--parallel", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many of the queue's tasks may run at once.")
@pass_settings
def queue_set(settings: Settings, name: str, parallel: int) -> None:
    """Make a named queue, or change its parallelism, at run time (administrators only). The
    value is kept across restarts and wins over the config's [queues].

    \b
      procctl queue set io --parallel 4
    """
    with settings.client() as client:
        result = client.queue_set(name, parallel)
    was = result.get("was")
    before = f" (was {was})" if was is not None else " (a new queue)"
    emit(settings, result, f"queue {name}: {plural(parallel, 'task')} at once{before}")


@pool.command()
@click.argument("workers", type=click.IntRange(0, WORKERS_MAX))
@pass_settings
def resize(settings: Settings, workers: int) -> None:
    """Change the number of workers at run time (running work is not dropped); at least 1.

    \b
      procctl pool resize 4
    """
    if workers < 1:  # the daemon refuses it too: a pool of 0 workers would leave all work waiting
        fail("a pool of 0 workers would start no task (run --wait and wait would hang)", POOL_RESIZE_HINT)
    with settings.client() as client:
        client.pool_resize(workers)
    emit(settings, {"workers": workers}, f"pool resized to {workers} workers")

"""``procctl metrics``: what the daemon has done since it started, and how its workers are used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procpool.cli.main import Settings, cli, emit, pass_settings
from procpool.cli.render import queue_words
from procpool.contract.states import CANCELLED, FAILED, RUNNING, SKIPPED


def _size(value: Any) -> str:
    """Bytes as ``512B``, ``12.3K``, ``4.5M``, ``1.2G``; ``-`` when unknown."""
    if not isinstance(value, (int, float)):
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"  # pragma: no cover - the loop always returns


def _seconds(value: Any) -> str:
    from procpool.cli.render import duration

    return duration(value) if isinstance(value, (int, float)) else "-"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "-"


def _tasks(n: int) -> str:
    return f"{n} task{'' if n == 1 else 's'}"


def _table(rows: Sequence[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def metrics_text(m: dict[str, Any]) -> str:
    """The human form of a ``metrics`` reply."""
    tasks, recent, tp, queue = m["tasks"], m["recent"], m["throughput"], m["queue"]
    health = m.get("health") or {}
    by_priority = ", ".join(f"{p} {n}" for p, n in queue["by_priority"].items() if n) or "none"
    lines = [
        f"health        {health.get('health', '-')}"
        + "".join(f"\n                {reason}" for reason in health.get("reasons", [])),
        f"uptime        {_seconds(m['uptime'])}",
        f"tasks         {tasks['processed']} processed: {tasks['succeeded']} succeeded, "
        f"{tasks[FAILED]} failed, {tasks['timed_out']} timed out, {tasks[CANCELLED]} cancelled "
        f"({tasks[SKIPPED]} skipped)",
        f"success rate  {_percent(tasks['success_rate'])} "
        f"(the last {_tasks(recent['tasks'])}: {_percent(recent['success_rate'])})",
        f"throughput    {tp['rate']:.2f}/s over the last minute ({_tasks(tp['last_minute'])})",
        f"queue         {queue['total']} queued ({by_priority}); {m[RUNNING]} running",
        *([f"queues        {'; '.join(queue_words(q) for q in m['queues'])}"] if m.get("queues") else []),
        f"log records   {m['logging']['dropped']} dropped",
    ]
    store = m.get("store")
    if store is not None:
        parts = ", ".join(f"{part} {_size(store[key])}" for part, key in
                          (("database", "database"), ("WAL", "wal"), ("log", "log"), ("values", "values")))
        lines.append(f"store         {_size(store['total'])} ({parts})")
    if m["durations"]:
        rows: list[tuple[str, ...]] = [("TASK", "COUNT", "MEAN", "P95", "MAX")]
        for name, d in sorted(m["durations"].items(), key=lambda kv: -kv[1]["count"]):
            rows.append((name, str(d["count"]), _seconds(d["mean"]), _seconds(d["p95"]), _seconds(d["max"])))
        lines += ["", *_table(rows)]
    if m["workers"]:
        rows = [("ENGINE", "SLOT", "PID", "STATE", "TASKS", "BUSY", "UTIL", "RSS", "PEAK")]
        for w in m["workers"]:
            rows.append((str(w["engine"]), str(w["slot"] if w["slot"] is not None else "-"),
                         str(w["pid"] or "-"), str(w["state"] or "-"),
                         "-" if w["tasks_done"] is None else str(w["tasks_done"]),
                         _seconds(w["busy_time"]), _percent(w["utilization"]), _size(w["rss"]),
                         _size(w["peak_rss"])))
        lines += ["", *_table(rows)]
    return "\n".join(lines)


@cli.command()
@pass_settings
def metrics(settings: Settings) -> None:
    """Show what the daemon did since it started and how busy it is.

    Uptime; tasks processed, succeeded, failed, timed out and cancelled; the
    success rate (completed over completed, failed and timed out) overall and
    over the last tasks; mean and p95 run time per task name (the first 100
    names, later ones counted as "(other)"); throughput over the last minute;
    queued tasks by priority; running tasks; per worker its tasks, busy time,
    utilization and memory (current and peak); dropped log records; the state
    store's size; and the health verdict.

    \b
    Examples:
      procctl metrics
      procctl --json metrics
    """
    with settings.client() as client:
        data = client.metrics()
    emit(settings, data, lambda: metrics_text(data))

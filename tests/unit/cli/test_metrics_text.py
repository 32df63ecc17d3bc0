"""``procctl metrics``'s text from a daemon's reply (the command itself runs against a real daemon in
tests/integration/test_metrics.py)."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.cli.metrics import metrics_text

pytestmark = pytest.mark.unit


def reply(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uptime": 7384.0, "started_at": 0.0,
        "tasks": {"processed": 6, "succeeded": 4, "completed": 4, "failed": 1, "timeout": 1, "timed_out": 1,
                  "cancelled": 0, "skipped": 2, "success_rate": 4 / 6},
        "recent": {"size": 100, "tasks": 1, "success_rate": 1.0},
        "durations": {"root.*": {"count": 4, "mean": 0.012, "p95": 0.031, "max": 1.2, "total": 0.05},
                      "extract": {"count": 2, "mean": 2.3, "p95": 4.1, "max": 9.8, "total": 4.6}},
        "throughput": {"seconds": 60, "per_second": [0] * 59 + [1], "last_minute": 1, "rate": 1 / 60},
        "queue": {"total": 3, "by_priority": {"critical": 0, "high": 1, "normal": 2, "low": 0, "batch": 0}},
        "running": 2,
        "workers": [{"engine": "pool", "slot": 0, "pid": 41, "state": "busy", "tasks_done": 6,
                     "busy_time": 61.0, "age": 122.0, "utilization": 0.5, "rss": 43_000_000,
                     "peak_rss": 92_000_000},
                    {"engine": "dask", "slot": None, "pid": None, "state": None, "tasks_done": None,
                     "busy_time": None, "age": 0.0, "utilization": None, "rss": None, "peak_rss": None}],
        "logging": {"dropped": 0},
        "store": {"database": 2_500_000, "wal": 600_000, "log": 98_000, "values": 0, "total": 3_198_000},
        "health": {"health": "degraded", "level": 1,
                   "reasons": ["3 tasks queued, more than health_max_queued (2)"]},
    }
    data.update(changes)
    return data


def test_the_text_has_a_line_per_figure_and_tables_of_names_and_workers() -> None:
    lines = metrics_text(reply()).splitlines()
    assert lines[:2] == ["health        degraded",
                         "                3 tasks queued, more than health_max_queued (2)"]
    assert "uptime        2h03m" in lines
    assert "tasks         6 processed: 4 succeeded, 1 failed, 1 timed out, 0 cancelled (2 skipped)" in lines
    assert "success rate  66.7% (the last 1 task: 100.0%)" in lines
    assert "throughput    0.02/s over the last minute (1 task)" in lines
    assert "queue         3 queued (high 1, normal 2); 2 running" in lines
    assert "store         3.0M (database 2.4M, WAL 585.9K, log 95.7K, values 0B)" in lines
    names = lines[lines.index("") + 1:]
    assert names[0].split() == ["TASK", "COUNT", "MEAN", "P95", "MAX"]
    assert names[1].split() == ["root.*", "4", "12ms", "31ms", "1.2s"]  # the most counted first
    workers = lines[len(lines) - 3:]
    assert workers[1].split() == ["pool", "0", "41", "busy", "6", "1m01s", "50.0%", "41.0M", "87.7M"]
    assert workers[2].split() == ["dask", "-", "-", "-", "-", "-", "-", "-", "-"]


def test_no_store_no_durations_and_no_workers_leave_their_parts_out() -> None:
    text = metrics_text(reply(store=None, durations={}, workers=[],
                              health={"health": "healthy", "level": 0, "reasons": []}))
    assert "store" not in text and "TASK" not in text and "ENGINE" not in text
    assert text.splitlines()[0] == "health        healthy"

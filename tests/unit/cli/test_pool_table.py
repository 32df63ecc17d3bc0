"""What `procctl pool` prints for the daemon's `pool` answer (no daemon needed)."""

from __future__ import annotations

import pytest

from procpool.cli.pool import pool_table

pytestmark = pytest.mark.unit


def worker(slot: int, **extra: object) -> dict[str, object]:
    return {"slot": slot, "pid": 4710 + slot, "state": "busy", "attempts": [{"task_name": "resize"}],
            "tasks_done": 12, "age": 65.0, "uid": 1000, "user": "ann", "rss": 30 * 2**20,
            "uss": 5 * 2**20, **extra}


def test_workers_counters_and_round_trips() -> None:
    info = {"dispatched": 1200, "completed": 1190, "failed": 3, "deaths": 1, "recycled": 0,
            "round_trip": {"samples": 208, "p50_us": 13.5, "p99_us": 50.0},
            "round_trip_woken": {"samples": 0, "p50_us": None, "p99_us": None}}
    text = pool_table({"workers": [worker(0), worker(1, log_paused=True, retiring=True)], "info": info})
    header, first, second, blank, counters, trip = text.splitlines()
    assert header.split() == ["SLOT", "PID", "USER", "STATE", "TASK", "DONE", "RSS", "USS", "AGE"]
    assert first.split()[:6] == ["0", "4710", "ann", "busy", "resize", "12"] and "30.0M" in first
    assert "busy (retiring) (waiting for the log)" in second and blank == ""
    assert counters == "dispatched 1,200, completed 1,190, failed 3, deaths 1, recycled 0"
    assert trip == "round trip to an awake worker: p50 13.5 us, p99 50 us (208 attempts)"


def test_no_workers() -> None:
    assert pool_table({"workers": [], "info": {}}) == "no workers"

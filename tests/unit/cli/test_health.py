"""``procctl health``'s verdict from the daemon's summary (the command itself runs against a real
daemon in tests/integration/test_dask_engine.py, with its engine down and up again)."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.cli.render import HEALTH_VERDICTS, health, summary

pytestmark = pytest.mark.unit


def daemon(engines: dict[str, Any], logging: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": "0", "pid": 1, "uptime": 1.0, "workers": {"configured": 2, "engines": engines},
            "jobs": {}, "logging": logging or {"target": "journald", "policy": "block"}}


UP = {"up": True, "reason": None, "busy": 0}


def test_all_engines_up_and_nothing_dropped_is_healthy() -> None:
    assert health(daemon({"pool": UP, "commands": UP})) == (0, [])
    assert HEALTH_VERDICTS[0] == "healthy"


def test_an_engine_down_is_unhealthy_and_says_why() -> None:
    data = daemon({"pool": UP, "dask": {"up": False, "reason": "cannot reach tcp://h:8786", "busy": 0}},
                  {"target": "journald", "policy": "drop", "dropped": 3})
    level, reasons = health(data)
    assert HEALTH_VERDICTS[level] == "unhealthy"
    assert reasons == ["the engine dask is down: cannot reach tcp://h:8786", "3 log record(s) dropped"]
    assert "dask DOWN: cannot reach tcp://h:8786" in summary(data)


def test_dropped_records_degrade_and_a_stalled_log_target_is_unhealthy() -> None:
    assert health(daemon({"pool": UP}, {"dropped": 1}))[0] == 1
    assert health(daemon({"pool": UP}, {"stalled": True, "stalled_for": 12.0}))[0] == 2


def test_the_summary_names_engines_only_beyond_the_local_ones() -> None:
    assert "engines" not in summary(daemon({"pool": UP, "commands": UP}))
    assert "dask up (0 running)" in summary(daemon({"pool": UP, "commands": UP, "dask": UP}))

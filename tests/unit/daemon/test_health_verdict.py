"""The daemon's health verdict (procpoold.metrics_report.health) on a stand-in daemon, each reason
alone, and the [health] and [metrics] settings. A real daemon's verdicts are in
tests/integration/test_metrics.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from procpoold.config import Config, ConfigError, load
from procpoold.engines import Health
from procpoold.metrics import TaskMetrics
from procpoold.metrics_report import health

pytestmark = pytest.mark.unit


class Engine:
    def __init__(self, name: str, health: Health, info: dict[str, Any] | None = None) -> None:
        self.name, self._health, self._info = name, health, info or {}

    def health(self) -> Health:
        return self._health

    def info(self) -> dict[str, Any]:
        return self._info


def pool(idle: int = 2, busy: int = 0, deaths: int = 0, **states: int) -> Engine:
    return Engine("pool", Health(workers={"idle": idle, "busy": busy, **states}),
                  {"recent_deaths": deaths, "crash_loop_deaths": 3})


def daemon(*engines: Engine, queued: int = 0, logging: dict[str, Any] | None = None,
           config: Config | None = None, metrics: TaskMetrics | None = None,
           store_failure: str | None = None, paused: dict[str, Any] | None = None,
           queues_paused: dict[str, Any] | None = None) -> Any:
    config = config or replace(Config(), workers=2)
    return SimpleNamespace(
        config=config,
        engines=SimpleNamespace(all=lambda: list(engines or (pool(),))),
        sink=SimpleNamespace(stats=lambda: logging or {"dropped": 0}),
        store=None,
        store_failure=store_failure,
        stop_reason=None,
        scheduler=SimpleNamespace(
            queued=lambda: queued, metrics=metrics or TaskMetrics(config.health_success_window),
            paused=paused, gates=SimpleNamespace(queue_paused=queues_paused or {})),
    )


def test_a_full_pool_with_nothing_wrong_is_healthy() -> None:
    assert health(daemon()) == {"health": "healthy", "level": 0, "reasons": []}
    assert health(daemon(pool(idle=1, starting=1)))["health"] == "healthy"  # a worker being replaced


def test_a_paused_daemon_is_degraded_and_says_who_paused_it() -> None:
    verdict = health(daemon(paused={"by": "alice (uid 1000)", "uid": 1000, "at": 0.0, "stop": False}))
    assert verdict["health"] == "degraded" and verdict["level"] == 1
    [reason] = verdict["reasons"]
    assert "paused (by alice (uid 1000)" in reason and "procctl resume --all" in reason


def test_a_paused_queue_is_degraded_and_names_the_queue() -> None:
    verdict = health(daemon(queues_paused={"io": {"by": "root (uid 0)", "uid": 0, "at": 0.0, "stop": False}}))
    assert verdict["level"] == 1
    [reason] = verdict["reasons"]
    assert "the queue io is paused (by root (uid 0)" in reason and "procctl resume --queue io" in reason


def test_the_clients_old_verdicts_are_kept() -> None:
    down = Engine("dask", Health(up=False, reason="cannot reach tcp://h:8786"))
    assert health(daemon(pool(), down)) == {"health": "unhealthy", "level": 2,
                                            "reasons": ["the engine dask is down: cannot reach tcp://h:8786"]}
    stalled = health(daemon(logging={"stalled": True, "stalled_for": 12.0, "dropped": 0}))
    assert stalled["level"] == 2
    assert stalled["reasons"] == ["the log target has accepted no record for 12.0 s"]
    dropped = health(daemon(logging={"dropped": 5}))
    assert dropped["level"] == 1 and dropped["reasons"] == ["5 log record(s) dropped"]


def test_a_pool_below_its_size_degrades_and_a_crash_loop_is_unhealthy() -> None:
    below = health(daemon(pool(idle=1, refilling=1)))
    assert below["level"] == 1 and below["reasons"] == ["the pool has 1 live worker(s) of 2"]
    looping = health(daemon(pool(idle=0, refilling=2, deaths=3)))
    assert looping["level"] == 2
    assert looping["reasons"][0].startswith(
        "workers of the engine pool are crash-looping (3 died in the last")
    assert looping["reasons"][1] == "the pool has 0 live worker(s) of 2"
    assert health(daemon(pool(deaths=2)))["level"] == 0  # deaths, but fewer than a crash loop


def test_a_queue_over_its_threshold_degrades() -> None:
    config = replace(Config(), workers=2, health_max_queued=10)
    assert health(daemon(queued=10, config=config))["level"] == 0
    over = health(daemon(queued=11, config=config))
    assert over["reasons"] == ["11 tasks queued, more than health_max_queued (10)"] and over["level"] == 1
    assert health(daemon(queued=10**6))["level"] == 0  # 0: no threshold (the default)


def test_the_success_rate_counts_once_the_window_is_full() -> None:
    config = replace(Config(), workers=2, health_min_success_rate=0.75, health_success_window=4)
    metrics = TaskMetrics(window=4)
    metrics.recent.add(False, 3)
    assert health(daemon(config=config, metrics=metrics))["level"] == 0  # 3 tasks: not judged yet
    metrics.recent.add(True)
    low = health(daemon(config=config, metrics=metrics))
    assert low["reasons"] == ["25% of the last 4 tasks succeeded, under health_min_success_rate (75%)"]
    metrics.recent.add(True, 3)
    assert health(daemon(config=config, metrics=metrics))["level"] == 0


def test_a_store_that_cannot_be_written_is_unhealthy() -> None:
    verdict = health(daemon(store_failure="database or disk is full"))
    assert verdict["level"] == 2
    assert verdict["reasons"] == ["the state file cannot be written: database or disk is full"]


def test_the_health_and_metrics_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCPOOL_SOCKET", raising=False)
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text("[procpoold]\nworkers = 2\n[health]\nmax_queued = 50\nmin_success_rate = 0.9\n"
                   "success_window = 20\n[metrics]\ntextfile = \"/var/lib/node_exporter/procpoold.prom\"\n"
                   "listen = \"127.0.0.1:9464\"\ninterval = 5\n")
    c = load(cfg, {})
    assert (c.health_max_queued, c.health_min_success_rate, c.health_success_window) == (50, 0.9, 20)
    assert (c.metrics_textfile, c.metrics_listen, c.metrics_interval) == (
        Path("/var/lib/node_exporter/procpoold.prom"), "127.0.0.1:9464", 5.0)
    flat = tmp_path / "flat.toml"
    flat.write_text("[health]\nmax_queued = 7\n")  # a file without [procpoold]
    assert load(flat, {}).health_max_queued == 7
    defaults = load(None, {})
    assert (defaults.metrics_textfile, defaults.metrics_listen) == (None, None)  # the export is off


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[health]\nmin_success_rate = 1.5", "health_min_success_rate must be between 0 and 1"),
        ("[health]\nmin_success_rate = nan", "must be a finite number"),
        ("[health]\nsuccess_window = 0", "health_success_window must be between 1 and 100000"),
        ("[health]\nmax_queued = -1", "health_max_queued must be between 0"),
        ("[health]\nbogus = 1", "unknown setting 'health_bogus'"),
        ("health = 3", "health must be a table"),
        ("[procpoold.health]\nmax_queued = 1\n[health]\nmax_queued = 2", "[health] is given twice"),
        ('[metrics]\ntextfile = "metrics.prom"', "metrics_textfile must be an absolute path ending in .prom"),
        ('[metrics]\ntextfile = "/srv/m.txt"', "metrics_textfile must be an absolute path ending in .prom"),
        ('[metrics]\nlisten = "0.0.0.0:9464"', "metrics_listen must be a loopback address"),
        ('[metrics]\nlisten = "10.1.2.3:9464"', "metrics_listen must be a loopback address"),
        ('[metrics]\nlisten = "127.0.0.1:70000"', "must have a port from 1 to 65535"),
        ('[metrics]\nlisten = "unix:relative.sock"', "must name an absolute socket path"),
        ("[metrics]\ninterval = 0.5", "metrics_interval must be between 1 and 3600 seconds"),
    ],
)
def test_bad_health_and_metrics_settings_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(cfg, {})
    assert fragment in str(info.value)


@pytest.mark.parametrize("address", ["127.0.0.1:9464", "localhost:1", "[::1]:9464", "unix:/run/p/m.sock"])
def test_loopback_and_unix_addresses_are_accepted(tmp_path: Path, address: str) -> None:
    cfg = tmp_path / "procpoold.toml"
    cfg.write_text(f'[metrics]\nlisten = "{address}"\n')
    assert load(cfg, {}).metrics_listen == address

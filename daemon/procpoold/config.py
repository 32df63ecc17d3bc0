"""Typed settings of the daemon: defaults < config file (TOML) < environment < command line.

Validated once at start; a bad value stops the daemon with a message that names
the setting and where it came from.
"""

from __future__ import annotations

import grp
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE
from procpool.contract.paths import SOCKET_ENV, default_socket, default_state_dir
from procpoold.logconfig import DEFAULT_QUEUE_SIZE, LogConfig
from procpoold.pool.slot import PoolSettings

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A setting is invalid; the message names it."""


@dataclass(frozen=True)
class Config:
    """Everything the daemon can be told. Field names are the TOML keys."""

    socket: Path = field(default_factory=default_socket)
    state_dir: Path = field(default_factory=default_state_dir)
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    group: str | None = None
    #: Members of this group are administrators (as are root and the daemon's own user): they may
    #: change anyone's jobs, stop the daemon and resize the pool. See daemon/procpoold/identity.py.
    admin_group: str | None = None
    log_level: str = "info"
    #: Where records go (auto, journal, stderr), the log queue's size and its policy (block, drop).
    log_target: str = "auto"
    log_queue_size: int = DEFAULT_QUEUE_SIZE
    log_policy: str = "block"
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Seconds a graceful stop waits for running attempts before stopping them.
    drain_timeout: float = 30.0
    #: Where a timed-out or cancelled attempt's process gets SIGKILL after SIGTERM (seconds).
    kill_grace: float = 5.0
    #: Seconds of waiting that are worth one priority level (see core/queue.py: no starvation).
    priority_aging: float = 30.0
    #: Finished jobs are kept this many seconds (0: forever) and at most this many (0: no limit).
    retention_age: float = 7 * 86400.0
    retention_count: int = 10_000
    #: "normal": commits survive a daemon crash; "full": they also survive power loss (fsync each).
    sync: str = "normal"
    #: false: keep jobs in memory only (nothing survives a restart; for benchmarks and throwaway daemons).
    store: bool = True
    #: Worker pool: async attempts per worker, recycling limits (0: no limit), hang detection.
    async_per_worker: int = 8
    max_tasks_per_worker: int = 0
    max_memory_per_worker: int = 0  # bytes of RSS
    max_worker_age: float = 0.0
    heartbeat_timeout: float = 30.0
    #: Short sync attempts queued on a busy worker at most (1: none; see docs/pool.md, Prefetch).
    prefetch: int = PoolSettings.prefetch
    #: Largest result a `call` task may return (bytes of msgpack); a larger one fails its attempt.
    max_result_bytes: int = PoolSettings.max_result_bytes

    def pool_settings(self) -> PoolSettings:
        """The worker pool's settings from this config."""
        return PoolSettings(
            workers=self.workers,
            async_per_worker=self.async_per_worker,
            max_tasks_per_worker=self.max_tasks_per_worker or None,
            max_memory_per_worker=self.max_memory_per_worker or None,
            max_worker_age=self.max_worker_age or None,
            kill_grace=self.kill_grace,
            heartbeat_timeout=self.heartbeat_timeout,
            prefetch=self.prefetch,
            max_result_bytes=self.max_result_bytes,
        )

    def validate(self) -> Config:
        try:
            LogConfig(self.log_target, self.log_queue_size, self.log_policy).validate()  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.workers < 1 or self.workers > 1024:
            raise ConfigError(f"workers must be between 1 and 1024, got {self.workers}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.max_message_size < 1024:
            raise ConfigError(f"max_message_size must be at least 1024 bytes, got {self.max_message_size}")
        if self.async_per_worker < 1 or self.heartbeat_timeout <= 0:
            raise ConfigError("async_per_worker must be at least 1 and heartbeat_timeout positive")
        if not 1024 <= self.max_result_bytes <= 2**40:
            raise ConfigError(f"max_result_bytes must be between 1024 and 2**40, got {self.max_result_bytes}")
        if self.prefetch < 1:
            raise ConfigError(f"prefetch must be at least 1 (1: no prefetch), got {self.prefetch}")
        if min(self.max_tasks_per_worker, self.max_memory_per_worker, self.max_worker_age) < 0:
            raise ConfigError(
                "max_tasks_per_worker, max_memory_per_worker and max_worker_age must not be negative"
            )
        if self.sync not in ("normal", "full"):
            raise ConfigError(f'sync must be "normal" or "full", got {self.sync!r}')
        if self.retention_age < 0 or self.retention_count < 0:
            raise ConfigError("retention_age and retention_count must not be negative")
        if self.drain_timeout < 0 or self.kill_grace < 0:
            raise ConfigError("drain_timeout and kill_grace must not be negative")
        for name in ("group", "admin_group"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                grp.getgrnam(value)
            except (KeyError, ValueError):
                raise ConfigError(f"{name}: group {value!r} does not exist") from None
        if len(os.fsencode(self.socket)) > 107:
            raise ConfigError(f"socket path is longer than 107 bytes (a Unix socket limit): {self.socket}")
        return self


_CONVERT: dict[str, Any] = {
    "socket": Path,
    "state_dir": Path,
    "workers": int,
    "group": str,
    "admin_group": str,
    "log_level": str,
    "log_target": str,
    "log_queue_size": int,
    "log_policy": str,
    "max_message_size": int,
    "max_result_bytes": int,
    "drain_timeout": float,
    "kill_grace": float,
    "priority_aging": float,
    "retention_age": float,
    "retention_count": int,
    "sync": str,
    "store": bool,
    "async_per_worker": int,
    "max_tasks_per_worker": int,
    "max_memory_per_worker": int,
    "max_worker_age": float,
    "heartbeat_timeout": float,
    "prefetch": int,
}


def _coerce(key: str, value: Any, origin: str) -> Any:
    convert = _CONVERT[key]
    if convert is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{origin}: {key} must be an integer, got {value!r}")
    if convert is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
    if convert is bool and not isinstance(value, bool):
        raise ConfigError(f"{origin}: {key} must be true or false, got {value!r}")
    if convert in (str, Path) and not isinstance(value, str):
        raise ConfigError(f"{origin}: {key} must be a string, got {value!r}")
    return convert(value)


def load(config_file: Path | None, overrides: dict[str, Any]) -> Config:
    """Build the config from a TOML file (optional), the environment and command-line overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        origin = str(config_file)
        try:
            data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        section = data.get("procpoold", data)
        for key, value in section.items():
            norm = key.replace("-", "_")
            if norm not in _CONVERT:
                raise ConfigError(f"{origin}: unknown setting {key!r}")
            values[norm] = _coerce(norm, value, origin)
    env_socket = os.environ.get(SOCKET_ENV)
    if env_socket:
        values["socket"] = Path(env_socket)
    for key, value in overrides.items():
        if value is not None:
            values[key] = _CONVERT[key](value)
    return replace(Config(), **values).validate()

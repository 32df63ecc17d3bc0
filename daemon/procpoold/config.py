"""Typed settings of the daemon: defaults < config file (TOML) < environment < command line.

Validated once at start; a bad value stops the daemon with a message that names
the setting and where it came from.
"""

from __future__ import annotations

import grp
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE
from procpool.contract.limits import (
    CEILINGS,
    DEFAULT_LIMITS,
    FOLLOW_MESSAGE_SIZE,
    LOCK_NAME_MAX,
    LOCK_NAME_RE,
    MAX_PARALLEL_MAX,
    SECONDS_MAX,
    WORKERS_MAX,
    Limits,
)
from procpool.contract.paths import SOCKET_ENV, default_socket, default_state_dir
from procpool.contract.tree import LOCK_UNITS_MAX
from procpoold.control.limits import ServerLimits
from procpoold.logconfig import DEFAULT_QUEUE_SIZE, LogConfig
from procpoold.pool.slot import PoolSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
#: The range of log_job_max_bytes (other than 0: no log files): 64 KiB to 1 TiB.
LOG_JOB_MIN_BYTES = 64 * 1024
LOG_JOB_MAX_BYTES = 1 << 40
#: Where tasks run by default: on this daemon's own engines, or on a Dask cluster (docs/engines.md).
ENGINES = ("local", "dask")
#: The address schemes of a Dask scheduler the daemon accepts (those of distributed's comm layer
#: that reach another process: no inproc://).
DASK_SCHEMES = ("tcp", "tls", "ws", "wss")
#: (a host name is at most 253 characters, as DNS has it; an IPv6 literal far less)
_ADDRESS = re.compile(
    r"(?P<scheme>[a-z]+)://(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_.-]{1,253}):(?P<port>[0-9]{1,5})")


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
    #: Interruptions of a task by the daemon (its restart or crash, a worker it retired or lost) that
    #: run it again without using its retries; one more fails it.
    max_interruptions: int = 3
    #: Seconds the log target may accept no record before the logger drops (and counts) records
    #: instead of pausing tasks whose output fills the log queue.
    log_put_timeout: float = 10.0
    #: Without journald, each job's log is kept in a file of the state directory, of at most this
    #: many bytes (the start is kept; docs/logging.md). 0: no files (the daemon's memory tail only).
    log_job_max_bytes: int = 64 * 1024 * 1024
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
    #: Size limits of jobs and requests (procpool.contract.limits.Limits; docs/state.md, Limits).
    #: The byte limits of arguments, results and namespaces are 0 by default: max_message_size.
    max_name_bytes: int = DEFAULT_LIMITS.max_name_bytes
    max_tags: int = DEFAULT_LIMITS.max_tags
    max_env_vars: int = DEFAULT_LIMITS.max_env_vars
    max_env_bytes: int = DEFAULT_LIMITS.max_env_bytes
    max_args_bytes: int = 0
    max_namespace_bytes: int = 0
    max_result_bytes: int = 0
    max_nodes: int = DEFAULT_LIMITS.max_nodes
    max_depth: int = DEFAULT_LIMITS.max_depth
    max_map_items: int = DEFAULT_LIMITS.max_map_items
    max_array_items: int = DEFAULT_LIMITS.max_array_items

    #: Load limits (docs/protocol.md, Limits). Tasks of unfinished jobs, daemon-wide and per submitting
    #: user (0: no limit); a submit past either is refused with limit_exceeded ("queue full").
    max_queued_tasks: int = 1_000_000
    max_user_tasks: int = 0
    #: Control connections served at once (0: derived from the fd limit, see control/limits.py).
    max_connections: int = 0
    #: Replies and reply bytes queued for one connection that is not reading (more are dropped or
    #: refused; one reply of up to max_message_size always goes to a connection that has read all),
    #: and pending waits (``wait``, ``submit`` with ``wait``) per connection and in all.
    max_queued_replies: int = ServerLimits.max_queued_replies
    max_queued_reply_bytes: int = ServerLimits.max_queued_reply_bytes
    max_waits_per_peer: int = ServerLimits.max_waits_per_peer
    max_pending_waits: int = ServerLimits.max_pending_waits
    #: ... and per submitting user, whatever their connections (0: no per-user cap)
    max_waits_per_user: int = ServerLimits.max_waits_per_user
    #: Tasks in one page of a job's status (a client asks for the next page with ``tasks_from``).
    status_page_size: int = 1_000
    #: The default engine of call and cmd tasks: "local" (this daemon's pool and commands engines)
    #: or "dask" (the Dask cluster at ``dask_scheduler``). A job or task may name either.
    engine: str = "local"
    #: The Dask scheduler's address ("tcp://10.0.0.5:8786"); set, the daemon also runs the "dask"
    #: engine (which needs the optional ``distributed`` package: ``pip install 'procpool[dask]'``).
    dask_scheduler: str | None = None
    #: Health thresholds (the [health] block: max_queued, min_success_rate, success_window; see
    #: procpoold.metrics_report). Degraded past max_queued tasks queued (0: no threshold), or when
    #: fewer than min_success_rate of the last success_window tasks succeeded (0: no threshold).
    health_max_queued: int = 0
    health_min_success_rate: float = 0.5
    health_success_window: int = 100
    #: The Prometheus export, off by default (the [metrics] block: textfile, listen, interval): a
    #: file for node_exporter's textfile collector (``*.prom``), and/or an HTTP endpoint on a
    #: loopback address ("127.0.0.1:9464", "[::1]:9464") or a Unix socket ("unix:/path"),
    #: refreshed at most every ``metrics_interval`` seconds, only while something changes.
    metrics_textfile: Path | None = None
    metrics_listen: str | None = None
    metrics_interval: float = 15.0
    #: [locks]: each named lock's limit (how many units its holders may hold at once; a name not
    #: given here is a mutex, 1). See docs/job-trees.md, Limits, queues and locks.
    locks: dict[str, int] = field(default_factory=dict)
    #: [queues]: each named queue's parallelism (how many of its tasks run at once, across jobs).
    #: A job may name only a queue that exists: here, or made by ``procctl queue set`` (which is
    #: kept in the state directory and wins over this). See docs/job-trees.md, Limits, queues and locks.
    queues: dict[str, int] = field(default_factory=dict)

    def limits(self) -> Limits:
        """The size limits of jobs and requests from this config (0 resolved to max_message_size).

        The worker pool reads ``limits().max_result_bytes`` (a task's encoded result)."""
        values = {name: getattr(self, name) for name in DEFAULT_LIMITS.names()}
        for name in FOLLOW_MESSAGE_SIZE:
            values[name] = values[name] or self.max_message_size
        return Limits(**values)

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
            max_result_bytes=self.limits().max_result_bytes,
        )

    def validate(self) -> Config:
        try:
            LogConfig(self.log_target, self.log_queue_size, self.log_policy).validate()  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.workers < 1 or self.workers > WORKERS_MAX:
            raise ConfigError(f"workers must be between 1 and {WORKERS_MAX}, got {self.workers}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.max_message_size < 1024:
            raise ConfigError(f"max_message_size must be at least 1024 bytes, got {self.max_message_size}")
        if self.async_per_worker < 1 or self.heartbeat_timeout <= 0:
            raise ConfigError("async_per_worker must be at least 1 and heartbeat_timeout positive")
        if self.prefetch < 1:
            raise ConfigError(f"prefetch must be at least 1 (1: no prefetch), got {self.prefetch}")
        if min(self.max_tasks_per_worker, self.max_memory_per_worker, self.max_worker_age) < 0:
            raise ConfigError(
                "max_tasks_per_worker, max_memory_per_worker and max_worker_age must not be negative"
            )
        for name, low, high in _LOAD_LIMITS:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        if self.sync not in ("normal", "full"):
            raise ConfigError(f'sync must be "normal" or "full", got {self.sync!r}')
        if self.retention_age < 0 or self.retention_count < 0:
            raise ConfigError("retention_age and retention_count must not be negative")
        if not 0 <= self.max_interruptions <= 1000:
            raise ConfigError(f"max_interruptions must be between 0 and 1000, got {self.max_interruptions}")
        if not 0.1 <= self.log_put_timeout <= 86400:  # also refuses NaN
            raise ConfigError(
                f"log_put_timeout must be between 0.1 and 86400 seconds, got {self.log_put_timeout}"
            )
        if self.log_job_max_bytes and not LOG_JOB_MIN_BYTES <= self.log_job_max_bytes <= LOG_JOB_MAX_BYTES:
            raise ConfigError(f"log_job_max_bytes must be 0 (no log files) or between {LOG_JOB_MIN_BYTES} "
                              f"and {LOG_JOB_MAX_BYTES}, got {self.log_job_max_bytes}")
        if self.drain_timeout < 0 or self.kill_grace < 0:
            raise ConfigError("drain_timeout and kill_grace must not be negative")
        self._validate_metrics()
        self._validate_numbers()
        self._validate_engine()
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

    def _validate_metrics(self) -> None:
        if not 0 <= self.health_max_queued <= 10**9:
            raise ConfigError(
                f"health_max_queued must be between 0 and 1000000000, got {self.health_max_queued}")
        if not 0.0 <= self.health_min_success_rate <= 1.0:  # (NaN too)
            raise ConfigError(
                f"health_min_success_rate must be between 0 and 1, got {self.health_min_success_rate}")
        if not 1 <= self.health_success_window <= 100_000:
            raise ConfigError(
                f"health_success_window must be between 1 and 100000, got {self.health_success_window}")
        if not 1.0 <= self.metrics_interval <= 3600.0:
            raise ConfigError(
                f"metrics_interval must be between 1 and 3600 seconds, got {self.metrics_interval}")
        textfile = self.metrics_textfile
        if textfile is not None and (not textfile.is_absolute() or textfile.suffix != ".prom"):
            raise ConfigError(
                f"metrics_textfile must be an absolute path ending in .prom (node_exporter's textfile "
                f"collector reads only those), got {str(textfile)[:200]!r}")
        if self.metrics_listen is not None:
            problem = listen_address_problem(self.metrics_listen)
            if problem is not None:
                raise ConfigError(f"metrics_listen {problem}")

    def _validate_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f'engine must be "local" or "dask", got {self.engine!r}')
        if self.dask_scheduler is not None:
            problem = dask_address_problem(self.dask_scheduler)
            if problem is not None:
                raise ConfigError(f"dask_scheduler {problem}")
        elif self.engine == "dask":
            raise ConfigError(
                'engine = "dask" needs dask_scheduler, the address of the Dask scheduler '
                '(such as "tcp://10.0.0.5:8786")'
            )

    def _validate_numbers(self) -> None:
        """Every number finite and in its range (TOML allows inf and nan)."""
        for name, convert in _CONVERT.items():
            value = getattr(self, name)
            if convert is float and not (math.isfinite(value) and 0 <= value <= SECONDS_MAX):
                most = f"{SECONDS_MAX:.0f}"
                raise ConfigError(f"{name} must be a number of seconds from 0 to {most}, got {value}")
        if self.max_message_size > 2**31:
            raise ConfigError(f"max_message_size must be at most {2**31} bytes, got {self.max_message_size}")
        if self.log_queue_size > 10_000_000 or self.max_tasks_per_worker > 2**53 or self.prefetch > 1_000_000:
            raise ConfigError("log_queue_size, max_tasks_per_worker or prefetch is out of range")
        for name in DEFAULT_LIMITS.names():
            value, most = getattr(self, name), getattr(CEILINGS, name)
            least = 0 if name in FOLLOW_MESSAGE_SIZE else 1
            if not least <= value <= most:
                raise ConfigError(f"{name} must be between {least} and {most}, got {value}")
            if name in FOLLOW_MESSAGE_SIZE and value > self.max_message_size:
                raise ConfigError(
                    f"{name} ({value}) must not exceed max_message_size ({self.max_message_size}): "
                    "a reply carrying such a value could not be sent"
                )


#: (setting, lowest, highest) of the load limits (0 means "no limit" or "derived" where documented).
_LOAD_LIMITS = (
    ("max_queued_tasks", 0, 10**9),
    ("max_user_tasks", 0, 10**9),
    ("max_connections", 0, 1_000_000),
    ("max_queued_replies", 1, 10_000),
    ("max_queued_reply_bytes", 64 << 10, 1 << 40),
    ("max_waits_per_peer", 1, 1_000_000),
    ("max_pending_waits", 1, 10_000_000),
    ("max_waits_per_user", 0, 10_000_000),
    ("status_page_size", 1, 1_000_000),
)

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
    "max_interruptions": int,
    "log_put_timeout": float,
    "log_job_max_bytes": int,
    "sync": str,
    "store": bool,
    "async_per_worker": int,
    "max_tasks_per_worker": int,
    "max_memory_per_worker": int,
    "max_worker_age": float,
    "heartbeat_timeout": float,
    "prefetch": int,
    **{name: int for name in DEFAULT_LIMITS.names()},
    "max_queued_tasks": int,
    "max_user_tasks": int,
    "max_connections": int,
    "max_queued_replies": int,
    "max_queued_reply_bytes": int,
    "max_waits_per_peer": int,
    "max_pending_waits": int,
    "max_waits_per_user": int,
    "status_page_size": int,
    "engine": str,
    "dask_scheduler": str,
    "health_max_queued": int,
    "health_min_success_rate": float,
    "health_success_window": int,
    "metrics_textfile": Path,
    "metrics_listen": str,
    "metrics_interval": float,
}
#: Blocks of the config file whose keys are settings with the block's name as a prefix
#: (``[health] max_queued = 100`` is ``health_max_queued``).
_BLOCKS = ("health", "metrics")


#: The loopback hosts metrics_listen accepts (the metrics are for this machine's collector).
_LOOPBACK = re.compile(r"(?P<host>127(?:\.[0-9]{1,3}){3}|localhost|\[::1\]):(?P<port>[0-9]{1,5})")


def listen_address_problem(address: str) -> str | None:
    """Why ``address`` is not one metrics_listen accepts ("must be ..."); None when it is one:
    ``HOST:PORT`` on a loopback host, or ``unix:/absolute/path`` (at most 107 bytes)."""
    shown = repr(address) if len(address) <= 200 else repr(address[:200]) + "..."
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path.startswith("/") or len(os.fsencode(path)) > 107:
            return f"must name an absolute socket path of at most 107 bytes after unix:, got {shown}"
        return None
    match = _LOOPBACK.fullmatch(address)
    if match is None:
        return ('must be a loopback address such as "127.0.0.1:9464" or "[::1]:9464", or a Unix socket '
                f'such as "unix:/run/procpoold/metrics.sock", got {shown}')
    if not 0 < int(match["port"]) < 65536:
        return f"must have a port from 1 to 65535, got {match['port']} in {shown}"
    return None


def dask_address_problem(address: str) -> str | None:
    """Why ``address`` is not a Dask scheduler's address (``scheme://host:port``, the scheme one of
    :data:`DASK_SCHEMES`), as "must be ..."; None when it is one."""
    shown = repr(address) if len(address) <= 200 else repr(address[:200]) + "..."
    match = _ADDRESS.fullmatch(address)
    if match is None:
        return f'must be an address such as "tcp://10.0.0.5:8786" (scheme://host:port), got {shown}'
    if match["scheme"] not in DASK_SCHEMES:
        schemes = ", ".join(DASK_SCHEMES)
        return f"must use one of the schemes {schemes}, got {match['scheme']!r} in {shown}"
    if not 0 < int(match["port"]) < 65536:
        return f"must have a port from 1 to 65535, got {match['port']} in {shown}"
    return None


def _flatten(section: dict[str, Any], origin: str) -> dict[str, Any]:
    """The settings of a config file's section, the keys of its blocks (see _BLOCKS) prefixed."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key in _BLOCKS:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key} must be a table ([{key}]), got {type(value).__name__}")
            for inner, setting in value.items():
                out[f"{key}_{inner}"] = setting
        else:
            out[key] = value
    return out


def _named(block: Any, origin: str, what: str, most: int) -> dict[str, int]:
    """The [locks] or [queues] block: name -> limit (locks) or parallelism (queues), from 1 to ``most``."""
    if not isinstance(block, dict):
        raise ConfigError(f"{origin}: {what} must be a table ([{what}]), got {type(block).__name__}")
    out: dict[str, int] = {}
    for name, limit in block.items():
        if not LOCK_NAME_RE.fullmatch(name):
            raise ConfigError(f"{origin}: [{what}] {name[:80]!r} is not a {what[:-1]} name (letters, digits "
                              f"and _ . -, at most {LOCK_NAME_MAX})")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
            raise ConfigError(f"{origin}: [{what}] {name} must be an integer from 1 to {most}, "
                              f"got {limit!r}")
        out[name] = limit
    return out


def _coerce(key: str, value: Any, origin: str) -> Any:
    convert = _CONVERT[key]
    if convert is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{origin}: {key} must be an integer, got {value!r}")
    if convert is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
    if convert is float and not math.isfinite(value):
        raise ConfigError(f"{origin}: {key} must be a finite number, got {value!r}")
    if convert is bool and not isinstance(value, bool):
        raise ConfigError(f"{origin}: {key} must be true or false, got {value!r}")
    if convert in (str, Path) and not isinstance(value, str):
        raise ConfigError(f"{origin}: {key} must be a string, got {value!r}")
    if convert in (str, Path) and "\0" in value:
        raise ConfigError(f"{origin}: {key} must not contain a NUL byte")
    return convert(value)


def load(config_file: Path | None, overrides: dict[str, Any]) -> Config:
    """Build the config from a TOML file (optional), the environment and command-line overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        origin = str(config_file)
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer of 5,000 digits
            raise ConfigError(f"config file {config_file} is not valid TOML: {str(exc)[:200]}") from None
        section = data.get("procpoold", data)
        if not isinstance(section, dict):
            raise ConfigError(f"{origin}: procpoold must be a table, got {type(section).__name__}")
        nested = section is not data  # (a [procpoold] table, with blocks beside it or in it)
        for what, most in (("locks", LOCK_UNITS_MAX), ("queues", MAX_PARALLEL_MAX)):
            block = section.get(what)  # ([locks] beside [procpoold], or in it; [queues] too)
            if nested and what in data:
                if block is not None:
                    raise ConfigError(f"{origin}: [{what}] is given twice (also as [procpoold.{what}])")
                block = data[what]
            if block is not None:
                values[what] = _named(block, origin, what, most)
                section = {k: v for k, v in section.items() if k != what}
        if nested:  # [health] and [metrics] beside [procpoold] (or in it: [procpoold.health])
            for block in _BLOCKS:
                if block in data:
                    if block in section:
                        raise ConfigError(f"{origin}: [{block}] is given twice (also as [procpoold.{block}])")
                    section = {**section, block: data[block]}
        for key, value in _flatten(section, origin).items():
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

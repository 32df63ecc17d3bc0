"""``procpoold``: the composition root. Parses options, builds the daemon, runs it.

Order matters: settings are read and logging is set up before anything starts
a thread; the ZeroMQ context (which owns I/O threads) is created only after the
process-forking parts exist, so no child is ever forked from a threaded process.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from procpool.contract.version import __version__
from procpoold import malloc, systemd
from procpoold.config import ENGINES, LOG_LEVELS, Config, ConfigError, load
from procpoold.control.server import BindError
from procpoold.journal import setup_logging
from procpoold.logconfig import POLICIES, TARGETS

if TYPE_CHECKING:
    from procpoold.engines import Executor
    from procpoold.engines.registry import Engines
    from procpoold.journal import LogSink

log = logging.getLogger("procpoold")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Control socket path [env PROCPOOL_SOCKET; default /run/procpoold/control.sock "
    "for root, $XDG_RUNTIME_DIR/procpoold/control.sock otherwise].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the state store [default $STATE_DIRECTORY or /var/lib/procpoold].",
)
@click.option("--workers", type=click.IntRange(1, 1024), help="Number of worker processes [default: CPUs].")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file; command-line options override it.",
)
@click.option("--group", help="Group that owns the socket and may use it (mode 0660).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Least severe level logged [default info].")
@click.option(
    "--log-target",
    type=click.Choice(TARGETS),
    help="Where records go: journald, stderr, or auto (journald under systemd) [default auto].",
)
@click.option(
    "--log-queue-size",
    type=click.IntRange(100, 10_000_000),
    help="Records the log queue holds before its policy applies [default 10000].",
)
@click.option(
    "--log-policy",
    type=click.Choice(POLICIES),
    help="When the log queue is full: block (pause the task's output) or drop [default block].",
)
@click.option(
    "--log-job-max-bytes",
    type=click.IntRange(0, 1 << 40),
    help="Without journald: most bytes of each job's log file in the state directory; its start is "
    "kept (0: no files) [default 67108864, 64 MiB].",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    help="Where call and cmd tasks run unless they say: this daemon (local) or the Dask cluster "
    "(dask, needs --dask-scheduler) [default local].",
)
@click.option(
    "--dask-scheduler",
    metavar="ADDRESS",
    help="Address of a Dask scheduler (tcp://HOST:8786): tasks may then run on it (\"engine\": \"dask\").",
)
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write Prometheus metrics to this *.prom file for node_exporter's textfile collector "
    "(needs prometheus_client: procpool[metrics]) [default off].",
)
@click.option(
    "--metrics-listen",
    metavar="ADDRESS",
    help="Serve Prometheus metrics over HTTP on a loopback HOST:PORT (127.0.0.1:9464) or a Unix "
    "socket (unix:/PATH) [default off].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on fatal errors.")
@click.version_option(__version__, prog_name="procpoold")
def cli(debug: bool, config_file: Path | None, **options: Any) -> None:
    """Run the procpool daemon in the foreground (as systemd expects).

    SIGTERM or SIGINT stops it gracefully; it exits 0 and removes its socket.
    """
    malloc.tune()  # first: the zygote and the workers forked later inherit it
    overrides = {
        "socket": options["socket_path"],
        "state_dir": options["state_dir"],
        "workers": options["workers"],
        "group": options["group"],
        "log_level": options["log_level"],
        "log_target": options["log_target"],
        "log_queue_size": options["log_queue_size"],
        "log_policy": options["log_policy"],
        "log_job_max_bytes": options["log_job_max_bytes"],
        "engine": options["engine"],
        "dask_scheduler": options["dask_scheduler"],
        "metrics_textfile": options["metrics_textfile"],
        "metrics_listen": options["metrics_listen"],
    }
    try:
        config = load(config_file, overrides)
    except ConfigError as exc:
        _fatal(str(exc), "check the option or the config file named above", debug)
    sink = setup_logging(
        config.log_level,
        config.log_target,  # type: ignore[arg-type]
        config.log_queue_size,
        config.log_policy,  # type: ignore[arg-type]
        put_timeout=config.log_put_timeout,
    )
    inherited = systemd.listen_fds()
    from procpoold.supervisor import (
        Daemon,  # after logging: importing zmq is harmless, creating a context is not
    )

    engines = _engines(config, sink)
    from procpoold.engines import EngineUnavailable
    from procpoold.store import StoreError, StoreFailure

    try:
        daemon = Daemon(
            config,
            engines,
            inherited_fd=inherited[0] if inherited else None,
            reload_config=lambda: load(config_file, overrides),
            sink=sink,
        )
    except (StoreError, EngineUnavailable) as exc:
        for engine in engines.all():
            engine.shutdown(0)
        sink.stop()  # the journal forwarder (started by Daemon) writes what it has and exits
        _fatal(str(exc), getattr(exc, "hint", None), debug)
    hint = "check the state directory's disk; a restart resumes committed work"
    try:
        daemon.start()
    except StoreFailure as exc:  # recovery's first commit (a full disk, most likely)
        daemon.store_failed(exc)
        daemon.close()
        _fatal(str(exc), exc.hint or hint, debug)
    except BindError as exc:
        daemon.close()
        _fatal(str(exc), exc.hint, debug)
    except Exception as exc:
        daemon.close()
        if debug:
            raise
        _fatal(f"cannot start: {exc}", "run with --debug for the traceback", debug)
    try:
        daemon.run()
    except StoreFailure as exc:
        daemon.store_failed(exc)
        hint = exc.hint or hint
    finally:
        daemon.close()
    if daemon.store_failure is not None:
        _fatal(daemon.store_failure, hint, debug)


def _engines(config: Config, sink: LogSink | None) -> Engines:
    """The one place that names concrete engines: each is registered by its name, and a task runs
    on the first one that runs its kind unless it (or its job) names another, or the config makes
    the Dask engine the default (``engine = "dask"``); see docs/engines.md."""
    from procpoold.engines.commands import CommandExecutor
    from procpoold.engines.registry import Engines
    from procpoold.pool.pool import PoolExecutor

    engines: list[Executor] = [
        PoolExecutor(config.pool_settings(), sink=sink),  # "pool": call tasks
        CommandExecutor(config.workers, config.kill_grace, sink=sink),  # "commands": cmd tasks
    ]
    defaults: dict[str, str] = {}
    if config.dask_scheduler is not None:
        # imported only here: the optional 'distributed' package is needed with a Dask scheduler only
        from procpoold.engines.dask import DaskExecutor

        engines.append(DaskExecutor(config.dask_scheduler, kill_grace=config.kill_grace,
                                    max_result_bytes=config.limits().max_result_bytes))
        if config.engine == "dask":
            defaults = {"call": "dask", "cmd": "dask"}
    return Engines(engines, defaults=defaults)


def _fatal(message: str, hint: str | None, debug: bool) -> None:
    if debug:
        logging.getLogger("procpoold").debug("fatal", exc_info=True)
    click.echo(f"procpoold: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    cli()

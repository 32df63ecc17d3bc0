"""``procctl``: global options, exit codes and the one-line error policy.

Every command talks to the daemon through :class:`procpool.Client`, imported (with pyzmq) only
when a command connects, so ``procctl --help`` or ``validate`` never load it. Errors are
printed as ``procctl: error: <message>`` plus a ``hint:`` line; the traceback
only appears with ``--debug``. ``--json`` makes every command print one JSON
document on stdout instead of text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from procpool import trust
from procpool.contract.codec import DEFAULT_MAX_MESSAGE_SIZE
from procpool.contract.errors import ErrorCode, ProcpoolError
from procpool.contract.limits import SECONDS_MAX
from procpool.contract.paths import default_socket

if TYPE_CHECKING:
    from procpool.client import Client

#: Exit codes (documented in ``procctl --help``).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4
EXIT_LIMIT = 5
#: ``wait --timeout`` gave up before the job or task finished (as coreutils' timeout)
EXIT_WAIT_TIMEOUT = 124
#: Ctrl-C (SIGINT) stopped procctl; what it waited for goes on in the daemon (128 + SIGINT, as shells)
EXIT_INTERRUPTED = 130

_USAGE_CODES = {
    ErrorCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_TREE,
    ErrorCode.UNKNOWN_OPERATION,
    ErrorCode.NOT_FOUND,
    ErrorCode.TOO_LARGE,
    ErrorCode.PROTOCOL_VERSION,
}

_EXIT_BY_CODE = {
    ErrorCode.UNREACHABLE: EXIT_UNREACHABLE,
    ErrorCode.PERMISSION_DENIED: EXIT_DENIED,
    ErrorCode.LIMIT_EXCEEDED: EXIT_LIMIT,
}


@dataclass
class Settings:
    """Global options, shared by every command through click's context object."""

    socket: Path
    json: bool
    timeout: float
    debug: bool
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    trust_uids: tuple[int, ...] = ()

    def client(self) -> Client:
        from procpool.client import Client  # pyzmq loads here, for the commands that connect

        return Client(
            self.socket,
            timeout=self.timeout,
            max_message_size=self.max_message_size,
            trust_uids=self.trust_uids,
        )


def fail(message: str, hint: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
    """Print one error line (and a hint) and exit."""
    click.echo(f"procctl: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def emit(settings: Settings, data: Any, text: Callable[[], str] | str) -> None:
    """Print ``data`` as JSON with --json, else the human text."""
    if settings.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text() if callable(text) else text)


class ProcctlGroup(click.Group):
    """A click group that turns procpool errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except ProcpoolError as exc:
            if debug:
                raise
            code = _EXIT_BY_CODE.get(exc.code, EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_FAILED)
            fail(exc.message, exc.hint, code)
        except KeyboardInterrupt:
            # Ctrl-C stops procctl only: a job it submitted or waited for goes on in the daemon.
            # (The wait commands say which job; a plain "Aborted!" and exit 1 read like a failure.)
            waited = ctx.meta.get("waiting_for")
            click.echo("", err=True)
            if waited:
                what = "task" if "." in waited or "/" in waited else "job"
                fail(f"stopped waiting; {what} {waited} goes on in the daemon",
                     f"procctl status {waited}, procctl wait {waited}, or procctl cancel {waited}",
                     EXIT_INTERRUPTED)
            fail("interrupted", "what procctl asked the daemon for may have been done: see procctl status",
                 EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader went away (`procctl logs 1 | head`): what it wanted is written. Quietly,
            # as other tools do, and without Python's second complaint when stdout is closed.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_OK)
        except (OSError, ValueError) as exc:
            if debug:
                raise
            fail(str(exc), "run with --debug for the traceback", EXIT_FAILED)


HELP = """Drive the procpool daemon (procpoold).

\b
Exit codes:
  0  success
  1  the operation's subject failed (a failed job, a task that did not complete)
  2  usage or validation error (bad option, bad job file, unknown id)
  3  the daemon is unreachable (not running, wrong --socket, or not run by a
     user procctl trusts: see --trust-uid)
  4  permission denied (not the job's owner or an administrator)
  5  a limit refused new work for now (queue full, quota, too many connections)
  124  wait --timeout gave up: the job or task has not finished
  130  Ctrl-C: procctl stopped; a job it waited for goes on (it says which)
"""


class Seconds(click.FloatRange):
    """A number of seconds: finite, from ``min`` to ten years (NaN and the infinities are refused)."""

    def __init__(self, min: float = 0.0) -> None:
        super().__init__(min=min, max=SECONDS_MAX)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail("NaN is not a number of seconds", param, ctx)
        return seconds


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``procctl --version``, as click's version option prints it; the version is read only here
    (it needs importlib.metadata, slow to import: see procpool.contract.version)."""
    if not value or ctx.resilient_parsing:
        return
    from procpool.contract.version import __version__

    click.echo(f"procctl, version {__version__}", color=ctx.color)
    ctx.exit()


@click.group(cls=ProcctlGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Control socket [env PROCPOOL_SOCKET; default /run/procpoold/control.sock for root, "
    "$XDG_RUNTIME_DIR/procpoold/control.sock otherwise].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option(
    "--timeout",
    type=Seconds(min=0.01),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the daemon's answer.",
)
@click.option(
    "--max-message-size",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_MESSAGE_SIZE,
    show_default=True,
    envvar="PROCPOOL_MAX_MESSAGE_SIZE",
    help="Largest request to send, in bytes; match the daemon's max_message_size "
    "[env PROCPOOL_MAX_MESSAGE_SIZE].",
)
@click.option(
    "--trust-uid",
    "trust_uids",
    multiple=True,
    metavar="UID",
    help="Also trust a daemon (and its socket's folders) owned by this uid or user name; root, the "
    "service user 'procpool' and you are always trusted [env PROCPOOL_TRUST_UID, comma-separated].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    socket_path: Path | None,
    as_json: bool,
    timeout: float,
    max_message_size: int,
    trust_uids: tuple[str, ...],
    debug: bool,
) -> None:
    try:
        uids = tuple(trust.parse_uid(u) for u in trust_uids)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-uid") from None
    ctx.obj = Settings(socket_path or default_socket(), as_json, timeout, debug, max_message_size, uids)


pass_settings = click.make_pass_decorator(Settings)



@cli.command()
@pass_settings
def ping(settings: Settings) -> None:
    """Check that the daemon answers; print its version."""
    with settings.client() as client:
        info = client.ping()
    emit(settings, info, f"procpoold {info['version']} (protocol {info['protocol']}, pid {info['pid']})")


@cli.command()
@pass_settings
def shutdown(settings: Settings) -> None:
    """Ask the daemon to stop gracefully."""
    with settings.client() as client:
        client.shutdown()
    emit(settings, {"stopping": True}, f"procpoold on {settings.socket} is stopping")


from procpool.cli import jobs as _jobs  # noqa: E402  (registers the job commands on `cli`)
from procpool.cli import logs as _logs  # noqa: E402  (registers `procctl logs`)
from procpool.cli import pool as _pool  # noqa: E402

del _jobs, _logs, _pool
from procpool.cli import health as _health  # noqa: E402, F401  (registers `procctl health`)
from procpool.cli import metrics as _metrics  # noqa: E402, F401  (registers `procctl metrics`)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="procctl")

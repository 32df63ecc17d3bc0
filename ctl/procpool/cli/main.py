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
import re
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


#: Whether errors are printed as one JSON document (``--json`` anywhere before ``--``); set by
#: :meth:`ProcctlGroup.main` before anything is parsed, so that usage errors follow it too.
_json_errors = False
#: Whether a JSON document went to stdout already: an error after it (``wait --timeout`` that gave
#: up, after the status as it stands) goes to stderr, so that stdout stays one document.
_json_written = False

#: The ``code`` of an error printed as JSON, by exit code, for errors that are not the daemon's.
_CODE_BY_EXIT = {
    EXIT_USAGE: "usage",
    EXIT_FAILED: "unsuccessful",
    EXIT_UNREACHABLE: ErrorCode.UNREACHABLE.value,
    EXIT_DENIED: ErrorCode.PERMISSION_DENIED.value,
    EXIT_LIMIT: ErrorCode.LIMIT_EXCEEDED.value,
    EXIT_WAIT_TIMEOUT: "wait_timeout",
    EXIT_INTERRUPTED: "interrupted",
}


def fail(message: str, hint: str | None = None, code: int = EXIT_USAGE, kind: str | None = None) -> NoReturn:
    """Print one error line (and a hint) and exit with ``code``.

    Under ``--json`` the error is one JSON document on stdout instead:
    ``{"error": {"code": ..., "message": ..., "hint": ..., "exit": ...}}``, where ``code`` is the
    daemon's error code (``kind``) or, for procctl's own errors, a word for the exit code (on
    stderr when the command printed its own document on stdout already)."""
    if _json_errors:
        error = {"code": kind or _CODE_BY_EXIT.get(code, "error"), "message": message, "hint": hint,
                 "exit": code}
        click.echo(json.dumps({"error": error}, indent=2, sort_keys=True), err=_json_written)
        sys.exit(code)
    click.echo(f"procctl: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    """One warning line on stderr (text mode; under --json a command puts its warnings in its data)."""
    click.echo(f"procctl: warning: {message}", err=True)


def wants_json(args: list[str]) -> bool:
    """Whether ``--json`` is among ``args`` before a ``--`` (after it, words are a command's)."""
    for word in args:
        if word == "--":
            return False
        if word == "--json":
            return True
    return False


def emit(settings: Settings, data: Any, text: Callable[[], str] | str) -> None:
    """Print ``data`` as JSON with --json, else the human text."""
    global _json_written
    if settings.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        _json_written = True
    else:
        click.echo(text() if callable(text) else text)


class ProcctlGroup(click.Group):
    """A click group that turns procpool errors into one line and an exit code (one JSON document
    under ``--json``, click's usage errors included)."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        global _json_errors, _json_written
        words = list(sys.argv[1:] if args is None else args)
        _json_errors, _json_written = wants_json(words), False
        if not _json_errors or extra.get("standalone_mode") is False:
            return super().main(words, prog_name, **extra)
        try:
            code = super().main(words, prog_name, **{**extra, "standalone_mode": False})
        except click.UsageError as exc:
            hint = f"{exc.ctx.command_path} --help" if exc.ctx is not None else "procctl --help"
            fail(exc.format_message(), f"see {hint}", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), None, exc.exit_code)
        except click.Abort:
            fail("interrupted", None, EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            importlib.import_module(LAZY_COMMANDS[cmd_name])  # registers its commands on cli
        command = self.commands.get(cmd_name)
        if command is not None:
            late_globals(command)
            if _COMPLETE_VAR in os.environ:  # the shell asks what to complete (procctl completion)
                _complete_by_name(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except ProcpoolError as exc:
            if debug:
                raise
            code = _EXIT_BY_CODE.get(exc.code, EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_FAILED)
            fail(exc.message, exc.hint, code, kind=exc.code.value)
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


def _late_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        settings = ctx.find_object(Settings)
        if settings is not None:
            settings.json = True


def _late_socket(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    settings = ctx.find_object(Settings)
    if value is not None:
        ctx.meta["late_socket"] = value  # also for shell completion, which makes no Settings
    if value is not None and settings is not None:
        settings.socket = value


def _late_timeout(ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    settings = ctx.find_object(Settings)
    if value is not None and settings is not None:
        settings.timeout = value


def late_globals(sub: click.Command) -> None:
    """Let ``--json``, ``--socket`` and ``--timeout`` follow the subcommand too (``procctl status
    --json``): the subcommand ``sub`` (and each command below it) that has no option of that name
    of its own gets a hidden one that sets the global setting; where it has one (``run
    --timeout``, ``wait --timeout``, ``logs --json``) the subcommand's meaning wins. Called by
    the group as it looks a subcommand up; a second call changes nothing."""
    taken = {opt for param in sub.params for opt in param.opts}
    late: list[click.Parameter] = []
    if "--json" not in taken:
        late.append(click.Option(["--json", "late_json"], is_flag=True, hidden=True, expose_value=False,
                                 callback=_late_json))
    if "--socket" not in taken:
        late.append(click.Option(["--socket", "late_socket"], hidden=True,
                                 type=click.Path(dir_okay=False, path_type=Path), expose_value=False,
                                 callback=_late_socket))
    if "--timeout" not in taken:
        late.append(click.Option(["--timeout", "late_timeout"], type=Seconds(min=0.01), hidden=True,
                                 expose_value=False, callback=_late_timeout))
    sub.params.extend(late)
    if isinstance(sub, click.Group):
        for below in sub.commands.values():
            late_globals(below)


#: Set by the shell completion script when it asks procctl what to complete (click's protocol).
_COMPLETE_VAR = "_PROCCTL_COMPLETE"


def _complete_by_name(command: click.Command) -> None:
    """Complete ``command``'s parameters (and those of the commands below it) by what they name:
    ids, states, files (see :mod:`procpool.cli.completion`, loaded only when completing)."""
    for param in command.params:
        if getattr(param, "_custom_shell_complete", None) is None and not getattr(param, "is_flag", False):
            param._custom_shell_complete = _completion_of  # click's hook for a parameter's completer
    if isinstance(command, click.Group):
        for below in command.commands.values():
            _complete_by_name(below)


def _completion_of(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
    from procpool.cli import completion

    completer = completion.completer_for(param)
    if completer is None:
        return param.type.shell_complete(ctx, param, incomplete)
    return completer(ctx, param, incomplete)


HELP = """Drive the procpool daemon (procpoold).

Global options may also follow the subcommand (procctl status --json, procctl
ping --socket PATH); run's and wait's own --timeout keep their meaning there.

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


#: Seconds per unit of an age (a year is 365 days).
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class Age(click.ParamType):  # type: ignore[type-arg]  # (generic since click 8.5; plain in 8.1)
    """An age such as ``90``, ``30s``, ``15m``, ``2h``, ``1d``, ``2w`` or ``1y``, in seconds: the
    one parser of every option that takes an age; its errors name the option they came with."""

    name = "age"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdwy]?)", str(value).strip().lower())
        if not match:
            self.fail(f"{value!r} is not an age like 30s, 15m, 2h, 1d, 2w or 1y", param, ctx)
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        if seconds > SECONDS_MAX:
            self.fail(f"{value!r} is more than ten years", param, ctx)
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
    """Check that the daemon answers; print its version.

    \b
      procctl ping                                 the default socket
      procctl ping --socket ./run/control.sock     a daemon of one's own
    """
    with settings.client() as client:
        info = client.ping()
    emit(settings, info, f"procpoold {info['version']} (protocol {info['protocol']}, pid {info['pid']})")


@cli.command()
@pass_settings
def shutdown(settings: Settings) -> None:
    """Ask the daemon to stop gracefully: running attempts drain for up to its drain timeout.

    Accepted work is kept in its state store and goes on at its next start.

    \b
      procctl shutdown                             (under systemd: systemctl stop procpoold)
    """
    with settings.client() as client:
        client.shutdown()
    emit(settings, {"stopping": True}, f"procpoold on {settings.socket} is stopping")


#: The module that defines each command kept outside this one. A command module registers its
#: commands on ``cli`` when it is imported; procctl imports it only when one of its commands runs
#: (or ``--help`` lists them), so ``procctl ping`` loads none of them. A module imported here
#: eagerly instead works too, at the cost of its import on every call.
LAZY_COMMANDS: dict[str, str] = {
    **dict.fromkeys(("submit", "validate", "run", "status", "wait", "cancel", "resume", "clean"),
                    "procpool.cli.jobs"),
    "logs": "procpool.cli.logs",
    "pool": "procpool.cli.pool",
    "queue": "procpool.cli.pool",
    "completion": "procpool.cli.completion",
    "result": "procpool.cli.result",
    "top": "procpool.cli.top",
    "explain": "procpool.cli.explain",
    "health": "procpool.cli.health",
    "metrics": "procpool.cli.metrics",
    "retry": "procpool.cli.retry",
    "stop": "procpool.cli.jobs",
    "pause": "procpool.cli.jobs",
}


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="procctl")

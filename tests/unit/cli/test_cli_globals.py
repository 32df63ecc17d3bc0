"""Global options after the subcommand, and errors as one JSON document under ``--json``.

Before, ``procctl status --json`` was refused ("No such option: --json") and every error stayed
text under ``--json``. No daemon is needed: the socket named does not exist, so a command that
parsed goes on to connect and fails with exit 3, naming the socket it tried."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from procpool.cli.main import EXIT_UNREACHABLE, EXIT_USAGE, cli, late_globals, wants_json

pytestmark = pytest.mark.unit

NOWHERE = "/nonexistent/late.sock"


def procctl(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("args", [
    ["ping", "--socket", NOWHERE],
    ["status", "--socket", NOWHERE, "--timeout", "0.5"],
    ["pool", "--socket", NOWHERE],
    ["pool", "resize", "2", "--socket", NOWHERE],
    ["cancel", "12", f"--socket={NOWHERE}"],
    ["run", "--socket", NOWHERE, "--", "true"],
])
def test_socket_and_timeout_may_follow_the_subcommand(args: list[str]) -> None:
    code, out, err = procctl(*args)
    assert code == EXIT_UNREACHABLE, (out, err)
    assert f"no procpoold is listening on {NOWHERE}" in err


def test_json_after_the_subcommand_makes_the_output_and_errors_json() -> None:
    code, out, err = procctl("status", "--json", "--socket", NOWHERE)
    assert code == EXIT_UNREACHABLE and err == ""
    error = json.loads(out)["error"]
    assert error["code"] == "unreachable" and error["exit"] == EXIT_UNREACHABLE
    assert NOWHERE in error["message"] and "procpoold" in error["hint"]


def test_the_subcommands_own_timeout_wins() -> None:
    """``run --timeout`` (per attempt) and ``wait --timeout`` (give up) keep their meaning; no
    second, hidden --timeout is added to them, and their help says so."""
    ctx = click.Context(cli)
    for name in ("run", "wait"):
        command = cli.get_command(ctx, name)
        assert command is not None
        timeouts = [p for p in command.params if "--timeout" in p.opts]
        assert len(timeouts) == 1 and not getattr(timeouts[0], "hidden", False), name
        assert "global --timeout" in (getattr(timeouts[0], "help", "") or ""), name
    logs_command = cli.get_command(ctx, "logs")
    assert logs_command is not None
    logs = [p for p in logs_command.params if "--json" in p.opts]
    assert len(logs) == 1  # logs' own --json (a record per line)
    group_help = CliRunner().invoke(cli, ["--help"]).output
    assert "may also follow the subcommand" in group_help


def test_late_globals_is_idempotent() -> None:
    ctx = click.Context(cli)
    commands = [cli.get_command(ctx, name) for name in cli.list_commands(ctx)]
    before = [len(c.params) for c in commands if c is not None]
    for command in commands:
        assert command is not None
        late_globals(command)
    assert [len(c.params) for c in commands if c is not None] == before
    status = cli.get_command(ctx, "status")
    assert status is not None and [p.opts for p in status.params].count(["--json"]) == 1


@pytest.mark.parametrize(("args", "words"), [
    (["--json", "nosuch"], "No such command 'nosuch'"),
    (["status", "--json", "--bogus"], "No such option '--bogus'"),
    (["--json", "pool", "resize"], "Missing argument 'WORKERS'"),
    (["--json", "clean", "--older-than", "3x"], "'--older-than'"),
    (["--json", "run", "procpool.demo:checksum", '"abc"', "--wait"], "'--wait' comes after the callable"),
    (["--json", "run", "--", "true", "--socket", NOWHERE], None),  # after --, the command's: connects
])
def test_usage_errors_are_json_under_json(args: list[str], words: str | None) -> None:
    code, out, err = procctl(*args)
    if words is None:
        assert code == EXIT_UNREACHABLE and json.loads(out)["error"]["code"] == "unreachable"
        return
    assert code == EXIT_USAGE, (out, err)
    assert err == ""
    error = json.loads(out)["error"]  # one document, nothing else on stdout
    assert words in error["message"] and error["code"] == "usage" and error["exit"] == EXIT_USAGE
    assert error["hint"]


def test_without_json_errors_stay_text() -> None:
    code, out, err = procctl("--socket", NOWHERE, "nosuch")
    assert code == EXIT_USAGE and "No such command 'nosuch'" in err and not out.startswith("{")
    code, out, err = procctl("--socket", NOWHERE, "status")
    assert code == EXIT_UNREACHABLE and err.startswith("procctl: error: no procpoold") and out == ""


def test_json_after_dashdash_is_a_commands_word() -> None:
    assert wants_json(["--json", "status"]) and wants_json(["status", "--json"])
    assert not wants_json(["run", "--", "echo", "--json"])


def test_help_and_version_still_exit_0_under_json() -> None:
    code, out, _ = procctl("--json", "status", "--help")
    assert code == 0 and "Usage:" in out

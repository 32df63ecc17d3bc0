"""``procctl run``: its options go before the callable or the command (or the words come after
``--``); anything else that looks like an option is a usage error, found before connecting.

Before, ``run procpool.demo:checksum '"abc"' --wait`` passed ``--wait`` to the callable (the job
failed, silently), and ``run --wait --retires 2 -- true`` ran ``--retires`` as the command."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from procpool.cli.main import EXIT_UNREACHABLE, EXIT_USAGE, cli

pytestmark = pytest.mark.unit

SOCKET = ["--socket", "/nonexistent/control.sock"]


def procctl(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*SOCKET, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(("args", "word", "what"), [
    (["procpool.demo:checksum", '"abc"', "--wait"], "--wait", "callable"),
    (["procpool.demo:greet", "-x"], "-x", "callable"),
    (["sleep", "30", "--json"], "--json", "command"),
])
def test_an_option_after_the_callable_or_command_is_a_usage_error(
    args: list[str], word: str, what: str
) -> None:
    code, output = procctl("run", *args)
    assert code == EXIT_USAGE, output
    assert f"'{word}' comes after the {what}: procctl run's options go before it" in output
    assert "put them after --" in output and "Traceback" not in output


def test_a_mistyped_option_is_a_usage_error_not_the_command() -> None:
    code, output = procctl("run", "--wait", "--retires", "2", "--", "true")
    assert code == EXIT_USAGE and "No such option" in output and "--retries" in output, output


@pytest.mark.parametrize("args", [
    ["--wait", "procpool.demo:checksum", '"abc"'],  # options first
    ["procpool.demo:add", "-5", "3"],  # a negative number is an argument, not an option
    ["--name", "nap", "--", "sleep", "30", "--json"],  # after --, every word is the command's
    ["--", "procpool.demo:greet", "--flag"],
])
def test_what_is_well_placed_goes_on_to_the_daemon(args: list[str]) -> None:
    code, output = procctl("run", *args)
    assert code == EXIT_UNREACHABLE, output  # parsed: it went on to connect

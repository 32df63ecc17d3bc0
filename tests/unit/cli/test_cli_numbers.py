"""procctl refuses non-finite and huge numbers of seconds as a usage error, before connecting."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from procpool.cli.main import cli


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "inf", "status"],
        ["--timeout", "nan", "status"],
        ["--timeout", "1e17", "status"],
        ["wait", "1", "--timeout", "nan"],
        ["wait", "1", "--timeout", "inf"],
    ],
)
def test_bad_seconds_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--socket", "/nonexistent/control.sock", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output

"""``procctl`` imports a command's module only when that command runs: ``ping`` loads none of the
job, log or pool commands (nor what they render with), which made every call pay for them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from procpool.cli.main import LAZY_COMMANDS, cli

pytestmark = pytest.mark.unit

_PROBE = """
import contextlib, io, sys
sys.argv = ["procctl", "--socket", "/nonexistent/lazy.sock", *{args!r}]
from procpool.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \\
        contextlib.suppress(SystemExit):
    main()
print(" ".join(sorted(m for m in sys.modules if m.startswith("procpool.cli."))))
"""


def cli_modules(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(args=list(args))],
                         capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_ping_loads_no_other_command_module() -> None:
    assert cli_modules("ping") == {"procpool.cli.main"}


def test_a_command_loads_its_own_module() -> None:
    assert "procpool.cli.pool" in cli_modules("pool")
    assert "procpool.cli.jobs" in cli_modules("status") and "procpool.cli.pool" not in cli_modules("status")


def test_every_lazy_command_is_listed_and_found() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    ctx = cli.make_context("procctl", [], resilient_parsing=True)
    for name in LAZY_COMMANDS:
        assert cli.get_command(ctx, name) is not None, name
        assert f"  {name} " in out, name

"""The man pages are made from the commands' own help, and roff reads them without a warning."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from procpool.cli.main import cli
from procpool.cli.manpage import render, write_all

pytestmark = pytest.mark.unit


def test_every_command_and_option_is_on_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    page = render(cli, "procctl", 1, "drive the procpool daemon", "9.9")
    assert page.startswith('.TH PROCCTL 1 "1970-01-01" "procpool 9.9"')
    ctx = click.Context(cli, info_name="procctl")
    for name in cli.list_commands(ctx):
        assert f".SS procctl {name} " in page, name
    for option in ("\\-\\-json", "\\-\\-socket", "\\-\\-trust\\-uid"):  # roff's hyphens
        assert option in page
    assert "\\-\\-all" in page  # a subcommand's option (status --all)


def test_text_that_roff_would_take_as_a_request_is_escaped() -> None:
    @click.command(help="First.\n\n.SH not a heading\n\n\b\n  'quoted\n  back\\slash")
    @click.option("--x-y", help=".TP neither")
    def tool(x_y: str) -> None:
        del x_y

    page = render(tool, "tool", 1, "a tool", "1")
    body = page.split(".SH DESCRIPTION", 1)[1]
    assert "\n.SH not" not in body and "\\&.SH not a heading" in body
    assert "\\&  'quoted" not in body and "  'quoted" in body  # only a line's first column matters
    assert "back\\eslash" in body
    assert "\\&.TP neither" in body


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_reads_both_pages_without_a_warning(tmp_path: Path) -> None:
    for path in write_all(tmp_path):
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
            capture_output=True, text=True, timeout=30, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0 and result.stderr == "", f"{path.name}: {result.stderr}"
    assert sorted(p.name for p in tmp_path.rglob("*.[18]")) == ["procctl.1", "procpoold.8"]

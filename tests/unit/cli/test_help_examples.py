"""Every procctl command's --help shows at least one example of its use (and so does procctl(1))."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from procpool.cli.main import cli

pytestmark = pytest.mark.unit


def _commands(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        out.append((*path, name))
        if isinstance(command, click.Group):
            out += _commands(command, click.Context(command, info_name=name, parent=ctx), (*path, name))
    return out


@pytest.mark.parametrize("words", _commands(cli, click.Context(cli, info_name="procctl")), ids=" ".join)
def test_the_help_has_an_example(words: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*words, "--help"], prog_name="procctl")
    assert result.exit_code == 0, result.output
    examples = [line for line in result.output.splitlines() if line.strip().startswith("procctl ")]
    assert any(" ".join(words) in line for line in examples), f"no example in:\n{result.output}"

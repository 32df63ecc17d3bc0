"""``procctl completion bash|zsh|fish`` and what the shell gets back from procctl when it asks.

Job and task ids come from the daemon (tests/integration/test_cli_completion.py); here: the
scripts, the commands, state names, job files, and nothing (quickly, no error) for ids when no
daemon answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from procpool.cli.main import cli

pytestmark = pytest.mark.unit


def complete(words: str, cword: int, shell: str = "bash") -> list[str]:
    env = {"_PROCCTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword),
           "PROCPOOL_SOCKET": "/nonexistent/completion.sock"}
    result = CliRunner().invoke(cli, [], env=env, prog_name="procctl")
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_of_each_shell_calls_procctl_back(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_PROCCTL_COMPLETE" in result.output and f"{shell}_complete" in result.output


def test_an_unknown_shell_is_a_usage_error_and_help_says_how_to_install() -> None:
    assert CliRunner().invoke(cli, ["completion", "tcsh"]).exit_code == 2
    out = CliRunner().invoke(cli, ["completion", "--help"]).output
    assert 'eval "$(procctl completion bash)"' in out and "completions/procctl.fish" in out


def test_commands_and_their_choices_complete() -> None:
    assert "plain,completion" in complete("procctl comp", 1)
    assert complete("procctl completion ", 2) == ["plain,bash", "plain,zsh", "plain,fish"]
    assert "plain,status" in complete("procctl st", 1)


def test_state_names_complete() -> None:
    assert complete("procctl status --state r", 3) == ["plain,running", "plain,ready"]
    assert complete("procctl clean --state c", 3) == ["plain,cancelled", "plain,completed"]


def test_a_job_file_completes_as_a_file() -> None:
    assert complete("procctl submit jobs/ni", 2) == ["file,jobs/ni"]
    assert complete("procctl validate ", 2) == ["file,"]


@pytest.mark.parametrize("words", ["procctl wait ", "procctl status ", "procctl cancel 1", "procctl logs 1."])
def test_ids_complete_to_nothing_without_a_daemon(words: str) -> None:
    assert complete(words, len(words.split(" ")) - 1) == []

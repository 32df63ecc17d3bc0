"""``procctl completion bash|zsh|fish``: the shell completion script, and what it completes.

The script comes from click's shell completion: the shell calls ``procctl`` back with
``_PROCCTL_COMPLETE`` set, and click answers with the commands and options. On top of that, every
command's arguments and options are completed by what they name (see :func:`attach`): a job or
task id by asking the daemon for the ids it knows (with a short timeout, half a second unless
PROCPOOL_COMPLETE_TIMEOUT says: a daemon that does not answer completes nothing, it never blocks the
shell for long), a state by the state names, a job
file by the shell's file completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

from procpool.cli.main import cli
from procpool.contract.states import JOB_STATES, TASK_STATES

#: Seconds a completion waits for the daemon's answer (env PROCPOOL_COMPLETE_TIMEOUT overrides it).
ASK_TIMEOUT = 0.5


def ask_timeout() -> float:
    """How long a completion waits for the daemon: PROCPOOL_COMPLETE_TIMEOUT (seconds, 0.01 to
    60) for a slow machine, else :data:`ASK_TIMEOUT`."""
    import os

    try:
        seconds = float(os.environ.get("PROCPOOL_COMPLETE_TIMEOUT", ASK_TIMEOUT))
    except ValueError:
        return ASK_TIMEOUT
    return min(max(seconds, 0.01), 60.0) if seconds == seconds else ASK_TIMEOUT
#: At most this many ids are offered (the newest jobs first).
MAX_IDS = 200
#: Names of the parameters completed as ids, states and files.
ID_PARAMS = frozenset({"id", "ids", "job", "task"})
STATE_PARAMS = frozenset({"state"})
FILE_PARAMS = frozenset({"file"})

SHELLS = ("bash", "zsh", "fish")

_INSTALL = {
    "bash": 'eval "$(procctl completion bash)"   # in ~/.bashrc (bash 4.4 or later)',
    "zsh": 'eval "$(procctl completion zsh)"    # in ~/.zshrc, after compinit',
    "fish": "procctl completion fish > ~/.config/fish/completions/procctl.fish",
}


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    It completes commands and options, job and task ids (asking the daemon, for at most half a
    second), state names and job files. To install it:

    \b
      bash:  eval "$(procctl completion bash)"   in ~/.bashrc (bash 4.4 or later)
      zsh:   eval "$(procctl completion zsh)"    in ~/.zshrc, after compinit
      fish:  procctl completion fish > ~/.config/fish/completions/procctl.fish

    \b
      procctl completion bash > /etc/bash_completion.d/procctl   for every user
    """
    from click.shell_completion import get_completion_class

    complete_class = get_completion_class(shell)
    if complete_class is None:  # click knows the three SHELLS; this is for a click without one
        raise click.UsageError(f"click has no completion for {shell}")
    click.echo(complete_class(cli, {}, "procctl", "_PROCCTL_COMPLETE").source())


def _socket(ctx: click.Context) -> Path:
    """The daemon's socket as the command line being completed names it (--socket before or
    after the subcommand), else the default."""
    from procpool.contract.paths import default_socket

    late = ctx.meta.get("late_socket")
    if late:
        return Path(late)
    given = ctx.find_root().params.get("socket_path")
    return Path(given) if given else default_socket()


def complete_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Job ids (``12``), and once a job is typed with a dot (``12.``), that job's task ids, with
    the name and state as their help. Nothing when the daemon does not answer quickly."""
    from procpool.client import Client

    try:
        with Client(_socket(ctx), timeout=ask_timeout()) as client:
            job_id, dot, _ = incomplete.partition(".")
            if dot:
                data = client.status(job_id)
                rows = [(t["id"], f"{t['name']} ({t['state']})") for t in data.get("tasks", [])]
            else:
                jobs = client.status(limit=MAX_IDS)["jobs"]["list"]
                rows = [(str(j["id"]), f"{j['name']} ({j['state']})") for j in jobs]
    except Exception:  # no daemon, not ours, too slow: complete nothing rather than fail the shell
        return []
    return [CompletionItem(value, help=help) for value, help in rows if value.startswith(incomplete)]


def complete_states(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names = dict.fromkeys((*JOB_STATES, *TASK_STATES))
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(incomplete, type="file")]


def completer_for(param: click.Parameter) -> Any:
    """The completion of a parameter that click would not complete by itself, by its name."""
    if isinstance(param.type, click.Choice) or param.name is None:
        return None
    if param.name in ID_PARAMS:
        return complete_ids
    if param.name in STATE_PARAMS:
        return complete_states
    if param.name in FILE_PARAMS and isinstance(param, click.Argument):
        return complete_files
    return None

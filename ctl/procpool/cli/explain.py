"""``procctl explain TASK``: why a task (or a job's unfinished tasks) is in its state."""

from __future__ import annotations

from typing import Any

import click

from procpool.cli.main import Settings, cli, emit, pass_settings

#: A job's unfinished tasks counted by reason, in words (the other reasons are words already).
_WAITING = {
    "dependency": "waiting on dependencies",
    "retry_delay": "waiting to retry",
    "after": "waiting for the job's --after prerequisites",
    "queued": "ready (queued)",
}


def explanation(data: dict[str, Any]) -> str:
    """The daemon's explanation as text: the task's (or job's) lines, then a job's tasks, indented."""
    lines: list[str] = []
    if data.get("kind") == "task":
        lines.append(f'task {data["task"]} "{data["name"]}" is {data["state"]}')
        lines += [f"  {line}" for line in data.get("text", [])]
        return "\n".join(lines)
    lines += data.get("text", [])
    unfinished = data.get("unfinished")
    if unfinished:
        lines.append("unfinished tasks: " + ", ".join(f"{n} {_WAITING.get(reason, reason)}"
                                                      for reason, n in unfinished.items()))
    for task in data.get("tasks", []):
        lines.append(f'  {task["task"]} "{task["name"]}" {task["state"]}')
        lines += [f"    {line}" for line in task.get("text", [])]
    more = data.get("more")
    if more:
        lines.append(f"  ... and {more} more (procctl explain {data['job']}.N for one of them)")
    return "\n".join(lines)


@cli.command()
@click.argument("task_id", metavar="TASK")
@pass_settings
def explain(settings: Settings, task_id: str) -> None:
    """Say why a task is in its state.

    TASK is a task id (12.3) or job/name (12/fetch): which dependency it waits for and that one's
    state, its place in the ready queue and how many are ahead at a higher priority, an engine
    without a free slot (or down), a retry delay and the time left, a job waiting for its --after
    prerequisites or held after a restart (procctl resume), why it was skipped or cancelled, and
    for a task that ran, how each attempt ended. A job id (12) explains the job and, briefly, its
    unfinished tasks (a finished job: those that failed).

    \b
    Examples:
      procctl explain 12.3
      procctl explain 12/report
      procctl explain 12
      procctl --json explain 12.3
    """
    with settings.client() as client:
        data = client.explain(task_id)
    emit(settings, data, lambda: explanation(data))

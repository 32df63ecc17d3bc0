"""``procctl retry JOB``: run a finished job's tasks that did not complete again (a new run)."""

from __future__ import annotations

from typing import Any

import click

from procpool.cli.main import Settings, cli, emit, pass_settings
from procpool.contract.words import plural


def retry_text(result: dict[str, Any]) -> str:
    """What ``procctl retry`` prints of the daemon's reply."""
    job, again = result["id"], result["again"]
    if not again:
        return f"job {job} completed: nothing to retry"
    names = list(result.get("tasks") or [])
    shown = ", ".join(str(n) for n in names)
    more = again - len(names)
    if more > 0:
        shown += f" and {more} more"
    return (f"job {job} run {result['run']}: {plural(again, 'task')} again ({shown}), "
            f"{plural(result['kept'], 'completed task')} kept")


@cli.command()
@click.argument("job", metavar="JOB")  # (named so: the shell completes job and task ids)
@click.option(
    "--task", "task", multiple=True, metavar="ID_OR_NAME",
    help="Only this task (12.3, 12/name, or the name of a task or group of the job) and what waits "
    "on it that did not complete. Repeatable.",
)
@click.option("--wait", "wait_", is_flag=True, help="Then wait until the job has finished (as procctl wait).")
@click.pass_context
@pass_settings
def retry(settings: Settings, ctx: click.Context, job: str, task: tuple[str, ...], wait_: bool) -> None:
    """Run a finished job's failed, timed-out, cancelled and skipped tasks again.

    The retry is a new run of the same job (same id, run number + 1): its completed tasks are
    kept with their results (procctl result shows them) and its namespace carries over; each task
    run again starts afresh, with its retries counted anew. The tasks of a sequential group after
    a failed step run again after it. --task narrows the retry to the tasks named and those that
    wait on them (through depends_on or a group) that did not complete; a task that waits on one
    that did not complete and is not retried is refused, naming it.

    Only the job's submitter or an administrator may retry it. A job that has not finished is
    refused (exit 1), as is a repeating job; a job that completed has nothing to retry (a message,
    exit 0); a job removed by retention or procctl clean is not found (exit 2). With --wait, the
    exit code is procctl wait's: 0 if the job completed, 1 if not.

    \b
    Examples:
      procctl retry 12                             every task that did not complete
      procctl retry 12 --task fetch                fetch, and what waits on it
      procctl retry 12 --task 12.3 --task report   two tasks (and what waits on them)
      procctl retry 12 --wait                      then wait for the job to finish
      procctl status 12                            the run, and the tasks kept from earlier runs
    """
    with settings.client() as client:
        result = client.retry(job, list(task) or None)
    if wait_ and not settings.json:
        click.echo(retry_text(result))
    elif not wait_:
        emit(settings, result, lambda: retry_text(result))
        return
    from procpool.cli.jobs import wait

    ctx.invoke(wait, id=str(result["id"]), wait_timeout=None, every_task=False)

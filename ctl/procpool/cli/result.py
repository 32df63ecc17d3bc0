"""``procctl result ID``: a task's return value as JSON, or a job's results by task path.

Served by the ``status`` operation (a task's reply, or the job's status with every task), which
holds each task's result: no operation of its own. Exits 1 with one line on stderr when the task
did not complete (or, for a job, naming how many of its tasks did not), after printing what there
is of a job's results.
"""

from __future__ import annotations

import json
from typing import Any

import click

from procpool.cli import failures
from procpool.cli.main import EXIT_FAILED, Settings, cli, fail, pass_settings
from procpool.contract.states import COMPLETED


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _not_completed(t: dict[str, Any]) -> str:
    """``task 12.3 ("fetch") failed: ValueError: disk full``."""
    what = failures.headline(t)
    return f'task {t["id"]} ("{t["name"]}") {t["state"]}' + (f": {what}" if what else "")


@cli.command()
@click.argument("id")
@pass_settings
def result(settings: Settings, id: str) -> None:
    """Print the return value of a task as JSON (ID: 12.3 or 12/name), or for a job (ID: 12) its
    tasks' return values as one JSON object by task path. A command task's value is null.

    Exits 1 when the task did not complete, or a task of the job did not (a job's completed
    tasks are printed all the same).

    \b
    Examples:
      procctl result 12.3
      procctl result 12/fetch | jq .rows
      procctl result 12
    """
    with settings.client() as client:
        data = client.status(id)
    if "task" in data:
        t = data["task"]
        if t["state"] != COMPLETED:
            fail(_not_completed(t), f"procctl status {t['id']} shows why", code=EXIT_FAILED)
        click.echo(_json(t.get("result")))
        return
    tasks = data["tasks"]
    done = {t["path"]: t.get("result") for t in tasks if t["state"] == COMPLETED}
    click.echo(_json(done))
    missing = [t for t in tasks if t["state"] != COMPLETED]
    if missing:
        job_id = data["job"]["id"]
        first = _not_completed(missing[0])
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        fail(f"{len(missing)} of {len(tasks)} task(s) of job {job_id} did not complete: {first}{more}",
             f"procctl status {job_id} shows why", code=EXIT_FAILED)

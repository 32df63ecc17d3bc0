"""``procctl logs``: the log of a job or a task, from journald or from the daemon's job log files.

The daemon answers the ``logs`` operation with where its records go. When it writes to journald,
procctl reads the journal itself (``systemd.journal.Reader``, matching the ``PROCPOOL_*`` fields
the reply names); when it writes to stderr, the reply carries the job's records from its log file
in the daemon's state directory, a page at a time (``more``: ask again from ``cursor``; with
``-n``, ``older``: ask again further back), or, from a daemon that keeps no files (or when the
journal cannot be read here), its bounded tail of recent lines per task. ``-f`` keeps printing
until the job or task has finished and its last records were written.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from procpool.cli import failures
from procpool.cli.main import Settings, cli, fail, pass_settings

if TYPE_CHECKING:
    from procpool.client import Client

_POLL = 0.2  # seconds between follow rounds


def format_record(record: dict[str, Any], job_id: str | None) -> str:
    """``2026-11-23 14:00:01.234 12.3#1 stdout: message`` (job-level records show the job id)."""
    when = datetime.fromtimestamp(record.get("ts") or 0).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    who = record.get("task_id") or job_id or "?"
    if record.get("attempt"):
        who += f"#{record['attempt']}"
    return f"{when} {who} {record.get('stream', 'log')}: {failures.log_message(record.get('message', ''))}"


class _Printer:
    def __init__(self, as_json: bool, job_id: str | None) -> None:
        self.as_json = as_json
        self.job_id = job_id
        self.count = 0

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.count += len(records)
        if self.as_json:
            text = "\n".join(json.dumps({"job_id": self.job_id, **r}, sort_keys=True, default=str)
                             for r in records)
        else:
            text = "\n".join(format_record(r, self.job_id) for r in records)
        click.echo(text)  # (a page at once: one write, not one per line)


def _query(client: Client, id: str, attempt: int | None, source: str, **more: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"id": id, "source": source, **more}
    if attempt is not None:
        args["attempt"] = attempt
    reply: dict[str, Any] = client.call("logs", args)
    return reply


@cli.command()
@click.argument("id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job or task has finished.")
@click.option("--attempt", type=click.IntRange(min=1), help="Only this attempt of the task(s).")
@click.option("-n", "--lines", type=click.IntRange(min=0), help="Only the last LINES lines.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record (all its fields).")
@click.option(
    "--source",
    type=click.Choice(["auto", "journal", "daemon"]),
    default="auto",
    show_default=True,
    help="Read journald, or the daemon's own copy (its job log files); auto: whatever the daemon uses.",
)
@pass_settings
def logs(
    settings: Settings,
    id: str,
    follow: bool,
    attempt: int | None,
    lines: int | None,
    as_json: bool,
    source: str,
) -> None:
    """Show the log of a job or a task (ID: 12, 12.3 or 12/name): its output and lifecycle records.

    Under journald it reads the journal; otherwise the daemon's own job log files, kept as long as
    the job is.

    \b
      procctl logs 12                              the whole job
      procctl logs 12/fetch -n 50                  the last 50 lines of its task "fetch"
      procctl logs 12 -f                           follow it until it finishes
      procctl logs 12 --json | jq -r .message      one JSON object per record
    """
    with settings.client() as client:
        reply = _query(
            client,
            id,
            attempt,
            "tail" if source == "daemon" else "auto",
            **({"lines": lines} if lines is not None else {}),
        )
        show = _Printer(as_json or settings.json, reply["job_id"])
        if reply["target"] == "journal" and reply.get("source") == "journal":
            from procpool.logs_reader import JournalLog

            journal_log = None
            try:
                journal_log = JournalLog(reply["match"], reply.get("since"))
            except (OSError, ImportError) as exc:
                why = str(exc)
            else:
                why = "no journal file is readable (try as root, or in the systemd-journal group)"
            if journal_log is not None and journal_log.readable():
                _from_journal(client, journal_log, id, attempt, lines, follow, show)
                return
            if source == "journal":
                fail(f"cannot read the journal: {why}", "use --source daemon for the daemon's recent lines")
            click.echo(
                f"procctl: cannot read the journal ({why}); showing the daemon's recent lines", err=True
            )
            reply = _query(client, id, attempt, "tail", **({"lines": lines} if lines is not None else {}))
        elif source == "journal":
            fail(
                f"the daemon writes its log to {reply['target']}, not to journald",
                "use --source daemon or leave --source out",
            )
        _from_tail(client, reply, id, attempt, follow, show, lines)


def _from_tail(
    client: Client,
    reply: dict[str, Any],
    id: str,
    attempt: int | None,
    follow: bool,
    show: _Printer,
    lines: int | None = None,
) -> None:
    """Print the records of ``reply`` and of the pages after it (``more``), and with ``follow`` the
    records that come until the job or task has finished. With ``lines`` (the ``-n`` the first
    request asked for), pages further back (``older``) complete the last ``lines`` records first."""
    records = reply["records"]
    older = reply.get("older")
    while lines is not None and older is not None and len(records) < lines:
        back = _query(client, id, attempt, "tail", lines=lines - len(records), before=older)
        records = back["records"] + records
        older = back.get("older")
    show(records)
    if reply.get("truncated") and not show.as_json and reply["records"]:
        click.echo("procctl: older lines are no longer kept by the daemon", err=True)
    cursor = reply["cursor"]
    while reply.get("more") or (follow and not reply["finished"]):
        if not reply.get("more"):
            time.sleep(_POLL)
        reply = _query(client, id, attempt, "tail", after=cursor)
        show(reply["records"])
        cursor = reply["cursor"]
    capped = reply.get("log_file") or {}
    if capped.get("capped") and not show.as_json:
        dropped = capped.get("dropped")
        how_many = f": {dropped:,} record(s) dropped" if dropped else ""
        click.echo(f"procctl: job {reply['job_id']}'s log reached its cap (log_job_max_bytes = "
                   f"{capped.get('max_bytes', 0):,} bytes); its later output was not kept{how_many}",
                   err=True)


def _from_journal(
    client: Client,
    journal_log: Any,
    id: str,
    attempt: int | None,
    lines: int | None,
    follow: bool,
    show: _Printer,
) -> None:
    try:
        show(journal_log.last(lines))
        if not follow:
            return
        while True:
            show(journal_log.follow(_POLL))
            if _query(client, id, attempt, "auto", lines=0)["finished"]:
                break
        # The daemon has sent everything; give journald a moment to store what is in flight.
        quiet_until = time.monotonic() + 0.5
        while time.monotonic() < quiet_until:
            more = journal_log.follow(0.1)
            show(more)
            if more:
                quiet_until = time.monotonic() + 0.5
    finally:
        journal_log.close()

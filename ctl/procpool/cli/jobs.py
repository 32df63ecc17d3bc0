"""Job commands: submit, validate, run, status, wait, cancel, stop, resume, clean."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from procpool.cli import output, render
from procpool.cli.logs import _from_tail, _Printer, _Query
from procpool.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    Age,
    Seconds,
    Settings,
    cli,
    emit,
    fail,
    pass_settings,
    warn,
)
from procpool.contract.limits import DEFAULT_LIMITS, Limits
from procpool.contract.states import COMPLETED, FAILED, FINAL_JOB_STATES, HELD, JOB_STATES, RUNNING
from procpool.contract.status import JobStatus, follow, is_changes
from procpool.contract.words import plural

if TYPE_CHECKING:
    from procpool.client import Client
    from procpool.contract.tree import JobSpec, TaskSpec

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_POLL = 0.2  # seconds between live-progress refreshes (client side only)
#: The dispatch priorities: procpool.contract.tree.PRIORITIES, spelled out so that `procctl`
#: loads the tree validator only for the commands that validate (a unit test keeps them equal).
PRIORITIES: tuple[str, ...] = ("critical", "high", "normal", "low", "batch")
#: Seconds a submit waits for its job when nothing is shown meanwhile (then `wait` goes on).
_SUBMIT_WAIT = 30.0
#: Jobs of up to this many tasks are shown as a tree (big groups collapsed to their counts);
#: up to TREE_MAX_TASKS too when that tree has at most TREE_LINES lines; others as a summary.
TREE_TASKS = 100
TREE_MAX_TASKS = 1_000
TREE_LINES = 100


def read_job_file(source: str) -> Any:
    """Read a job file (``-`` for stdin) and decode its JSON, exiting 2 on any error."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}", "check the path")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def check_job(source: str, raw: Any, limits: Limits = DEFAULT_LIMITS) -> JobSpec:
    """Validate a decoded job file locally; exit 2 with its first problem (and JSON path)."""
    from procpool.contract.tree import TreeError, parse_job

    try:
        return parse_job(raw, limits)
    except TreeError as exc:
        fail(f"{source}: {exc.message}", exc.hint or "see docs/job-trees.md for the format")


def _show_job(settings: Settings, client: Client, status: JobStatus, every_task: bool = False) -> None:
    """The end of a wait for a job (``submit --wait``, ``wait``): its head, its counts and what
    failed, read from the columnar status in hand; with ``every_task`` its whole tree."""
    if every_task:
        _print_tree(client, status.job["id"], every_task)
        return
    hint = f"; procctl status {status.job['id']} --state failed lists the failed ones"
    output.echo(render.job_summary(status, time.time(), hint=hint))


def _print_tree(client: Client, job_id: str, every_task: bool) -> None:
    """A job as its tree (every task fetched in the full view); groups of more than
    COLLAPSE_CHILDREN children as a line of counts unless ``every_task``."""
    full = client.status(job_id)
    output.echo(render.job_tree(full, time.time(), collapse=None if every_task else render.COLLAPSE_CHILDREN))


def _show(settings: Settings, data: Any, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with --json, else its text (coloured on a terminal: see output)."""
    if settings.json:
        emit(settings, data, text)
    else:
        output.echo(text())


def _finish(
    settings: Settings, client: Client, first: dict[str, Any], live: bool, every_task: bool = False
) -> None:
    """Wait for a job with live progress; print its summary and what failed; exit 0 if it
    completed, 1 if not.

    ``first`` is the reply of a submit with ``wait``: the job's status in the view this needs
    (full with ``--json``, else columns) once it finished or the submit's wait ran out, so a job
    that ends within that wait takes one round trip in all."""
    job_id = first["id"]
    _waiting_for(job_id)
    if settings.json:  # the full status (format 1), as before the columnar view existed
        result = first if first["finished"] else client.wait(job_id)
        emit(settings, result["status"], "")
        sys.exit(EXIT_OK if result["state"] == COMPLETED else EXIT_FAILED)
    if live:
        status = _columns(first["status"])
        line = output.ProgressLine()
        try:
            while True:
                line.show(render.progress_line(status, line.width()))
                if status.state in FINAL_JOB_STATES:
                    break
                status = _progress(client, job_id, status)
        finally:
            line.close()
    else:
        status = _columns((first if first["finished"] else client.wait(job_id, view="columns"))["status"])
    _show_job(settings, client, status, every_task)
    sys.exit(EXIT_OK if status.state == COMPLETED else EXIT_FAILED)


def _waiting_for(job_id: str) -> None:
    """What a Ctrl-C from now on names as going on in the daemon (see ProcctlGroup.invoke)."""
    ctx = click.get_current_context()
    ctx.find_root().meta["waiting_for"] = job_id


def _progress(client: Client, job_id: str, status: JobStatus) -> JobStatus:
    """The next progress update of a job: waits up to ``_POLL`` for it to end, then brings
    ``status`` up to date with the tasks that changed since its cursor (O(changed), not the whole
    job each time); the whole status, every page, when there is no cursor yet or the daemon cannot
    answer with what changed (it restarted, or too much changed for one reply)."""
    if status.cursor is not None:
        args = {"id": job_id, "timeout": _POLL, "view": "columns", "changes_since": status.cursor}
        wire = client.call("wait", args, timeout=_POLL + client.timeout)["status"]
        if is_changes(wire) and not wire.get("more"):
            status.apply(wire)
            return status
    return follow(client.call, job_id, status if status.cursor is not None else None)


def _columns(status: Any) -> JobStatus:
    if not isinstance(status, JobStatus):  # the client decodes a job's columnar status
        fail(f"expected a job's status, got {type(status).__name__}")
    return status


@cli.command()
@click.argument("file")
@click.option(
    "--wait", "wait_", is_flag=True, help="Wait for the job, with live progress; exit 1 unless it completed."
)
@click.option("--after", multiple=True, metavar="ID", help="Start only after this job or task succeeded.")
@click.option("--tasks", "--all", "every_task", is_flag=True,
              help="With --wait: show every task at the end (its whole tree).")
@click.option("--replace", is_flag=True,
              help="Cancel the unfinished job(s) with the job's key and take their place.")
@pass_settings
def submit(
    settings: Settings, file: str, wait_: bool, after: tuple[str, ...], every_task: bool, replace: bool
) -> None:
    """Submit the job tree in FILE (or - for stdin); prints the job id.

    With --wait, a progress line while it runs, then the job's counts and what failed.

    \b
      procctl submit examples/hello.json           prints the job's id
      procctl submit nightly.json --wait           waits; exit 0 if it completed
      procctl submit step2.json --after 12         starts once job 12 completed
      procctl submit build.json --replace          cancels the running job with its key
      generate-tree | procctl submit -             the tree from stdin
    """
    raw = read_job_file(file)
    if replace and not (isinstance(raw, dict) and raw.get("key")):
        fail(f'{file}: --replace needs the job\'s "key"',
             'give the job a "key": the job it replaces has it too')
    with settings.client() as client:
        try:
            # The daemon validates the tree; the client checks it only if the submission failed.
            if not wait_:
                reply = client.submit(raw, list(after) or None, replace=replace)
            elif settings.json:
                reply = client.submit(raw, list(after) or None, wait=_SUBMIT_WAIT, replace=replace)
            else:  # the first progress update comes with the reply
                reply = client.submit(raw, list(after) or None, wait=_POLL, view="columns",
                                      replace=replace)
        except Exception:
            # A tree the client refuses gets its error as before, whatever else went wrong (no
            # daemon, a request too large): the file, the JSON path of the problem, exit 2.
            check_job(file, raw, DEFAULT_LIMITS.following(settings.max_message_size))
            raise
        note = " (already submitted with this key)" if reply["existing"] else _replaced(reply)
        if not wait_:
            emit(settings, reply, f"{reply['id']}{note}")
            return
        _waiting_for(reply["id"])  # before anything is printed: a Ctrl-C from now on names the job
        if not settings.json:
            click.echo(f'job {reply["id"]} "{reply["name"]}" submitted{note}', err=True)
        _finish(settings, client, reply, live=True, every_task=every_task)


@cli.command()
@click.argument("file")
@pass_settings
def validate(settings: Settings, file: str) -> None:
    """Check a job file without submitting it; print the order tasks could start in.

    Warns (exit still 0) when a callable's module or a command's program cannot be found here.

    \b
      procctl validate nightly.json
      procctl --json validate nightly.json         the order as JSON
    """
    job = check_job(file, read_job_file(file), DEFAULT_LIMITS.following(settings.max_message_size))
    from procpool.contract.tree import compile_job

    plan = job.plan or compile_job(job)
    order = [
        {"name": job.tasks[i].name, "path": job.tasks[i].path, "kind": job.tasks[i].kind}
        for i in plan.start_order()
    ]
    warnings = [w for task in job.tasks for w in _not_found_here(task, job.python_path)]
    data: dict[str, Any] = {
        "valid": True, "name": job.name, "tasks": len(job.tasks), "order": order, "warnings": warnings}
    cycling = [  # the groups and tasks with their own repeat/every (docs/job-trees.md, Cycles)
        {"kind": kind, "name": (job.tasks[i] if kind == "task" else job.groups[i]).name,
         "repeat": "forever" if repeat is None else repeat, "every": every}
        for (kind, i), (repeat, every) in job.cycles.items()
    ]
    if cycling:
        data["cycles"] = cycling
    if not settings.json:
        for warning in warnings:
            warn(warning)

    def text() -> str:
        lines = [f'{file}: valid job "{job.name}" with {plural(len(job.tasks), "task")}; start order:']
        lines += [f"  {n + 1:>3}. {o['name']}  ({o['kind']} at {o['path']})" for n, o in enumerate(order)]
        lines += [f"  {c['kind']} {c['name']} cycles on its own clock: repeat {c['repeat']}"
                  + (f", every {c['every']:g} s" if c["every"] is not None else "") for c in cycling]
        return "\n".join(lines)

    emit(settings, data, text)


def _not_found_here(task: TaskSpec, python_path: list[str]) -> list[str]:
    """Warnings for a task whose callable's module or command's program cannot be found here.

    Only warnings: the daemon's environment (its PATH, its Python path, the user it runs the task
    as) may differ from procctl's. A callable's module is looked up with importlib's find_spec
    (which imports the packages above it), the job's ``python_path`` first; a command's program
    on the task's PATH (its ``env``'s, else procctl's) unless it names a path; a shell command is
    not looked into."""
    if task.kind == "call" and task.call:
        import importlib
        import importlib.util

        module = task.call.partition(":")[0]
        saved = list(sys.path)
        sys.path[:0] = [str(Path(task.cwd or ".") / p) for p in python_path]
        importlib.invalidate_caches()
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception:  # a parent package that is missing, or fails to import
            found = False
        finally:
            sys.path[:] = saved
        if not found:
            return [f"{task.path}.call: module {module!r} is not found here (by procctl's Python); "
                    "the daemon's may still find it"]
        return []
    if task.kind != "cmd" or task.shell or not isinstance(task.cmd, list) or not task.cmd:
        return []
    import os
    import shutil

    program = task.cmd[0]
    if "/" in program:
        where = Path(task.cwd or ".") / program if not program.startswith("/") else Path(program)
        if where.is_file() and os.access(where, os.X_OK):
            return []
        why = "is not executable" if where.is_file() else "does not exist"
        return [f"{task.path}.cmd[0]: {program!r} {why} here; the daemon's host or user may differ"]
    if shutil.which(program, path=task.env.get("PATH", os.environ.get("PATH", os.defpath))) is None:
        return [f"{task.path}.cmd[0]: {program!r} is not found on PATH here; the daemon's PATH may differ"]
    return []


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class _RunCommand(click.Command):
    """``procctl run``: its options go before the callable or the command; it remembers whether
    the words came after ``--`` (then they are all the command's or the callable's, options or not)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["run_dashdash"] = "--" in args
        return super().parse_args(ctx, args)


def _looks_like_option(word: str) -> bool:
    """``--wait``, ``-x``: not a JSON number such as ``-5``."""
    if not word.startswith("-") or word == "-":
        return False
    try:
        json.loads(word)
    except ValueError:
        return True
    return False


@cli.command(cls=_RunCommand, context_settings={"allow_interspersed_args": False})
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--name", help="Task (and job) name.")
@click.option(
    "--timeout", "task_timeout", type=click.FloatRange(min=0, min_open=True),
    help="Seconds per attempt (here, not the global --timeout: put that before 'run').",
)
@click.option("--retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--retry-delay", type=click.FloatRange(min=0), help="Seconds before the first retry.")
@click.option("--kill-grace", type=Seconds(), metavar="SECONDS",
              help="Seconds from the signal that stops it (a timeout, a cancel) to SIGKILL.")
@click.option("--priority", type=click.Choice(PRIORITIES), help="Dispatch priority.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("--cwd", help="Working directory.")
@click.option("--tag", "tags", multiple=True, help="Label (repeatable).")
@click.option("--shell", is_flag=True, help="Run the command words as one /bin/sh -c string.")
@click.option("--kwarg", "kwargs", multiple=True, metavar="KEY=JSON", help="Keyword argument of a callable.")
@click.option("--after", multiple=True, metavar="ID", help="Start only after this job or task succeeded.")
@click.option("--key", help="Idempotency key.")
@click.option("--replace", is_flag=True,
              help="With --key: cancel the unfinished job(s) with that key and take their place.")
@click.option("--user", help="Run as this user (root or an administrator only).")
@click.option(
    "--wait", "wait_", is_flag=True, help="Wait for the task, showing its output; exit with its exit status."
)
@pass_settings
def run(
    settings: Settings,
    argv: tuple[str, ...],
    name: str | None,
    task_timeout: float | None,
    retries: int | None,
    retry_delay: float | None,
    kill_grace: float | None,
    priority: str | None,
    env: tuple[str, ...],
    cwd: str | None,
    tags: tuple[str, ...],
    shell: bool,
    kwargs: tuple[str, ...],
    after: tuple[str, ...],
    key: str | None,
    replace: bool,
    user: str | None,
    wait_: bool,
) -> None:
    """Submit a one-task job: a callable or a command; print its id.

    \b
      procctl run [OPTIONS] pkg.module:function [ARG...]   (ARGs are JSON, else strings)
      procctl run [OPTIONS] -- CMD [ARG...]

    Options go before the callable or the command. With --wait, procctl says the job's id on
    stderr, then streams the task's output while it runs (its stdout lines on stdout; its
    stderr lines, log records, progress and what the daemon does with it on stderr), ends with
    the task's line, and exits with the task's exit status:

    \b
      0      the task completed
      N      a command's own exit code N (so 2 to 5 may be the command's too)
      128+N  a command killed by signal N (143 for SIGTERM), as shells say it
      1      anything else that did not complete: a failed callable, a timeout,
             a cancel, a command that could not start
      130    Ctrl-C: procctl stopped waiting; the task goes on (it says its id)

    Reusing a --key submits nothing: procctl names the job that has that key. With --replace,
    the unfinished job(s) with that key are cancelled ("replaced by job N") and the new one runs
    in their place, as CI systems cancel a superseded build.

    \b
      procctl run -- make -C /srv/build            prints the job's id
      procctl run --wait --timeout 60 -- ./backup.sh
      procctl run --wait procpool.demo:checksum '"abc"'
      procctl run --retries 3 --env MODE=fast pkg.jobs:refresh 10
      procctl run --key deploy --replace -- ./deploy.sh
    """
    if replace and not key:
        fail("--replace needs --key", "the job it replaces is the one with that key")
    words = list(argv)
    dashdash = bool(click.get_current_context().meta.get("run_dashdash"))
    stray = [w for w in words[1:] if _looks_like_option(w)] if not dashdash else []
    if stray:
        what = "callable" if _CALLABLE.match(words[0]) else "command"
        form = "pkg.module:function [ARG...]" if what == "callable" else "-- CMD [ARG...]"
        fail(f"{stray[0]!r} comes after the {what}: procctl run's options go before it",
             f"procctl run [OPTIONS] {form}; to pass words that start with '-', put them after --")
    task: dict[str, Any] = {}
    if _CALLABLE.match(words[0]) and not shell:
        task["call"] = words[0]
        task["args"] = [_parse_arg(a) for a in words[1:]]
        if kwargs:
            task["kwargs"] = {}
            for item in kwargs:
                k, sep, v = item.partition("=")
                if not sep:
                    fail(f"--kwarg {item!r} is not KEY=JSON")
                task["kwargs"][k] = _parse_arg(v)
    else:
        if kwargs:
            fail("--kwarg applies to callables, not commands")
        task["cmd"] = " ".join(words) if shell else words
        if shell:
            task["shell"] = True
    for field, value in (
        ("name", name),
        ("timeout", task_timeout),
        ("retries", retries),
        ("retry_delay", retry_delay),
        ("kill_grace", kill_grace),
        ("priority", priority),
        ("cwd", cwd),
    ):
        if value is not None:
            task[field] = value
    if env:
        task["env"] = {}
        for item in env:
            k, sep, v = item.partition("=")
            if not sep:
                fail(f"--env {item!r} is not KEY=VALUE")
            task["env"][k] = v
    if tags:
        task["tags"] = list(tags)
    job: dict[str, Any] = {"name": name or (task.get("call") or words[0]), "root": task}
    if key:
        job["key"] = key
    if user:
        job["user"] = user
    from procpool.contract.tree import TreeError, parse_job

    try:
        parse_job(job)
    except TreeError as exc:
        fail(exc.message, exc.hint)
    with settings.client() as client:
        if not wait_:
            reply = client.submit(job, list(after) or None, replace=replace)
            if (reply["existing"] or reply.get("replaced")) and not settings.json:
                note = _EXISTING if reply["existing"] else _replaced(reply)
                click.echo(f"procctl: job {reply['id']}{note}", err=True)
            emit(settings, reply, reply["id"])
            return
        if settings.json:  # one document: the job's full status once it finished
            reply = client.submit(job, list(after) or None, replace=replace)
            _waiting_for(reply["id"])  # a Ctrl-C from now on names the job
            result = client.wait(reply["id"])
            emit(settings, result["status"], "")
            sys.exit(run_exit_status(result["status"]["tasks"][0]))
        reply = client.submit(job, list(after) or None, replace=replace)
        _waiting_for(reply["id"])  # before it is said: a Ctrl-C from then on names the job
        note = _EXISTING if reply["existing"] else _replaced(reply)
        click.echo(f'job {reply["id"]} "{reply["name"]}" submitted{note}', err=True)
        _follow_run(client, reply["id"])


_EXISTING = " (already submitted with this key)"


def _replaced(reply: dict[str, Any]) -> str:
    """`` (replaced job 12)``: what a submit with --replace cancelled (nothing: "")."""
    ids = reply.get("replaced") or []
    return f" (replaced {'job' if len(ids) == 1 else 'jobs'} {', '.join(ids)})" if ids else ""
#: Seconds between looks at a ``run --wait`` task's progress (its output comes as it is written).
_PROGRESS_EVERY = 1.0


def run_exit_status(task: dict[str, Any]) -> int:
    """What ``run --wait`` exits with for its task: 0 if it completed; a command's own exit code,
    or 128+N when a signal N killed it (as shells do); 1 for anything else that did not complete
    (a failed callable, a timeout, a cancel, a command that could not start)."""
    if task.get("state") == COMPLETED:
        return EXIT_OK
    if task.get("kind") == "cmd" and task.get("state") == FAILED:
        code, sig = task.get("exit_code"), task.get("signal")
        if isinstance(sig, str) and sig.upper().startswith("SIG"):
            import signal

            try:
                sig = int(signal.Signals[sig.upper()])
            except KeyError:
                sig = None
        if isinstance(sig, int) and not isinstance(sig, bool) and 0 < sig < 128:
            return 128 + sig
        if isinstance(code, int) and not isinstance(code, bool):
            if 0 < code < 256:
                return code
            if -128 < code < 0:  # a signal, as Python's subprocess reports it
                return 128 - code
    return EXIT_FAILED


def _follow_run(client: Client, job_id: str) -> None:
    """``run --wait``: stream the task's output while it runs (through the daemon's ``logs``
    operation, as ``procctl logs -f`` follows it), show its progress when it changes, then its
    final line, and exit with :func:`run_exit_status`."""
    query = _Query(client, job_id, None, {})
    _from_tail(query, query("tail"), True, _RunOutput(client, job_id))
    result = client.wait(job_id)
    task = result["status"]["tasks"][0]
    click.echo(render.task_line(task, time.time()), err=True)
    sys.exit(run_exit_status(task))


class _RunOutput(_Printer):
    """Prints a ``run --wait`` task's log records as they come: its stdout lines on stdout, its
    stderr lines on stderr, the rest (its log records, the daemon's lifecycle lines about it) on
    stderr with who and what; and, at most every ``_PROGRESS_EVERY`` seconds, its progress when it
    changed. The log follower calls it once per round, also with no records."""

    def __init__(self, client: Client, job_id: str) -> None:
        super().__init__(False, job_id)
        self.client = client
        self.next_look = time.monotonic() + _PROGRESS_EVERY
        self.shown = ""

    def __call__(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.count += 1
            stream, message = record.get("stream"), str(record.get("message", ""))
            if stream == "stdout":
                click.echo(message)
            elif stream == "stderr":
                click.echo(message, err=True)
            elif record.get("task_id"):  # job-level lines (submitted, finished) are said otherwise
                who = record["task_id"] + (f"#{record['attempt']}" if record.get("attempt") else "")
                click.echo(f"[{who} {stream}] {message}", err=True)
        if time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + _PROGRESS_EVERY
            task = self.client.status(self.job_id or "")["tasks"][0]
            text = render.progress_text(task.get("progress")) if task.get("state") == RUNNING else ""
            if text and text != self.shown:
                click.echo(f"[{task['id']} progress] {text}", err=True)
                self.shown = text


@cli.command()
@click.argument("job", required=False)
@click.option("--state", help="Only jobs in this state; with JOB, only its tasks in this state.")
@click.option("--name", metavar="PATTERN", help="Only jobs with this name (a shell pattern: 'nightly-*').")
@click.option("--user", help="Only jobs of this user (a name or uid).")
@click.option("--tag", help="Only jobs with a task that has this tag.")
@click.option("--since", type=Age(), metavar="AGE", help="Only jobs created within AGE (30s, 2h, 1d, 2w).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many jobs."
)
@click.option("--all", "every", is_flag=True,
              help="Every job that matches (as many as the daemon sends in one list); with JOB, as --tasks.")
@click.option("--tasks", "every_task", is_flag=True,
              help="With JOB: every task, in its whole tree (no group collapsed to its counts).")
@click.option("--watch", is_flag=True, help="Redraw JOB until it ends; exit 0 if it completed, 1 if not.")
@click.option("--interval", type=Seconds(min=0.05), default=1.0, help="Seconds between --watch redraws.")
@pass_settings
def status(
    settings: Settings,
    job: str | None,
    state: str | None,
    name: str | None,
    user: str | None,
    tag: str | None,
    since: float | None,
    limit: int,
    every: bool,
    every_task: bool,
    watch: bool,
    interval: float,
) -> None:
    """Show the daemon and its jobs, or one job (JOB is an id like 12, or a task: 12.3, 12/name).

    The list shows the newest --limit jobs that match, queued, running, held or finished. A
    job shows its counts, then its tree (a group of more than 20 children as a line of counts)
    when it is small enough, else what failed and what runs.

    \b
      procctl status --state failed --since 1d     failed jobs of the last day
      procctl status --name 'nightly-*' --all      every nightly job
      procctl status 12                            job 12: counts, tree or failures
      procctl status 12 --state failed             only its failed tasks
      procctl status 12 --tasks                    every task of it
    """
    with settings.client() as client:
        if watch:
            from procpool.cli.top import watch as watch_job

            watch_job(settings, client, job, interval)
        if job is not None:
            _status_of(settings, client, job, state, every_task or every)
            return
        since_ts = time.time() - since if since is not None else None
        data = client.status(state=state, since=since_ts, limit=_LIST_ALL if every else limit,
                             name=name, user=user, tag=tag)
    jobs = data["jobs"]
    matched = jobs.get("matched")
    more = "; --limit N or --all for more" if not every else ""
    _show(
        settings,
        data,
        lambda: render.summary(data) + "\n\n" + render.job_table(jobs["list"], time.time(), matched, more),
    )


#: ``status --all``: the daemon sends at most its status_page_size jobs in one list.
_LIST_ALL = 1_000_000


def _status_of(settings: Settings, client: Client, ref: str, state: str | None, every_task: bool) -> None:
    """``procctl status JOB``: its head and counts (the summary view: no work per task in the
    daemon), then its tasks in ``state``, its tree (a job of up to TREE_TASKS tasks, or up to
    TREE_MAX_TASKS whose tree with big groups collapsed fits in TREE_LINES lines, or
    ``every_task``), or what failed and what runs, each asked of the daemon by state (a page of
    at most LISTED_TASKS). A task id: its line."""
    if settings.json:  # the full status (format 1): every task (in ``state``), as before
        emit(settings, client.status(ref, tasks_state=state), "")
        return
    head: dict[str, Any] = client.call("status", {"job": ref, "view": "summary"})
    if "task" in head:  # a task id
        output.echo(render.task_report(head["task"], time.time()))
        return
    job = head["job"]
    hint = f"; procctl status {job['id']} --state failed lists the failed ones"
    if state is not None:
        output.echo(render.task_list(client.status(job["id"], tasks_state=state), time.time(), state))
    elif every_task or job["tasks"] <= TREE_TASKS:
        _print_tree(client, job["id"], every_task)
    elif job["tasks"] <= TREE_MAX_TASKS:
        full = client.status(job["id"])
        tree = render.job_tree(full, time.time())
        if tree.count("\n") < TREE_LINES:
            output.echo(tree)
        else:
            listed = [t for wanted in render.SUMMARY_STATES for t in full["tasks"] if t["state"] == wanted]
            output.echo(render.job_digest(full["job"], listed[: render.LISTED_TASKS], time.time(), hint))
    else:
        shown: list[dict[str, Any]] = []
        for wanted in render.SUMMARY_STATES:
            room = render.LISTED_TASKS - len(shown)
            if room > 0 and job["counts"].get(wanted):
                page = client.status(job["id"], tasks_state=wanted, tasks_limit=room)
                shown.extend(page["tasks"][:room])
                job = page["job"]  # (the newer head)
        output.echo(render.job_digest(dict(job), shown, time.time(), hint))



@cli.command()
@click.argument("id")
@click.option(
    "--timeout", "wait_timeout", type=Seconds(),
    help="Give up after this many seconds, exit 124 (not the global --timeout: put that before 'wait').",
)
@click.option("--tasks", "--all", "every_task", is_flag=True, help="Show every task of a job, however many.")
@pass_settings
def wait(settings: Settings, id: str, wait_timeout: float | None, every_task: bool) -> None:
    """Wait until a job or task has finished; print a job's counts and what failed; exit 0 if
    it completed, 1 if not, 124 if --timeout gave up first.

    \b
      procctl wait 12                              the job
      procctl wait 12.3                            one of its tasks (or 12/name)
      procctl wait 12 --timeout 600 || echo "not done yet"
    """
    _waiting_for(id)
    with settings.client() as client:
        result = client.wait(id, timeout=wait_timeout, view="full" if settings.json else "columns")
        status = result.get("status")
        if isinstance(status, JobStatus):
            _show_job(settings, client, status, every_task)
        elif status:
            _show(settings, result, lambda: render.job_tree(status, time.time()))
        else:
            _show(settings, result, lambda: render.task_report(result["task"], time.time()))
    if not result["finished"]:
        fail(f"{id} has not finished after {wait_timeout:g}s", "it goes on in the daemon: wait again, "
             f"or procctl cancel {id}", code=EXIT_WAIT_TIMEOUT)
    sys.exit(EXIT_OK if result["state"] == COMPLETED else EXIT_FAILED)


#: The job states a cancel's --state may name: those of a job that has not finished.
UNFINISHED_STATES: tuple[str, ...] = tuple(s for s in JOB_STATES if s not in FINAL_JOB_STATES)


@cli.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--kill", is_flag=True, help="SIGKILL the running attempts at once (no grace).")
@click.option("--signal", "signame", metavar="NAME",
              help="Send this signal first (TERM, INT, HUP, QUIT, USR1, USR2, ALRM, ABRT), then "
                   "SIGKILL after the grace; default TERM.")
@click.option("--grace", type=Seconds(), metavar="SECONDS",
              help="Seconds from the signal to SIGKILL for this cancel (default: the task's "
                   "kill_grace, else its job's, else the daemon's).")
@click.option("--state", type=click.Choice(UNFINISHED_STATES), help="Filter: jobs in this state.")
@click.option("--name", metavar="PATTERN", help="Filter: jobs whose name matches (a shell pattern).")
@click.option("--user", help="Filter: jobs of this user (a name or uid).")
@click.option("--all", "every", is_flag=True, help="Every unfinished job you may cancel.")
@click.option("--yes", "-y", is_flag=True,
              help="Cancel what a filter matches without asking (needed off a terminal when it "
                   "matches more than one job).")
@pass_settings
def cancel(
    settings: Settings,
    ids: tuple[str, ...],
    kill: bool,
    signame: str | None,
    grace: float | None,
    state: str | None,
    name: str | None,
    user: str | None,
    every: bool,
    yes: bool,
) -> None:
    """Cancel jobs or tasks (12, 12.3, 12/name), or the unfinished jobs a filter matches.

    Running attempts get SIGTERM (or --signal), then SIGKILL after the grace; --kill sends SIGKILL
    at once (also to attempts an earlier cancel is still stopping). A filter acts only on jobs you
    may cancel (your own, or any as an administrator) and says how many others it left; one that
    matches more than one job asks first on a terminal, and needs --yes elsewhere.

    \b
      procctl cancel 12                            the whole job
      procctl cancel 12/fetch                      only its task "fetch"
      procctl cancel 12 13 14                      several
      procctl cancel 12 --kill                     SIGKILL now
      procctl cancel 12 --signal INT --grace 30    SIGINT, SIGKILL 30 s later
      procctl cancel --name 'nightly-*' --yes      every unfinished nightly job
      procctl cancel --state queued --user alice   alice's jobs that have not started
    """
    if kill and signame is not None:
        fail("--kill and --signal exclude each other", "--kill is --signal KILL")
    sig: str | None = "SIGKILL" if kill else None
    if signame is not None:
        from procpool.contract.signals import STOP_SIGNALS, signal_name

        sig = signal_name(signame)
        if sig is None:
            fail(f"--signal: unknown or unsuitable signal {signame!r}",
                 f"use one of {', '.join(s.removeprefix('SIG') for s in STOP_SIGNALS)}")
    filtered = state is not None or name is not None or user is not None or every
    if filtered and ids:
        fail("give ids or a filter (--state, --name, --user, --all), not both")
    if not filtered and not ids:
        fail("nothing to cancel",
             "give ids (procctl cancel 12 13), or a filter: --state, --name, --user, --all")
    with settings.client() as client:
        if len(ids) == 1:
            result: dict[str, Any] = dict(client.cancel(ids[0], signal=sig, grace=grace))
            text = f"cancelled {ids[0]}" + _stopping(result["stopping"])
            emit(settings, result, text)
            return
        if filtered:
            found = client.cancel_many(state=state, name=name, user=user, all=every, dry_run=True)
            matched, left = list(found["matched"]), int(found.get("others_left", 0))
            if not matched:
                note = f" ({left} of other users left)" if left else ""
                emit(settings, {"cancelled": [], "stopping": 0, "finished": {}, "others_left": left},
                     f"no unfinished job matches{note}")
                return
            if len(matched) > 1 and not yes:
                shown = ", ".join(matched[:10]) + (", ..." if len(matched) > 10 else "")
                if not (sys.stdin.isatty() and sys.stderr.isatty()) or settings.json:
                    fail(f"the filter matches {len(matched)} jobs ({shown}): add --yes to cancel them",
                         "a filter that matches more than one job asks first on a terminal")
                if not click.confirm(f"cancel {len(matched)} jobs ({shown})?", err=True):
                    fail("nothing cancelled", code=EXIT_FAILED)
            result = client.cancel_many(matched, signal=sig, grace=grace)
            result["others_left"] = left
        else:
            result = client.cancel_many(list(ids), signal=sig, grace=grace)
    cancelled, finished = list(result["cancelled"]), dict(result.get("finished") or {})
    lines = [f"cancelled {', '.join(cancelled) if cancelled else 'nothing'}" + _stopping(result["stopping"])]
    lines += [f"  {ref}: already {state_}" for ref, state_ in finished.items()]
    if result.get("others_left"):
        lines.append(f"  left {result['others_left']} of other users (only an administrator may cancel them)")
    emit(settings, result, "\n".join(lines))


def _stopping(n: int) -> str:
    return f"; stopping {plural(n, 'running attempt')}" if n else ""


@cli.command()
@click.argument("id")
@pass_settings
def stop(settings: Settings, id: str) -> None:
    """End a repeating job after its current run: that run finishes normally, no other starts.

    A group or task with its own "repeat" or "every" ends after its current cycle (one waiting
    for its next cycle, at once). The job then ends as that run ends (completed, or failed);
    status and explain say who stopped it. To stop the run itself, cancel the job.

    \b
      procctl stop 12                              a job with "repeat": "forever"
    """
    with settings.client() as client:
        result = client.stop(id)
    cycles = ", and its repeating groups and tasks after their current cycle" if result.get("cycles") else ""
    emit(settings, result, f"job {result['id']} ends after run {result['run']}, its current one{cycles}")


def _one_target(command: str, id: str | None, all_: bool, queue: str | None) -> None:
    if (id is not None) + all_ + (queue is not None) != 1:
        fail(f"{command}: give one of a job ID, --queue NAME (a named queue) or --all (the whole daemon)",
             None, EXIT_USAGE)


@cli.command()
@click.argument("id", required=False)
@click.option("--all", "all_", is_flag=True, help="End the daemon's pause (administrators only).")
@click.option("--queue", metavar="NAME", help="End the pause of a named queue (administrators only).")
@pass_settings
def resume(settings: Settings, id: str | None, all_: bool, queue: str | None) -> None:
    """Release a paused job, or one held after a daemon restart (on_interrupt: hold); with --queue
    end the pause of a named queue, with --all that of the whole daemon.

    \b
      procctl status --state held                  which jobs are held
      procctl status --state paused                which jobs are paused
      procctl resume 12                            a held or paused job
      procctl resume --queue io                    the queue io, after procctl pause --queue io
      procctl resume --all                         the daemon, after procctl pause --all
    """
    _one_target("resume", id, all_, queue)
    with settings.client() as client:
        result = client.resume(id, all=all_, queue=queue)
    if all_:
        emit(settings, result, "procpoold resumed: new work starts again")
        return
    if queue is not None:
        emit(settings, result, f"queue {queue} resumed: its tasks start again")
        return
    was = result.get("released", HELD)  # (a daemon before pause says nothing: it was held)
    emit(settings, result, f"job {result['id']} resumed (it was {was})")


@cli.command()
@click.argument("id", required=False)
@click.option("--all", "all_", is_flag=True,
              help="Pause the whole daemon: nothing new starts for any job (administrators only).")
@click.option("--queue", metavar="NAME",
              help="Pause a named queue: nothing new of its tasks starts (administrators only).")
@click.option("--stop", is_flag=True,
              help="Stop the running attempts now; they run again at resume, using no retry.")
@pass_settings
def pause(settings: Settings, id: str | None, all_: bool, queue: str | None, stop: bool) -> None:
    """Pause a job: nothing new of it starts until procctl resume, its running attempts finish
    (with --stop they are stopped and run again at resume, using none of their retries). With
    --queue pause a named queue: nothing new of its tasks starts, in any job. With --all pause the
    whole daemon: nothing new starts for any job; new submissions are accepted and wait. A pause
    survives a daemon restart.

    \b
      procctl pause 12                             finish what runs, start nothing new
      procctl pause 12 --stop                      stop what runs too; it runs again at resume
      procctl pause --queue io                     the tasks of queue io (procctl queue shows it)
      procctl pause --all                          the whole daemon (procctl health: degraded)
      procctl resume 12                            and procctl resume --queue io, --all
    """
    _one_target("pause", id, all_, queue)
    with settings.client() as client:
        result = client.pause(id, all=all_, queue=queue, stop=stop)
    stopping = _stopping(result.get("stopping", 0))
    again = " (it was paused already)" if result.get("already") else ""
    if all_:
        emit(settings, result, f"procpoold paused{again}: nothing new starts{stopping}; "
                               "procctl resume --all ends it")
        return
    if queue is not None:
        emit(settings, result, f"queue {queue} paused{again}: nothing new of it starts{stopping}; "
                               f"procctl resume --queue {queue} ends it")
        return
    emit(settings, result, f"job {result['id']} paused{stopping}; procctl resume {result['id']} ends it")


@cli.command()
@click.option(
    "--state", type=click.Choice(sorted(FINAL_JOB_STATES)), help="Only jobs in this state."
)
@click.option(
    "--older-than", type=Age(), metavar="AGE",
    help="Only jobs that finished more than AGE ago (30s, 15m, 2h, 1d, 2w, 1y).",
)
@pass_settings
def clean(settings: Settings, state: str | None, older_than: float | None) -> None:
    """Remove finished jobs from the daemon's history (only your own unless you are an administrator).

    \b
      procctl clean                                every finished job of yours
      procctl clean --state completed --older-than 1w
    """
    before = time.time() - older_than if older_than is not None else None
    args: dict[str, Any] = {}
    if state is not None:
        args["state"] = state
    if before is not None:
        args["before"] = before
    with settings.client() as client:
        result = client.call("clean", args)
    removed = list(result["removed"])
    left = int(result.get("others_left", 0))
    text = f"removed {plural(len(removed), 'finished job')}"
    if left:
        text += f"; left {left} of other users (only an administrator may remove them)"
    emit(settings, {"removed": removed, "others_left": left}, text)

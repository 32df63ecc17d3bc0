"""``procctl top`` and ``procctl status JOB --watch``: live views of the daemon and of one job.

Both are built from the daemon's ordinary operations: the ``status`` summary and job lists, ``pool``,
and each job's columnar status followed with ``changes_since``, so that after the first look at a
job a refresh costs the daemon work in proportion to what changed, not to the job's size. A
task's name and priority (static) are read once, from the pages of the full view that hold its
ready tasks, for the queue's depth by priority and what comes next.

On a terminal the views are drawn with ``rich`` (imported here only, when one of them runs):
``top`` full screen (the alternate screen, the cursor hidden, stdin in cbreak mode for ``q``; all
restored on the way out, whatever ends it), ``--watch`` redrawn in place until the job ends. The
loop sleeps in ``select`` on stdin and a self-pipe that SIGWINCH writes to, for the interval, so an
idle view costs nothing between refreshes and a resized terminal is redrawn at once. When stdout
is not a terminal both print one plain line per refresh instead (``--json``: one JSON document a
line). ``NO_COLOR`` (set and not empty) turns off every colour and style; what remains are the
cursor controls of the redraw.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click

from procpool.cli.jobs import PRIORITIES
from procpool.cli.main import EXIT_FAILED, EXIT_OK, Seconds, Settings, cli, fail, pass_settings
from procpool.cli.render import duration, progress_text, queue_words, user
from procpool.contract.states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    HELD,
    JOB_STATES,
    READY,
    RUNNING,
    TASK_STATES,
    TIMEOUT,
)
from procpool.contract.status import JobStatus, follow, is_changes

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

    from procpool.client import Client

#: Seconds between refreshes unless --interval says otherwise.
INTERVAL = 1.0
#: The newest jobs read at each refresh for recent failures (finished jobs are read once).
RECENT_JOBS = 20
#: Unfinished jobs listed per state at each refresh (the newest; the view says when there are more).
UNFINISHED_JOBS = 100
#: Pages of the full view read per refresh for the names and priorities of ready tasks.
FACT_PAGES = 4
#: Tasks per page of the full view asked for (the daemon may send fewer: status_page_size).
FACT_PAGE_TASKS = 1000
#: Queued tasks listed as "next", failures kept.
NEXT_SHOWN = 5
FAILURES_KEPT = 10
_RANK = {p: i for i, p in enumerate(PRIORITIES)}
#: Styles of task and job states, and of the pool's worker states (idle, busy)
_STYLE = {RUNNING: "cyan", COMPLETED: "green", FAILED: "red", TIMEOUT: "red", CANCELLED: "yellow",
          HELD: "yellow", "idle": "dim", "busy": "cyan"}


# -- what the views show ------------------------------------------------------------------------


@dataclass(slots=True)
class RunningTask:
    id: str
    name: str
    job: str
    user: str
    started_at: float | None
    progress: str = ""


@dataclass(slots=True)
class QueuedTask:
    id: str
    name: str
    job: str
    priority: str


@dataclass(slots=True)
class Failure:
    id: str
    name: str
    job: str
    state: str
    finished_at: float | None
    what: str


@dataclass(slots=True)
class Snapshot:
    """One refresh of ``top``: the daemon summary, its workers, running tasks, queue, failures."""

    at: float
    daemon: dict[str, Any]
    workers: list[dict[str, Any]]
    running: list[RunningTask] = field(default_factory=list)
    #: tasks in the ready queues (the daemon's count), by priority as far as read, and how many of
    #: the ready tasks have a priority not read yet
    queued: int = 0
    by_priority: dict[str, int] = field(default_factory=dict)
    unread: int = 0
    next: list[QueuedTask] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: unfinished jobs the daemon has, and how many of them were listed (the newest of each state)
    unfinished: int = 0
    listed: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _what(row: Any) -> str:
    """Why a task did not complete, in one line."""
    error = row.error
    if error:
        return f"{error.get('type', 'Error')}: {error.get('message', '')}".strip().splitlines()[0]
    if row.exit_code not in (None, 0):
        return f"exit {row.exit_code}"
    return str(row.reason or row.state)


class Collector:
    """Reads what ``top`` shows, one :meth:`poll` per refresh, keeping what it can reuse: each
    followed job's columnar status and cursor, and the names and priorities of tasks read."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.jobs: dict[str, JobStatus] = {}
        #: job -> {task index: (name, priority)}, for ready tasks
        self.facts: dict[str, dict[int, tuple[str, str]]] = {}
        #: job -> its ready tasks as last counted
        self.queues: dict[str, _JobQueue] = {}

    def poll(self) -> Snapshot:
        client = self.client
        summary = client.status(limit=RECENT_JOBS)
        workers = client.pool().get("workers") or []
        jobs = summary.get("jobs") or {}
        by_state: dict[str, int] = jobs.get("by_state") or {}
        listed: dict[str, dict[str, Any]] = {j["id"]: j for j in jobs.get("list") or ()}
        unfinished = 0
        for state in JOB_STATES:
            n = by_state.get(state, 0)
            if state in FINAL_JOB_STATES or not n:
                continue
            unfinished += n
            for j in client.status(state=state, limit=UNFINISHED_JOBS)["jobs"]["list"]:
                listed[j["id"]] = j
        snap = Snapshot(time.time(), {k: v for k, v in summary.items() if k != "jobs"} | {
            "jobs": {k: v for k, v in jobs.items() if k != "list"}}, workers,
            queued=int(jobs.get("queued") or 0), unfinished=unfinished,
            listed=sum(j["state"] not in FINAL_JOB_STATES for j in listed.values()))
        wanted = {}
        for job_id, j in listed.items():
            counts = j.get("counts") or {}
            if j["state"] not in FINAL_JOB_STATES:
                if counts.get(RUNNING) or counts.get(READY) or job_id in self.jobs:
                    wanted[job_id] = j
            elif counts.get(FAILED) or counts.get(TIMEOUT):
                wanted[job_id] = j
        for job_id in set(self.jobs) - set(wanted):
            del self.jobs[job_id]
            self.facts.pop(job_id, None)
            self.queues.pop(job_id, None)
        pages = FACT_PAGES
        for job_id, j in sorted(wanted.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0):
            status = self._follow(job_id, j)
            if status is None:
                continue
            who = user(j)
            for i in status.indices(RUNNING):
                row = status.task(i)
                snap.running.append(RunningTask(f"{job_id}.{i}", row.name or f"#{i}", job_id, who,
                                                row.started_at, progress_text(row.progress)))
            ends = status.finished_at
            for i in heapq.nlargest(FAILURES_KEPT, status.indices(FAILED, TIMEOUT),
                                    key=lambda i: ends[i - status.first]):
                row = status.task(i)
                snap.failures.append(Failure(f"{job_id}.{i}", row.name or f"#{i}", job_id, row.state,
                                             row.finished_at, _what(row)))
            queue = self._queue(job_id, status)
            pages = queue.pages(self, pages)
            snap.unread += queue.unread
            for priority, n in queue.by_priority.items():
                snap.by_priority[priority] = snap.by_priority.get(priority, 0) + n
            snap.next.extend(queue.next)
        snap.running.sort(key=lambda r: r.started_at or snap.at)
        snap.next = heapq.nsmallest(NEXT_SHOWN, snap.next, key=lambda q: (
            _RANK.get(q.priority, len(_RANK)), _job_key(q.job), _task_key(q.id)))
        snap.failures = heapq.nlargest(FAILURES_KEPT, snap.failures, key=lambda f: f.finished_at or 0)
        return snap

    def _queue(self, job_id: str, status: JobStatus) -> _JobQueue:
        """The job's ready tasks by priority, counted again only when the job changed (the same
        cursor: the same tasks ready) or more of their names and priorities were read."""
        known = self.queues.get(job_id)
        if known is not None and known.cursor == status.cursor and known.cursor is not None:
            return known
        queue = _JobQueue(job_id, status.cursor, list(status.indices(READY)))
        self.queues[job_id] = queue
        return queue

    def _follow(self, job_id: str, listed: dict[str, Any]) -> JobStatus | None:
        """The job's status brought up to date (a finished job is read once)."""
        known = self.jobs.get(job_id)
        if known is not None and known.state in FINAL_JOB_STATES and listed["state"] == known.state:
            return known
        from procpool.contract.errors import ErrorCode, ProcpoolError

        try:
            status = follow(self.client.call, job_id, known)
        except ProcpoolError as exc:
            if exc.code == ErrorCode.NOT_FOUND:  # cleaned away since it was listed
                self.jobs.pop(job_id, None)
                return None
            raise
        self.jobs[job_id] = status
        return status

    def _read_facts(self, job_id: str, ready: list[int], pages: int) -> int:
        """Read the names and priorities of ``ready`` tasks not known yet, at most ``pages`` pages
        of the full view; returns the pages left for this refresh."""
        facts = self.facts.setdefault(job_id, {})
        for i in ready:
            if pages <= 0:
                break
            if i in facts:
                continue
            page = self.client.status(job_id, tasks_from=i, tasks_limit=FACT_PAGE_TASKS)
            pages -= 1
            tasks = page.get("tasks") or []
            for k, t in enumerate(tasks):
                facts[i + k] = (str(t.get("name") or f"#{i + k}"), str(t.get("priority") or "normal"))
            if not tasks:
                break
        return pages


class _JobQueue:
    """One job's ready tasks (at one cursor): how many by priority, how many whose priority is not
    read yet, and the first few of each priority (the candidates for what comes next)."""

    def __init__(self, job: str, cursor: str | None, ready: list[int]) -> None:
        self.job, self.cursor, self.ready = job, cursor, ready
        self.by_priority: dict[str, int] = {}
        self.next: list[QueuedTask] = []
        self.unread = len(ready)
        self._counted = -1  # how many names and priorities of the job were known when counted

    def pages(self, collector: Collector, pages: int) -> int:
        """Read missing names and priorities (at most ``pages`` pages; returns what is left of
        them) and count again if any came."""
        if self.unread and pages > 0:
            pages = collector._read_facts(self.job, self.ready, pages)
        facts = collector.facts.get(self.job, {})
        if len(facts) != self._counted:
            self._count(facts)
        return pages

    def _count(self, facts: dict[int, tuple[str, str]]) -> None:
        self.by_priority, self.next, self.unread, self._counted = {}, [], 0, len(facts)
        for i in self.ready:
            fact = facts.get(i)
            if fact is None:
                self.unread += 1
                continue
            name, priority = fact
            n = self.by_priority[priority] = self.by_priority.get(priority, 0) + 1
            if n <= NEXT_SHOWN:
                self.next.append(QueuedTask(f"{self.job}.{i}", name, self.job, priority))


def _job_key(job: str) -> int:
    return int(job) if job.isdigit() else 0


def _task_key(task: str) -> int:
    tail = task.rpartition(".")[2]
    return int(tail) if tail.isdigit() else 0


# -- plain lines (stdout is not a terminal) ---------------------------------------------------------


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def top_line(snap: Snapshot) -> str:
    """One line of ``top`` for a pipe or a file."""
    workers = (snap.daemon.get("workers") or {})
    jobs = (snap.daemon.get("jobs") or {}).get("by_state") or {}
    parts = [
        _clock(snap.at),
        f"workers {workers.get('busy', 0)}/{workers.get('configured', '-')} busy",
        _running(snap),
        f"queued {snap.queued}" + (f" ({_priorities(snap)})" if snap.by_priority else ""),
        "jobs " + (", ".join(f"{n} {s}" for s, n in sorted(jobs.items())) or "none"),
        f"recent failures {len(snap.failures)}",
    ]
    queues = _queues(snap)
    if queues:
        parts.append(f"queues {queues}")
    if snap.running:
        parts.append("now: " + ", ".join(f"{r.id} {r.name}" for r in snap.running[:3])
                     + (f" +{len(snap.running) - 3}" if len(snap.running) > 3 else ""))
    return "  ".join(parts)


def _running(snap: Snapshot) -> str:
    """``running 3 (pool 1, commands 2)``: the tasks running, and on which engines when the
    daemon has more than one."""
    engines = ((snap.daemon.get("workers") or {}).get("engines") or {})
    busy = [f"{name} {e['busy']}" for name, e in sorted(engines.items()) if e.get("busy")]
    return f"running {len(snap.running)}" + (f" ({', '.join(busy)})" if busy and len(engines) > 1 else "")


def _queues(snap: Snapshot) -> str:
    """The named queues in a few words each (``io 2/4 running, 3 waiting``), or ""."""
    queues = snap.daemon.get("queues")
    if not isinstance(queues, list):
        return ""
    return "; ".join(queue_words(q) for q in queues if isinstance(q, dict))


def _priorities(snap: Snapshot) -> str:
    text = ", ".join(f"{p} {snap.by_priority[p]}" for p in PRIORITIES if snap.by_priority.get(p))
    return text + (f", {snap.unread} not read yet" if snap.unread else "")


def _counts(status: JobStatus) -> tuple[dict[str, int], int, int]:
    """A job's counts per state, its task count and how many tasks have finished."""
    job: dict[str, Any] = dict(status.job)
    counts: dict[str, int] = job.get("counts") or status.counts()
    total = int(job.get("tasks", status.total))
    return counts, total, sum(n for s, n in counts.items() if s in FINAL_TASK_STATES)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in TASK_STATES if counts.get(s)) or "no tasks"


def watch_line(status: JobStatus, now: float) -> str:
    """One line of ``status --watch`` for a pipe or a file."""
    job = status.job
    counts, total, final = _counts(status)
    running = [status.task(i) for i in _first(status.indices(RUNNING), 3)]
    text = (f"{_clock(now)}  job {job['id']} {job['state']}  {final}/{total} done  "
            f"{_counts_text(counts)}")
    if running:
        text += "  running: " + ", ".join(r.name or f"#{r.index}" for r in running)
    return text


def _first(items: Iterator[int], n: int) -> list[int]:
    out = []
    for i in items:
        out.append(i)
        if len(out) >= n:
            break
    return out


# -- rich renderings --------------------------------------------------------------------------------


def console(file: Any = None) -> Console:
    """A console on stdout that honours NO_COLOR (no colour and no style at all)."""
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(file=file, color_system=None if no_color else "auto", no_color=no_color,
                   highlight=False, emoji=False)


#: Terminals narrower than this get the tables' essential columns only.
NARROW = 64
#: A column: its header, rich's options for it, and whether a narrow terminal shows it. The option
#: "fit" (not rich's) keeps the column as wide as its widest cell (ids are never cut short).
Column = tuple[str, dict[str, Any], bool]


def _table(title: str, columns: list[Column], rows: Sequence[tuple[str, ...]], narrow: bool,
           styles: list[str | None] | None = None) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  expand=True, pad_edge=False, show_edge=False, header_style="bold",
                  caption_justify="left", caption_style="dim")
    keep = [i for i, (_, _, essential) in enumerate(columns) if essential or not narrow]
    for i in keep:
        name, options, _ = columns[i]
        options = dict(options)
        if options.pop("fit", False):
            options["min_width"] = max([len(name), *(len(r[i]) for r in rows)])
        table.add_column(name, no_wrap=True, overflow="ellipsis", **options)
    for k, row in enumerate(rows):
        table.add_row(*(row[i] for i in keep), style=styles[k] if styles else None)
    return table


def _share(height: int, wants: list[int]) -> list[int]:
    """Rows for each section out of ``height``: fair shares, what one does not use goes to the others."""
    shares = [0] * len(wants)
    left = max(0, height)
    open_ = [i for i, w in enumerate(wants) if w > 0]
    while left > 0 and open_:
        each = max(1, left // len(open_))
        for i in list(open_):
            give = min(each, wants[i] - shares[i], left)
            shares[i] += give
            left -= give
            if shares[i] >= wants[i]:
                open_.remove(i)
            if left <= 0:
                break
    return shares


def _rows(height: int, wants: list[int]) -> list[int]:
    """Rows for tables that want ``wants`` rows in ``height`` lines; each table takes its title,
    header and rule (3 lines), and one more for its caption when it is empty or cut short."""
    rows = _share(height - 3 * len(wants) - wants.count(0), wants)
    for i, (got, want) in enumerate(zip(rows, wants, strict=True)):
        if 0 < got < want:
            rows[i] -= 1  # its last line says how many more there are
    return rows


def _more(table: Table, shown: int, total: int, what: str) -> None:
    if total > shown:
        table.caption = f"… and {total - shown} more {what}"


def top_view(snap: Snapshot, width: int, height: int, interval: float) -> RenderableType:
    """The screen of ``procctl top`` for a terminal of ``width`` x ``height``."""
    from rich.console import Group
    from rich.text import Text

    d = snap.daemon
    workers = d.get("workers") or {}
    jobs = (d.get("jobs") or {}).get("by_state") or {}
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"procpoold {d.get('version', '?')}", style="bold")
    head.append(f"  pid {d.get('pid', '?')}  up {duration(d.get('uptime'))}  {_clock(snap.at)}")
    line2 = Text(no_wrap=True, overflow="ellipsis")
    line2.append(f"workers {workers.get('busy', 0)}/{workers.get('configured', '-')} busy  "
                 f"{_running(snap)}  queued {snap.queued}  jobs ")
    line2.append(", ".join(f"{n} {s}" for s, n in sorted(jobs.items())) or "none")
    down = [name for name, e in (workers.get("engines") or {}).items() if not e.get("up", True)]
    if down:
        line2.append("  DOWN: " + ", ".join(down), style="bold red")
    queues = _queues(snap)
    if queues:
        line2.append(f"  queues {queues}")
    foot = Text(f"q quits · every {interval:g}s", style="dim", no_wrap=True, overflow="ellipsis")
    if snap.unfinished > snap.listed:
        foot.append(f" · the newest {snap.listed} of {snap.unfinished} unfinished jobs looked at")
    wants = [len(snap.workers), len(snap.running), min(NEXT_SHOWN, len(snap.next)), len(snap.failures)]
    rows = _rows(height - 3, wants)
    parts: list[RenderableType] = [head, line2]
    narrow = width < NARROW
    parts.append(_workers_table(snap.workers, rows[0], narrow))
    parts.append(_running_table(snap, rows[1], narrow))
    parts.append(_queue_table(snap, rows[2], narrow))
    parts.append(_failures_table(snap, rows[3], narrow))
    parts.append(foot)
    return Group(*parts)


def _mib(value: Any) -> str:
    return f"{value / 1048576:.0f}M" if isinstance(value, (int, float)) else "-"


def _workers_table(workers: list[dict[str, Any]], rows: int, narrow: bool) -> Table:
    columns: list[Column] = [
        ("SLOT", {"justify": "right", "fit": True}, True), ("PID", {"justify": "right", "fit": True}, True),
        ("STATE", {}, True), ("TASK", {"ratio": 1, "min_width": 4}, True),
        ("DONE", {"justify": "right"}, True), ("MEM", {"justify": "right"}, True),
    ]
    cells, styles = [], []
    for w in workers[:rows]:
        state = str(w.get("state", "-")) + (" retiring" if w.get("retiring") else "")
        if "slot" in w:
            attempts = w.get("attempts") or []
            task = ", ".join(f"{a.get('attempt_id', '').partition('@')[0]} {a.get('task_name', '')}"
                             for a in attempts) or "-"
            cells.append((str(w["slot"]), str(w.get("pid", "-")), state, task, str(w.get("tasks_done", 0)),
                          _mib(w.get("uss") or w.get("rss"))))
            styles.append(_STYLE.get(str(w.get("state"))))
        else:  # a remote engine's worker (a Dask cluster's): no slot, no pid of this machine
            cells.append((str(w.get("engine", "-")), "-", state,
                          f"{w.get('worker', '-')}: {w.get('busy', 0)} running", "-", "-"))
            styles.append(None)
    table = _table("Workers", columns, cells, narrow, styles)
    _more(table, rows, len(workers), "workers")
    if not workers:
        table.caption = "no workers"
    return table


def _running_table(snap: Snapshot, rows: int, narrow: bool) -> Table:
    columns: list[Column] = [
        ("ID", {"fit": True}, True), ("NAME", {"ratio": 1, "min_width": 4}, True), ("JOB", {}, False),
        ("USER", {}, False), ("ELAPSED", {"justify": "right"}, True), ("PROGRESS", {}, False),
    ]
    cells = [(r.id, r.name, r.job, r.user, duration(snap.at - r.started_at) if r.started_at else "-",
              r.progress) for r in snap.running[:rows]]
    table = _table("Running", columns, cells, narrow)
    _more(table, rows, len(snap.running), "tasks running")
    if not snap.running:
        table.caption = "nothing running"
    return table


def _queue_table(snap: Snapshot, rows: int, narrow: bool) -> Table:
    title = f"Queue: {snap.queued} task{'s' if snap.queued != 1 else ''}"
    if snap.by_priority:
        title += f" ({_priorities(snap)})"
    columns: list[Column] = [
        ("NEXT", {"fit": True}, True), ("NAME", {"ratio": 1, "min_width": 4}, True), ("JOB", {}, False),
        ("PRIORITY", {}, True),
    ]
    table = _table(title, columns, [(q.id, q.name, q.job, q.priority) for q in snap.next[:rows]], narrow)
    if not snap.next:
        table.caption = "nothing waits for a worker" if not snap.queued else "reading the queue…"
    return table


def _failures_table(snap: Snapshot, rows: int, narrow: bool) -> Table:
    columns: list[Column] = [
        ("WHEN", {}, False), ("ID", {"fit": True}, True), ("NAME", {"max_width": 24}, False),
        ("WHAT", {"ratio": 1, "min_width": 4}, True),
    ]
    cells = [(_clock(f.finished_at) if f.finished_at else "-", f.id, f.name, f.what)
             for f in snap.failures[:rows]]
    table = _table("Recent failures", columns, cells, narrow, ["red"] * len(cells))
    _more(table, rows, len(snap.failures), "failures")
    if not snap.failures:
        table.caption = "none among the recent jobs"
    return table


def watch_view(status: JobStatus, now: float, width: int, height: int) -> RenderableType:
    """``status --watch`` of a job on a terminal of ``width`` x ``height``: its head, a bar with the
    counts, the running tasks and those that did not complete."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    job = status.job
    counts, total, final = _counts(status)
    started, end = job.get("started_at"), job.get("finished_at") or now
    took = duration(end - started) if started else "-"
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"job {job['id']} ", style="bold")
    head.append(f'"{job["name"]}" ')
    head.append(job["state"], style=_STYLE.get(job["state"], "bold"))
    head.append(f"  run {job['run']}  {took}  {user(dict(job))}")
    bar = Table.grid(expand=True, padding=(0, 1))
    bar.add_column(ratio=1)
    bar.add_column(no_wrap=True)
    bar.add_row(ProgressBar(total=max(total, 1), completed=final if total else 1), f"{final}/{total}")
    parts: list[RenderableType] = [head, bar, Text(_counts_text(counts))]
    if job.get("reason"):
        parts.append(Text(f"reason: {job['reason']}", no_wrap=True, overflow="ellipsis"))
    narrow = width < NARROW
    running = list(status.indices(RUNNING))
    failed = list(status.indices(FAILED, TIMEOUT))
    rows = _rows(height - len(parts) - 1, [len(running), len(failed)])
    if running:
        cells = []
        for i in running[:rows[0]]:
            row = status.task(i)
            elapsed = duration(now - row.started_at) if row.started_at else "-"
            cells.append((row.name or f"#{i}", elapsed, progress_text(row.progress)))
        columns: list[Column] = [("TASK", {"ratio": 1, "min_width": 4}, True),
                                 ("ELAPSED", {"justify": "right"}, True), ("PROGRESS", {}, False)]
        table = _table("Running", columns, cells, narrow)
        _more(table, rows[0], len(running), "tasks running")
        parts.append(table)
    if failed:
        rows_failed = [status.task(i) for i in failed[:rows[1]]]
        columns = [("TASK", {"max_width": 30}, True), ("WHAT", {"ratio": 1, "min_width": 4}, True)]
        failures = [(r.name or f"#{r.index}", _what(r)) for r in rows_failed]
        table = _table("Did not complete", columns, failures, narrow, ["red"] * len(failures))
        _more(table, rows[1], len(failed), "tasks")
        parts.append(table)
    return Group(*parts)


# -- the loops ---------------------------------------------------------------------------------------


#: Exit status of a top ended by SIGTERM or SIGHUP (128 + the signal, as shells report it)
_SIGNAL_EXIT = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGHUP: 128 + signal.SIGHUP}


class _Ticker:
    """Sleeps until the next refresh in ``select``: on stdin (a key) and on a pipe that SIGWINCH
    writes to (a resized terminal is redrawn at once). Never spins. Meanwhile SIGTERM and SIGHUP
    end the program by SystemExit, so that the terminal is restored on the way out."""

    def __init__(self, keys: bool) -> None:
        self.keys = keys and sys.stdin.isatty()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Ticker:
        def winch(_sig: int, _frame: Any) -> None:
            with contextlib.suppress(OSError):
                os.write(self._w, b"w")

        def stop(sig: int, _frame: Any) -> None:
            sys.exit(_SIGNAL_EXIT[signal.Signals(sig)])

        self._old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
        for sig in _SIGNAL_EXIT:
            self._old[sig] = signal.signal(sig, stop)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._r)
        os.close(self._w)

    def wait(self, seconds: float) -> str:
        """``"q"`` when q (or Q) was pressed, ``"resize"``, else ``""`` when the time ran out."""
        deadline = time.monotonic() + seconds
        watched = [self._r, sys.stdin.fileno()] if self.keys else [self._r]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ""
            ready, _, _ = select.select(watched, [], [], left)
            if self._r in ready:
                os.read(self._r, 64)
                return "resize"
            if self.keys and sys.stdin.fileno() in ready:
                data = os.read(sys.stdin.fileno(), 64)
                if not data or b"q" in data.lower():
                    return "q"


@contextlib.contextmanager
def _cbreak(active: bool) -> Iterator[None]:
    """stdin in cbreak mode (keys come one by one, unechoed; Ctrl-C still interrupts); restored."""
    if not active:
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _plain(line: Callable[[], str], interval: float, iterations: int | None) -> None:
    """Print a line per refresh until ``iterations`` ran out, or Ctrl-C (which ends it as it ends
    the full screen view: exit 0)."""
    n = 0
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            click.echo(line())
            n += 1
            if iterations is not None and n >= iterations:
                return
            time.sleep(interval)


def run_top(settings: Settings, interval: float, iterations: int | None) -> None:
    with settings.client() as client:
        collector = Collector(client)
        if settings.json:
            _plain(lambda: json.dumps(collector.poll().as_json(), sort_keys=True, default=str),
                   interval, iterations)
            return
        if not sys.stdout.isatty():
            _plain(lambda: top_line(collector.poll()), interval, iterations)
            return
        from rich.live import Live

        con = console()
        keys = sys.stdin.isatty()
        n = 0
        snap = collector.poll()  # (before the screen changes: an error reads as any other)
        with (_Ticker(keys) as ticker, _cbreak(keys),
              Live(console=con, screen=True, auto_refresh=False, redirect_stderr=False) as live):
            try:
                while True:
                    live.update(top_view(snap, *con.size, interval), refresh=True)
                    n += 1
                    if iterations is not None and n >= iterations:
                        return
                    event = ticker.wait(interval)
                    if event == "q":
                        return
                    if event == "":
                        snap = collector.poll()
            except KeyboardInterrupt:  # Ctrl-C quits top as q does
                return


def watch(settings: Settings, client: Client, ref: str | None, interval: float) -> NoReturn:
    """``procctl status REF --watch``: redraw the job (or task) until it has finished; exit 0 if it
    completed, 1 otherwise, as ``wait`` does. Called by the ``status`` command."""
    if ref is None:
        fail("--watch needs a JOB (a job or task id)", "for a live view of the whole daemon: procctl top")
    click.get_current_context().find_root().meta["waiting_for"] = ref  # Ctrl-C names it
    if settings.json:  # the final status, as `procctl --json wait` prints it
        final = client.wait(ref)
        click.echo(json.dumps(final, indent=2, sort_keys=True, default=str))
        sys.exit(EXIT_OK if final["state"] == COMPLETED else EXIT_FAILED)
    if "." in ref or "/" in ref:
        _watch_task(client, ref, interval)
    status = follow(client.call, ref)
    if not sys.stdout.isatty():
        click.echo(watch_line(status, time.time()))
        while status.state not in FINAL_JOB_STATES:
            status = _advance(client, ref, status, interval)
            click.echo(watch_line(status, time.time()))
    else:
        from rich.live import Live

        con = console()
        with Live(console=con, auto_refresh=False, redirect_stderr=False, vertical_overflow="crop") as live:
            while True:  # (a resized terminal is drawn at its new width at the next refresh)
                live.update(watch_view(status, time.time(), *con.size), refresh=True)
                if status.state in FINAL_JOB_STATES:
                    break
                status = _advance(client, ref, status, interval)
    sys.exit(EXIT_OK if status.state == COMPLETED else EXIT_FAILED)


def _advance(client: Client, job: str, status: JobStatus, interval: float) -> JobStatus:
    """The job's status after the next interval, or as soon as it finished: a ``wait`` for what
    changed since the cursor (the whole status again only when the daemon cannot answer that)."""
    if status.cursor is not None:
        args = dict(id=job, timeout=interval, view="columns", changes_since=status.cursor)
        wire = client.call("wait", args, timeout=interval + client.timeout)["status"]
        if is_changes(wire) and not wire.get("more"):
            status.apply(wire)
            return status
    return follow(client.call, job, status if status.cursor is not None else None)


def _watch_task(client: Client, ref: str, interval: float) -> NoReturn:
    """``status 12.3 --watch``: the task's line, redrawn until it has finished."""
    from procpool.cli.render import task_line

    def line(result: dict[str, Any]) -> str:
        return task_line(result["task"], time.time())

    result = client.wait(ref, timeout=0)
    if not sys.stdout.isatty():
        click.echo(f"{_clock(time.time())}  {line(result)}")
        while not result["finished"]:
            result = client.wait(ref, timeout=interval)
            click.echo(f"{_clock(time.time())}  {line(result)}")
    else:
        from rich.live import Live
        from rich.text import Text

        with Live(console=console(), auto_refresh=False, redirect_stderr=False) as live:
            while True:
                live.update(Text(line(result), no_wrap=True, overflow="ellipsis"), refresh=True)
                if result["finished"]:
                    break
                result = client.wait(ref, timeout=interval)
    sys.exit(EXIT_OK if result["state"] == COMPLETED else EXIT_FAILED)


@cli.command()
@click.option("--interval", type=Seconds(min=0.05), default=INTERVAL, show_default=True,
              help="Seconds between refreshes.")
@click.option("-n", "--iterations", type=click.IntRange(min=1), help="Stop after this many refreshes.")
@pass_settings
def top(settings: Settings, interval: float, iterations: int | None) -> None:
    """A live view of the daemon: workers, running tasks, the queue and recent failures.

    Full screen on a terminal; q or Ctrl-C quits. When stdout is not a terminal it prints one
    line per refresh instead (with --json one JSON document a line). NO_COLOR turns colour off.

    \b
      procctl top
      procctl top --interval 5
      procctl top -n 1 | cat        (one line, for a script)
    """
    run_top(settings, interval, iterations)

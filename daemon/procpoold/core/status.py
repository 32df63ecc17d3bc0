"""A job's status as the control socket sends it: the full view (format 1) and the columnar one (format 2).

Pure functions of a :class:`~procpoold.core.jobs.Job`; no I/O. They read the job through a small
set of accessors only — ``job.tasks[i].state``, ``.attempts``, ``.started_at``, ``.finished_at``,
``.result``, ``.error``, ``.exit_code``, ``.progress``, ``.reason``, ``.retry_at``, ``.tail``,
``.spec``, and ``job.counts()`` — so that the job's storage can change under them (see the
``_column`` helpers, the one place that reads a whole column).

The columnar view (see :mod:`procpool.contract.status` for the wire format) costs one pass per
dense column plus one pass that picks the sparse values; the full view builds a map per task
and is paged more finely (``status_page_size``). The head of every view (:func:`detail`) and the
summary view cost no work per task (the counts are kept as tasks move: ``job.counts()``), and a
poll with a cursor (:func:`changes_page`) costs the tasks changed since it (see core.changes).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from math import nan
from typing import TYPE_CHECKING, Any, cast

from procpool.contract.states import (
    COMPLETED,
    FINAL_TASK_STATES,
    PENDING,
    READY,
    TASK_STATE_CODES,
    UNSUCCESSFUL,
)
from procpool.contract.status import (
    FORMAT_COLUMNS,
    FORMAT_FULL,
    FORMAT_SUMMARY,
    SPARSE,
    ColumnStatusWire,
    FullStatus,
    GroupStatus,
    JobDetail,
    JobSummary,
    NodeCycle,
    SummaryStatus,
    TaskReply,
    TaskStatus,
    View,
    WaitReply,
    format_cursor,
    pack_f64,
    pack_u32,
    parse_cursor,
)
from procpoold.core.changes import track

if TYPE_CHECKING:
    from procpoold.core.jobs import Job, TaskRun

#: About this many bytes of task results, errors and progress go into one status page.
PAGE_BYTES = 512 << 10
#: Most tasks in one page of a columnar status: 21 bytes each, so 2 MiB of dense columns at most
#: (well under the 16 MiB message limit) plus about PAGE_BYTES of sparse values.
COLUMN_PAGE_TASKS = 100_000
#: Task states that need no name in a columnar status (unless the task has a result, error or
#: progress): the bulk of a big job, and never what a summary lists.
_QUIET = frozenset({PENDING, READY, COMPLETED})


def summary(job: Job) -> JobSummary:
    """The job's line in a job list and the head of its status: O(states), no task is read."""
    return {
        "id": job.id,
        "name": job.spec.name,
        "user": job.submitter_name,
        "uid": job.submitter_uid,
        "state": job.state,
        "run": job.run,
        "repeat": "forever" if job.spec.repeat is None else job.spec.repeat,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "tasks": len(job.tasks),
        "counts": job.counts(),
        "reason": job.reason,
        "tags": job.tag_list(),
    }


def engine_routes(job: Job) -> tuple[dict[tuple[str, str | None], str | None], bool]:
    """The engine of each (task kind, engine named) of the job's tasks, and whether every task runs
    on the local engine of its kind. One pass over the tasks on the first call, then kept (the
    routes of a job do not change). Without the daemon's engines (``job.engines``), or for a route
    that no longer exists (a finished job read back after a restart with other engines), the
    engine the task named (None: none)."""
    found = job.engine_routes
    if found is None:
        names = job.engines
        routes: dict[tuple[str, str | None], str | None] = {}
        all_local = True
        for pair in {(t.kind, t.engine) for t in job.spec.tasks}:
            name = pair[1]
            if names is not None:
                try:
                    name = names.route_name(*pair)
                except ValueError:  # RouteError
                    pass
                all_local = all_local and names.local.get(pair[0]) == name
            routes[pair] = name
        found = job.engine_routes = (routes, all_local)
    return found


def detail(job: Job) -> JobDetail:
    """The head of a job's status: its summary and the job-wide fields (no task is read, but once
    for the job's engines: see :func:`engine_routes`)."""
    routes, all_local = engine_routes(job)
    head: dict[str, Any] = {
        **summary(job),
        "engines": sorted({name for name in routes.values() if name is not None}),
        "all_local": all_local,
        "namespace": job.namespace,
        "runs": job.runs,
        "on_failure": job.spec.on_failure,
        "on_interrupt": job.spec.on_interrupt,
        "after": job.after,
        "root": list(job.spec.root),
        "kept": len(job.kept or ()),
        "next_run_at": job.next_run_at,  # (None unless the job is scheduled)
    }
    if job.spec.cycles:  # a node with its own "repeat"/"every" (core.cycles)
        head["cycles"] = cycles(job)
        if len(job.spec.cycles) > CYCLES_SHOWN:
            head["cycles_total"] = len(job.spec.cycles)
    return cast(JobDetail, head)  # ("cycles" only for such a job: the others' heads are as they were)


#: Cycling nodes a job's status head names (the first in tree order; ``cycles_total`` says how
#: many there are beyond): every status reply carries them, a poll of changes too.
CYCLES_SHOWN = 1_000


def cycles(job: Job) -> list[NodeCycle]:
    """The first :data:`CYCLES_SHOWN` nodes of the job that cycle on their own clock (see
    :class:`NodeCycle`), in tree order (sorted once per job)."""
    from procpoold.core.cycles import CyclingJob  # (as Job: this module is imported before the core)

    if not isinstance(job, CyclingJob):  # (a stand-in for a job that could not be restored)
        return []
    if job.ordered is None:
        job.ordered = [node for node, _ in sorted(job.cycling.items(), key=_tree_order(job))]
    cycling = job.cycling
    out: list[NodeCycle] = []
    for node in job.ordered[:CYCLES_SHOWN]:
        repeat = cycling[node][0]
        out.append({
            "kind": "task" if node[0] == "task" else "group",
            "index": node[1],
            "name": job.node_name(node),
            "cycle": job.cycle[node],
            "repeat": "forever" if repeat is None else repeat,
            "next_cycle_at": job.waits.get(node),
        })
    return out


def _tree_order(job: Job) -> Callable[[tuple[tuple[str, int], Any]], tuple[int, int]]:
    """The key of a node's item in the tree's order: a group before what is in it (by its first
    task, and outer groups first)."""
    groups = job.spec.groups

    def first_task(item: tuple[tuple[str, int], Any]) -> tuple[int, int]:
        kind, index = item[0]
        depth = 0
        while kind == "group":
            kind, index = groups[index].children[0]
            depth -= 1
        return (index, depth)

    return first_task


#: Each job's groups with their children as runs, made once (a job's tree does not change), by
#: id() of its JobSpec (unhashable); an entry leaves with its spec.
_RUNS: dict[int, list[GroupStatus]] = {}
#: Jobs of fewer tasks and groups than this have theirs made each time: the entry's clean-up
#: (a weakref.finalize, ~5 us) costs more than making them (~0.2 us for a one-task job).
RUNS_CACHED_FROM = 64


def groups(job: Job, runs: bool = False) -> list[GroupStatus]:
    """The job's groups; their ``children`` as (kind, index) pairs, or with ``runs`` as
    ``[kind, first index, count]`` runs of consecutive indices (a flat group of 20,000 tasks is
    one run instead of 20,000 pairs: the columnar view's form)."""
    if runs and len(job.tasks) + len(job.spec.groups) >= RUNS_CACHED_FROM:
        key = id(job.spec)
        found = _RUNS.get(key)
        if found is None:
            found = _RUNS[key] = _groups(job, runs)
            weakref.finalize(job.spec, _RUNS.pop, key, None)
        return found
    return _groups(job, runs)


def _groups(job: Job, runs: bool) -> list[GroupStatus]:
    return [
        {
            "name": g.name,
            "path": g.path,
            "kind": g.kind,
            "parent": g.parent,
            # the pairs are sent as arrays: no copy of a big group
            "children": _runs(g.children) if runs else g.children,
        }
        for g in job.spec.groups
    ]


def _runs(children: list[tuple[str, int]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for kind, index in children:
        last = out[-1] if out else None
        if last is not None and last[0] == kind and last[1] + last[2] == index:
            last[2] += 1
        else:
            out.append([kind, index, 1])
    return out


# -- the full view (format 1) --------------------------------------------------------------------


def task_status(
    t: TaskRun, routes: dict[tuple[str, str | None], str | None], kept: dict[int, int] | None = None
) -> TaskStatus:
    """One task in the full view; ``routes``: the first of :func:`engine_routes`; ``kept``: the
    job's :attr:`~procpoold.core.jobs.Job.kept` (a retried job's tasks kept from earlier runs)."""
    spec = t.spec
    return {
        "id": t.id,
        "name": spec.name,
        "path": spec.path,
        "kind": spec.kind,
        "engine": routes[(spec.kind, spec.engine)],
        "state": t.state,
        "attempts": len(t.attempts),
        "attempt_history": [a.to_wire() for a in t.attempts],  # type: ignore[misc]
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "result": t.result,
        "error": t.error,
        "exit_code": t.exit_code,
        "progress": t.progress,
        "reason": t.reason,
        "retry_at": t.retry_at,
        "priority": t.spec.priority,
        "tags": t.spec.tags,
        "depends_on": t.spec.depends_on,
        "tail": list(t.tail) if t.tail and t.state in UNSUCCESSFUL else [],
        "kept_from": kept.get(spec.index) if kept else None,
    }


def full(job: Job, tasks: list[TaskStatus] | None = None, with_groups: bool = True) -> FullStatus:
    """The full status (format 1, see docs/job-trees.md); every task unless ``tasks`` is given."""
    if tasks is None:
        routes, kept = engine_routes(job)[0], job.kept
        tasks = [task_status(t, routes, kept) for t in job.tasks]
    return {
        "format": FORMAT_FULL,
        "job": detail(job),
        "groups": groups(job) if with_groups else [],
        "tasks": tasks,
    }


def full_page(
    job: Job, first: int, limit: int, max_bytes: int = PAGE_BYTES, state: str | None = None
) -> FullStatus:
    """:func:`full` with at most ``limit`` tasks from index ``first`` (and about ``max_bytes`` of
    results): the reply to ``status JOB`` stays bounded however big the job. ``page`` says where
    the next page starts (None: this was the last); groups come with the first page only.
    Runs on the loop's thread; costs O(page) plus the job's counts.

    With ``state`` only the tasks in that state (``tasks_state``): ``count`` is how many the page
    holds, ``next`` the index the next page's scan starts from; a state no task is in (the job's
    counts say so) costs no scan at all, any other one scan of the tasks' states from ``first``.
    """
    total = len(job.tasks)
    first = max(0, min(first, total))
    routes = engine_routes(job)[0]
    kept = job.kept
    if state is not None:
        tasks: list[TaskStatus] = []
        nxt = total
        if job.counts().get(state):
            budget = max_bytes
            for i in range(first, total):
                t = job.tasks[i]
                if t.state != state:
                    continue
                if len(tasks) >= max(1, limit) or budget <= 0:
                    nxt = i
                    break
                tasks.append(task_status(t, routes, kept))
                budget -= _approx_size(t.result) + _approx_size(t.error) + _approx_size(t.progress) + 300
        out = full(job, tasks=tasks, with_groups=first == 0)
        out["page"] = {"from": first, "count": len(tasks), "total": total,
                       "next": nxt if nxt < total else None}
        return out
    end = min(total, first + max(1, limit))
    tasks = []
    budget = max_bytes
    for t in job.tasks[first:end]:
        tasks.append(task_status(t, routes, kept))
        budget -= _approx_size(t.result) + _approx_size(t.error) + _approx_size(t.progress) + 300
        if budget <= 0:
            break
    nxt = first + len(tasks)
    out = full(job, tasks=tasks, with_groups=first == 0)
    out["page"] = {"from": first, "count": len(tasks), "total": total, "next": nxt if nxt < total else None}
    return out


# -- the columnar view (format 2) ----------------------------------------------------------------


def _column(tasks: Sequence[TaskRun], name: str) -> list[Any]:
    """One dense column of ``tasks`` (the job's storage is read here and in _sparse only)."""
    if name == "state":
        codes = TASK_STATE_CODES
        return [codes[t.state] for t in tasks]
    if name == "attempts":
        return [len(t.attempts) for t in tasks]
    if name == "started_at":
        return [nan if (x := t.started_at) is None else x for t in tasks]
    if name == "finished_at":
        return [nan if (x := t.finished_at) is None else x for t in tasks]
    raise KeyError(name)


def _sparse(
    tasks: Sequence[TaskRun],
    indices: Sequence[int],
    max_bytes: int,
    routes: dict[tuple[str, str | None], str | None] | None = None,
) -> tuple[int, dict[str, tuple[list[int], list[Any]]]]:
    """The sparse columns of ``tasks`` (``indices[k]`` is the index of ``tasks[k]``): how many
    tasks they cover (fewer than all when about ``max_bytes`` of values were reached) and
    ``{column: (indices, values)}``. With ``routes`` (a job not all on the local engines: see
    :func:`engine_routes`) each task that gets a name gets its engine too."""
    out: dict[str, tuple[list[int], list[Any]]] = {key: ([], []) for key in SPARSE}
    quiet = _QUIET
    # One comprehension finds the tasks with anything to send (most of a big job has nothing).
    noted = [
        k
        for k, t in enumerate(tasks)
        if t.state not in quiet
        or t.result is not None
        or t.error is not None
        or t.progress is not None
        or t.exit_code is not None
        or t.retry_at is not None
    ]
    name_i, name_v = out["name"]
    engine_i, engine_v = out["engine"]
    budget = max_bytes
    unsuccessful = UNSUCCESSFUL
    for k in noted:
        t = tasks[k]
        i = indices[k]
        state, progress = t.state, t.progress
        if state not in quiet or progress is not None:
            name = t.spec.name
            name_i.append(i)
            name_v.append(name)
            budget -= 5 + len(name)
            if routes is not None:
                engine_i.append(i)
                engine_v.append(routes[(t.spec.kind, t.spec.engine)])
        for key, value in (
            ("result", t.result),
            ("error", t.error),
            ("progress", progress),
            ("exit_code", t.exit_code),
            ("reason", t.reason),
            ("retry_at", t.retry_at),
        ):
            if value is not None:
                out[key][0].append(i)
                out[key][1].append(value)
                budget -= 4 + (9 if isinstance(value, (int, float)) else _approx_size(value))
        if t.tail and state in unsuccessful:
            out["tail"][0].append(i)
            out["tail"][1].append(list(t.tail))
            budget -= sum(len(line) for line in t.tail)
        if budget <= 0:
            return k + 1, out
    return len(tasks), out


def columns_page(
    job: Job, first: int, limit: int = COLUMN_PAGE_TASKS, max_bytes: int = PAGE_BYTES
) -> ColumnStatusWire:
    """The columnar status (format 2) of at most ``limit`` tasks from ``first`` (fewer when their
    sparse values pass about ``max_bytes``); ``groups`` come with the first page only."""
    total = len(job.tasks)
    first = max(0, min(first, total))
    end = min(total, first + max(1, min(limit, COLUMN_PAGE_TASKS)))
    tasks = job.tasks[first:end]
    routes, all_local = engine_routes(job)
    covered, sparse = _sparse(tasks, range(first, end), max_bytes, None if all_local else routes)
    if covered < len(tasks):
        tasks = tasks[:covered]
    end = first + len(tasks)
    kept = job.kept
    if kept:  # a retried job: the run each kept task of the page completed in
        sparse["kept_from"] = _kept_column(kept, (i for i in sorted(kept) if first <= i < end))
    states = bytes(_column(tasks, "state"))
    return {
        "format": FORMAT_COLUMNS,
        "job": detail(job),
        "groups": groups(job, runs=True) if first == 0 else [],
        "columns": {
            "from": first,
            "count": len(tasks),
            "total": total,
            "next": end if end < total else None,
            "state": states,
            "attempts": pack_u32(_column(tasks, "attempts")),
            "started_at": pack_f64(_column(tasks, "started_at")),
            "finished_at": pack_f64(_column(tasks, "finished_at")),
        },
        "sparse": {key: [pack_u32(idx), values] for key, (idx, values) in sparse.items() if idx},
    }


def changes_page(
    job: Job, since: str, limit: int = COLUMN_PAGE_TASKS, max_bytes: int = PAGE_BYTES
) -> ColumnStatusWire:
    """The reply to ``changes_since``: the rows of the tasks changed since the cursor ``since``
    (at most about ``max_bytes`` of sparse values; ``more`` says the rest is to be asked for), or,
    when the job's change log cannot answer it (see RESETS in procpool.contract.status), the
    first page of the whole columnar status with ``reset`` saying why. Either way ``cursor`` is
    the one for the next poll. Costs O(changes since the cursor), never a walk of every task
    (but a reset: a full page, and the change log started when nobody asked before).
    """
    log = track(job)
    cursor = parse_cursor(since)
    reset = "new" if cursor is None else "unknown" if cursor[0] != log.epoch else None
    changed: list[int] = []
    if cursor is not None and reset is None:
        seq = cursor[1]
        if seq > log.seq:
            reset = "unknown"  # ahead of this log: another daemon's, never this one's
        elif not log.covers(seq):
            reset = "old"
        else:
            changed = log.since(seq)
            if len(changed) > min(limit, COLUMN_PAGE_TASKS):
                reset = "many"
    if reset is not None:
        out = columns_page(job, 0, limit, max_bytes)
        out["cursor"], out["changes"], out["reset"] = format_cursor(log.epoch, log.seq), False, reset
        return out
    assert cursor is not None
    rows = [job.tasks[i] for i in changed]
    routes, all_local = engine_routes(job)
    covered, sparse = _sparse(rows, changed, max_bytes, None if all_local else routes)
    more = covered < len(rows)
    # Cut short: the next poll starts at the first change of the first task left out (every
    # change before it is of a task sent, whose row is as it stands now).
    nxt = log.first_change(changed[covered], cursor[1]) if more else log.seq
    if more:
        rows, changed = rows[:covered], changed[:covered]
    kept = job.kept
    if kept:
        sparse["kept_from"] = _kept_column(kept, (i for i in changed if i in kept))
    return {
        "format": FORMAT_COLUMNS,
        "job": detail(job),
        "groups": [],
        "columns": {
            "from": 0,
            "count": len(rows),
            "total": len(job.tasks),
            "next": None,
            "index": pack_u32(changed),
            "state": bytes(_column(rows, "state")),
            "attempts": pack_u32(_column(rows, "attempts")),
            "started_at": pack_f64(_column(rows, "started_at")),
            "finished_at": pack_f64(_column(rows, "finished_at")),
        },
        "sparse": {key: [pack_u32(idx), values] for key, (idx, values) in sparse.items() if idx},
        "cursor": format_cursor(log.epoch, nxt),
        "changes": True,
        "more": more,
    }


def _kept_column(kept: dict[int, int], indices: Iterable[int]) -> tuple[list[int], list[Any]]:
    """The ``kept_from`` sparse column of the tasks ``indices`` (each one kept)."""
    idx = list(indices)
    return idx, [kept[i] for i in idx]


def summary_status(job: Job) -> SummaryStatus:
    """The summary view (format 3): the job's head and counts, no task read."""
    return {"format": FORMAT_SUMMARY, "job": detail(job)}


def page(
    job: Job,
    view: View,
    first: int,
    limit: int,
    columns_limit: int | None = None,
    changes_since: str | None = None,
    tasks_state: str | None = None,
) -> FullStatus | ColumnStatusWire | SummaryStatus:
    """One page of the job's status in ``view``: at most ``limit`` tasks in the full view, and
    ``columns_limit`` (default and at most COLUMN_PAGE_TASKS) in the columnar one; none in the
    summary view. With ``changes_since`` (columns view only) what changed since that cursor;
    with ``tasks_state`` (the full view; the summary's head carries the counts either way) only
    the tasks in that state."""
    if view == "summary":
        return summary_status(job)
    if tasks_state is not None:
        return full_page(job, first, limit, state=tasks_state)
    columns = COLUMN_PAGE_TASKS if columns_limit is None else columns_limit
    if changes_since is not None:
        return changes_page(job, changes_since, columns)
    if view == "columns":
        return columns_page(job, first, columns)
    return full_page(job, first, limit)


def strip_tails(reply: dict[str, Any]) -> None:
    """Remove the output tails from a status reply (for a reader who may not read the job's logs)."""
    if "sparse" in reply:
        reply["sparse"].pop("tail", None)
    for t in reply.get("tasks", ()):
        t["tail"] = []
    if "task" in reply:
        reply["task"]["tail"] = []


# -- wait ------------------------------------------------------------------------------------------


def task_reply(job: Job, index: int) -> TaskReply:
    """The status of one task, with its job's summary."""
    t = job.tasks[index]
    return {
        "id": t.id,
        "finished": t.state in FINAL_TASK_STATES,
        "state": t.state,
        "task": task_status(t, engine_routes(job)[0], job.kept),
        "job": summary(job),
    }


def wait_reply(job: Job, view: View, page_size: int, changes_since: str | None = None) -> WaitReply:
    """What a ``wait`` for the job returns: the first page of its status in ``view`` (the client
    fetches the others), or with ``changes_since`` what changed since that cursor."""
    return {
        "id": job.id,
        "finished": job.finished,
        "state": job.state,
        "status": page(job, view, 0, page_size, changes_since=changes_since),
    }


def _approx_size(value: Any) -> int:
    """A cheap estimate of ``value``'s encoded size (strings and bytes to one level of nesting)."""
    if value is None:
        return 0
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return sum(len(v) if isinstance(v, (bytes, str)) else 16 for v in value) + 8
    return 16

"""Text rendering of replies: pure functions of reply data (no I/O)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from procpool.cli import failures
from procpool.contract.states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_TASK_STATES,
    JOB_STATES,
    PENDING,
    QUEUED,
    READY,
    RUNNING,
    SKIPPED,
    TASK_STATES,
    TIMEOUT,
)
from procpool.contract.status import JobStatus

#: Tasks a job summary lists (those that did not complete, then the running ones).
LISTED_TASKS = 20
#: Tasks whose output tail a job summary shows.
TAILS_SHOWN = 3


def duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary(data: dict[str, Any]) -> str:
    """The daemon summary of ``procctl status``."""
    workers = data.get("workers", {})
    jobs = data.get("jobs", {})
    by_state = jobs.get("by_state", {})
    states = ", ".join(f"{n} {s}" for s, n in sorted(workers.get("states", {}).items()))
    lines = [
        f"procpoold {data['version']}  pid {data['pid']}  up {duration(data.get('uptime'))}",
        f"socket   {data.get('socket', '-')}",
        *_paused_line(data.get("paused")),
        f"workers  {workers.get('configured', '-')} configured, {workers.get('busy', 0)} busy"
        + (f" ({states})" if states else ""),
        "jobs     "
        + (", ".join(f"{by_state[s]} {s}" for s in _by_job_state(by_state)) or "none")
        + f"; tasks: {jobs.get('running', 0)} running, {jobs.get('queued', 0)} waiting for a worker",
    ]
    queues = data.get("queues")
    if isinstance(queues, list) and queues:
        lines.append("queues   " + "; ".join(queue_words(q) for q in queues if isinstance(q, dict)))
    engines = workers.get("engines") or {}
    if set(engines) - {"pool", "commands"} or any(not e.get("up", True) for e in engines.values()):
        # Shown when the daemon has more than its local engines, or one is down.
        lines.append("engines  " + ", ".join(
            f"{name} up ({e.get('busy', 0)} running)" if e.get("up", True)
            else f"{name} DOWN: {e.get('reason') or 'no reason given'}"
            for name, e in engines.items()))
    logging = data.get("logging")
    if logging:
        line = f"logging  {logging.get('target')} ({logging.get('policy')})"
        if logging.get("dropped"):
            line += f", {logging['dropped']} record(s) dropped"
        if logging.get("stalled"):
            line += (f"; STALLED: the target accepted no record for {logging.get('stalled_for') or 0:.1f} s,"
                     " records are dropped until it does")
        lines.append(line)
    return "\n".join(lines)


def queue_words(q: dict[str, Any]) -> str:
    """A named queue in a few words: ``io 2/4 running, 3 waiting`` (``PAUSED`` when it is)."""
    text = f"{q.get('name')} {q.get('running', 0)}/{q.get('parallel', '-')} running"
    if q.get("waiting"):
        text += f", {q['waiting']} waiting"
    if q.get("paused"):
        text += " PAUSED"
    return text


def _paused_line(paused: Any) -> list[str]:
    """The summary's line of a paused daemon (``procctl pause --all``), or none."""
    if not isinstance(paused, dict):
        return []
    at = paused.get("at")
    when = f" at {clock(at, time.time())}" if isinstance(at, (int, float)) else ""
    return [f"PAUSED   by {paused.get('by', '?')}{when}: nothing new starts; procctl resume --all"]


def _by_job_state(by_state: dict[str, int]) -> list[str]:
    """The job states with jobs, in JOB_STATES' order (then any other a newer daemon sent)."""
    known = [s for s in JOB_STATES if by_state.get(s)]
    return known + sorted(s for s in by_state if s not in JOB_STATES and by_state[s])


#: ``procctl health``'s verdicts, by exit status
HEALTH_VERDICTS = ("healthy", "degraded", "unhealthy")


def health(data: dict[str, Any]) -> tuple[int, list[str]]:
    """The daemon's health from its summary (``status`` without a job): the index of the verdict in
    :data:`HEALTH_VERDICTS` (its exit status) and the reasons, one sentence each.

    Unhealthy: an engine is down (its tasks wait), or the log target has stalled. Degraded: log
    records were dropped."""
    level, reasons = 0, []
    for name, engine in sorted(((data.get("workers") or {}).get("engines") or {}).items()):
        if not engine.get("up", True):
            level = 2
            reasons.append(f"the engine {name} is down: {engine.get('reason') or 'no reason given'}")
    logging = data.get("logging") or {}
    if logging.get("stalled"):
        level = 2
        reasons.append(f"the log target has accepted no record for {logging.get('stalled_for') or 0:.1f} s")
    if logging.get("dropped"):
        level = max(level, 1)
        reasons.append(f"{logging['dropped']} log record(s) dropped")
    return level, reasons


MARKS = {
    PENDING: "·",
    READY: "○",
    RUNNING: "▶",
    COMPLETED: "✔",
    FAILED: "✘",
    TIMEOUT: "⏱",
    CANCELLED: "⊘",
    SKIPPED: "↷",
}


def progress_text(p: Any) -> str:
    """A task's progress in a few words: ``40%``, ``3/10 copying``, ``7`` (none: "")."""
    if not p or not isinstance(p, dict):
        return ""
    if "fraction" in p:
        text = f"{p['fraction'] * 100:.0f}%"
    elif "done" in p:
        text = f"{p['done']}/{p['total']}" if "total" in p else str(p["done"])
    else:
        text = ""
    if p.get("message"):
        text = f"{text} {p['message']}".strip()
    return text


def user(job: dict[str, Any]) -> str:
    """Who submitted a job: ``alice (1000)``, ``1000`` for a uid without a name, ``-`` if unknown."""
    uid, name = job.get("uid"), job.get("user")
    if uid is None:
        return "-"
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def task_line(t: dict[str, Any], now: float, engine: bool = False) -> str:
    """One task: its mark, name, state, attempts, time and what went wrong; with ``engine`` the
    engine it runs on (``on dask``), for a job whose tasks do not all run on the local engines."""
    end = t.get("finished_at") or (now if t.get("started_at") else None)
    took = duration(end - t["started_at"]) if end and t.get("started_at") else "-"
    attempts = t.get("attempts", 0)
    parts = [f"{MARKS.get(t['state'], '?')} {t['name']}", t["state"]]
    if engine:
        parts.append(f"on {t.get('engine') or '?'}")
    if attempts:
        parts.append(f"{attempts} attempt{'s' if attempts != 1 else ''}")
    parts.append(took)
    if t.get("kept_from"):  # a retry kept it, completed in an earlier run
        parts.append(f"kept from run {t['kept_from']}")
    progress = progress_text(t.get("progress"))
    if progress and t["state"] == RUNNING:
        parts.append(progress)
    what = failures.headline(t)
    if what:
        parts.append(what)
    return "  ".join(parts)


def task_report(t: dict[str, Any], now: float) -> str:
    """One task (``procctl status 12.3``, ``wait 12.3``): its line, and what went wrong in detail."""
    return "\n".join([task_line(t, now), *failures.details(t)])


#: A group with more children than this is shown as a line of counts (and its tasks that
#: failed or run), unless every task is asked for.
COLLAPSE_CHILDREN = 20
#: Tasks of a collapsed group listed under its counts (those that failed, then the running ones).
COLLAPSED_LISTED = 5


def job_tree(status: dict[str, Any], now: float, collapse: int | None = COLLAPSE_CHILDREN) -> str:
    """``procctl status JOB``: the job's head, its counts, and its tree like a file tree; a group
    of more than ``collapse`` children (None: never) as a line of counts, with its tasks that
    failed or run (at most :data:`COLLAPSED_LISTED`)."""
    job = status["job"]
    groups = status["groups"]
    tasks = status["tasks"]
    lines = _job_head(job, now, cycles=False)
    lines.append("  " + counts_line(job.get("counts") or _count(tasks), int(job.get("tasks", len(tasks)))))
    engine = job.get("all_local") is False  # (a daemon from before engines had names: no field)
    cycling = _cycles_of(job)

    def cycle(kind: str, index: int) -> str:
        c = cycling.get((kind, index)) if cycling else None
        return f"  ({cycle_words(c, now)})" if c is not None else ""

    def under(index: int) -> list[dict[str, Any]]:
        """The tasks of group ``index`` and of the groups in it, in order."""
        out: list[dict[str, Any]] = []
        for kind, i in groups[index]["children"]:
            out.extend([tasks[i]] if kind == "task" else under(i))
        return out

    def walk(node: list[Any], prefix: str, last: bool, top: bool) -> None:
        kind, index = node
        branch = "" if top else ("└─ " if last else "├─ ")
        if kind == "task":
            lines.append(prefix + branch + task_line(tasks[index], now, engine) + cycle(kind, index))
            return
        g = groups[index]
        inner = prefix + ("" if top else ("   " if last else "│  "))
        if collapse is not None and len(g["children"]) > collapse:
            members = under(index)
            counted = counts_line(_count(members), len(members))
            lines.append(f"{prefix}{branch}{g['kind']} {g['name']}  {counted}{cycle(kind, index)}")
            shown = [t for t in members if t["state"] in (FAILED, TIMEOUT)]
            shown += [t for t in members if t["state"] == RUNNING]
            for t in shown[:COLLAPSED_LISTED]:
                lines.append(f"{inner}   {task_line(t, now, engine)}")
            if len(shown) > COLLAPSED_LISTED:
                more = len(shown) - COLLAPSED_LISTED
                lines.append(f"{inner}   … and {more} more failed or running task{'s' if more != 1 else ''}")
            return
        lines.append(f"{prefix}{branch}{g['kind']} {g['name']}{cycle(kind, index)}")
        for i, child in enumerate(g["children"]):
            walk(child, inner, i == len(g["children"]) - 1, False)

    walk(job["root"], "", True, True)
    if job.get("namespace"):
        lines.append("namespace: " + ", ".join(f"{k}={v!r}" for k, v in sorted(job["namespace"].items())))
    lines.extend(failures.report(tasks))
    return "\n".join(lines)


def task_list(status: dict[str, Any], now: float, state: str, hint: str = "") -> str:
    """``procctl status JOB --state STATE``: the job's head, its counts, then each of its tasks in
    ``state`` (the daemon sent only those: ``tasks_state``), with its id."""
    job = status["job"]
    tasks = status["tasks"]
    lines = _job_head(job, now)
    lines.append("  " + counts_line(job.get("counts") or {}, int(job.get("tasks", 0))))
    if not tasks:
        lines.append(f"  no task is {state}")
    engine = job.get("all_local") is False
    lines.extend(f"  {t['id']:<8} {task_line(t, now, engine)}" for t in tasks)
    lines.extend(failures.report(tasks))
    return "\n".join(lines)


def _count(tasks: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tasks:
        out[t["state"]] = out.get(t["state"], 0) + 1
    return out


def clock(ts: float | None, now: float) -> str:
    """A point in time, short: ``14:03:27`` today, ``Mar 02 14:03`` before; ``-`` for none."""
    if ts is None:
        return "-"
    at, today = time.localtime(ts), time.localtime(now)
    if at[:3] == today[:3]:
        return time.strftime("%H:%M:%S", at)
    return time.strftime("%b %d %H:%M", at)


def job_table(jobs: list[dict[str, Any]], now: float, matched: int | None = None, more_hint: str = "") -> str:
    """The job list of ``procctl status``, like pueue's: queued, running, held and finished jobs
    each with what they have (the start, end and duration of those that started; tasks done of
    all), and ``N of M jobs shown`` when the list is cut (``matched``: how many jobs matched)."""
    if not jobs:
        return "no jobs" + (f" ({matched} matched)" if matched else "")
    rows = [("ID", "NAME", "USER", "STATE", "TASKS", "START", "END", "DURATION")]
    for j in jobs:
        counts = j.get("counts", {})
        done = sum(n for state, n in counts.items() if state in FINAL_TASK_STATES)
        started, finished = j.get("started_at"), j.get("finished_at")
        state = j["state"]
        if state == QUEUED or (state == PENDING and started is None):
            took = "-"
        else:
            took = duration(((finished or now) - started) if started else None)
        rows.append(
            (
                j["id"],
                j["name"],
                user(j),
                state + (f" (run {j['run']})" if j.get("run", 1) > 1 else ""),
                f"{done}/{j['tasks']}",
                clock(started, now),
                clock(finished, now),
                took,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    total = len(jobs) if matched is None else max(matched, len(jobs))
    if total > len(jobs):
        lines.append(f"{len(jobs)} of {total} jobs shown (the newest){more_hint}")
    else:
        lines.append(f"{total} job{'s' if total != 1 else ''}")
    return "\n".join(lines)


def cycle_words(c: dict[str, Any], now: float) -> str:
    """A node's cycle: ``cycle 3/10``, ``cycle 7`` (repeat forever), ``cycle 2/5, next cycle in 4.0s``."""
    repeat = c.get("repeat")
    words = f"cycle {c.get('cycle')}" + (f"/{repeat}" if isinstance(repeat, int) else "")
    when = c.get("next_cycle_at")
    if isinstance(when, (int, float)):
        words += f", next cycle in {duration(max(0.0, when - now))}"
    return words


#: Cycling nodes named on the ``cycles:`` line of a job's head (a tree names each on its line).
CYCLES_LISTED = 5


def _cycles_of(job: dict[str, Any]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The job's nodes that cycle on their own clock, by (kind, index) (none: empty)."""
    return {(c.get("kind"), c.get("index")): c for c in job.get("cycles") or () if isinstance(c, dict)}


def _job_head(job: dict[str, Any], now: float, cycles: bool = True) -> list[str]:
    """A job's first line (and the reason it ended, if any); with ``cycles``, a line of its nodes
    that cycle on their own clock (a tree shows each on its own line instead)."""
    repeat = job.get("repeat", 1)
    runs = f"run {job['run']}/{'∞' if repeat == 'forever' else repeat}"
    if isinstance(repeat, int) and job["run"] > repeat:  # a run of procctl retry
        runs = f"run {job['run']} (retry)"
    end = job.get("finished_at") or now
    took = duration(end - job["started_at"]) if job.get("started_at") else "-"
    lines = [f'job {job["id"]} "{job["name"]}"  {job["state"]}  {runs}  {took}  {user(job)}'.rstrip()]
    if job.get("reason"):
        lines.append(f"  reason: {job['reason']}")
    if job.get("next_run_at"):
        when = job["next_run_at"]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        lines.append(f"  next run: {stamp} (in {duration(max(0.0, when - now))})")
    if cycles and job.get("cycles"):
        nodes = list(_cycles_of(job).values())
        total = job.get("cycles_total") or len(nodes)
        line = "  cycles: " + "; ".join(
            f"{c.get('kind')} {c.get('name')} {cycle_words(c, now)}" for c in nodes[:CYCLES_LISTED])
        if total > CYCLES_LISTED:
            line += f"; and {total - CYCLES_LISTED} more"
        lines.append(line)
    if job.get("kept"):
        lines.append(f"  kept: {job['kept']} completed task{'s' if job['kept'] != 1 else ''} of earlier runs "
                     "(their results too)")
    if job.get("all_local") is False:  # some task runs elsewhere than on this daemon's own engines
        lines.append("  engines: " + ", ".join(job.get("engines") or ()))
    return lines


def counts_line(counts: dict[str, int], total: int) -> str:
    """``20000 tasks: 19990 completed, 10 failed`` (states in their order)."""
    parts = [f"{counts[s]} {s}" for s in TASK_STATES if counts.get(s)]
    return f"{total} task{'s' if total != 1 else ''}: " + (", ".join(parts) or "none")


#: The task states a job's summary lists, in this order: what failed, then what runs.
SUMMARY_STATES: tuple[str, ...] = (FAILED, TIMEOUT, RUNNING)


def job_summary(status: JobStatus, now: float, listed: int = LISTED_TASKS, hint: str = "") -> str:
    """A job's summary from its columnar status (the end of ``submit --wait`` and ``wait``): see
    :func:`job_digest`; the tasks that failed and the running ones are picked from the columns."""
    job: dict[str, Any] = dict(status.job)
    if not job.get("counts"):
        job["counts"] = status.counts()
    job.setdefault("tasks", status.total)
    shown: list[dict[str, Any]] = []
    for states in ((FAILED, TIMEOUT), (RUNNING,)):
        for i in status.indices(*states):
            if len(shown) >= listed:
                break
            row = asdict(status.task(i))
            row["name"] = row["name"] if row["name"] is not None else f"#{i}"
            shown.append(row)
    return job_digest(job, shown, now, hint)


def job_digest(job: dict[str, Any], shown: list[dict[str, Any]], now: float, hint: str = "") -> str:
    """A job without a line per task: its head, its counts, the tasks ``shown`` (those that failed,
    then the running ones, at most :data:`LISTED_TASKS` of them) and how many more of those there
    are, its namespace, and the last lines of the first failures (at most :data:`TAILS_SHOWN`).
    ``hint`` ends the notice of tasks not listed (how to list them)."""
    lines = _job_head(job, now)
    counts = job.get("counts") or {}
    lines.append("  " + counts_line(counts, int(job.get("tasks", 0))))
    engine = job.get("all_local") is False
    lines.extend("  " + task_line(t, now, engine) for t in shown)
    more = sum(counts.get(state, 0) for state in SUMMARY_STATES) - len(shown)
    if more > 0:
        lines.append(f"  … and {more} more failed or running task{'s' if more != 1 else ''}" + hint)
    ns = job.get("namespace")
    if ns:
        lines.append("namespace: " + ", ".join(f"{k}={v!r}" for k, v in sorted(ns.items())))
    lines.extend(failures.report(shown, TAILS_SHOWN, None))
    return "\n".join(lines)


def progress_line(status: JobStatus, width: int = 80) -> str:
    """One line of live progress that fits in ``width`` columns: a bar, the tasks done of all,
    the run, the job's state and the running tasks (as many as fit)."""
    job = status.job
    counts = job.get("counts") or status.counts()
    total = int(job.get("tasks", status.total))
    final = sum(n for state, n in counts.items() if state in FINAL_TASK_STATES)
    bar = max(5, min(30, width // 4))
    filled = int(bar * final / total) if total else bar
    text = f"[{'#' * filled}{'.' * (bar - filled)}] {final}/{total}  run {job['run']}  {job['state']}"
    bad = sum(counts.get(s, 0) for s in (FAILED, TIMEOUT))
    if bad:
        text += f"  {bad} failed"
    n_running = counts.get(RUNNING, 0)
    if n_running:
        names = []
        for i in status.indices(RUNNING):
            row = status.task(i)
            progress = progress_text(row.progress)
            names.append(f"{row.name or f'#{i}'}" + (f" {progress}" if progress else ""))
            if len(names) >= 4:
                break
        # as many running tasks as fit, then how many more
        for k in range(len(names), -1, -1):
            rest = n_running - k
            more = f" +{rest}" if rest else ""
            listed = f"running: {', '.join(names[:k])}{more}" if k else f"{n_running} running"
            candidate = f"{text}  {listed}"
            if len(candidate) <= width or k == 0:
                text = candidate
                break
    return fit(text, width)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when it was cut."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"

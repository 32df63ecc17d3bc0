"""Text rendering of replies: pure functions of reply data (no I/O)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from procpool.cli import failures
from procpool.contract.states import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_TASK_STATES,
    PENDING,
    READY,
    RUNNING,
    SKIPPED,
    TASK_STATES,
    TIMEOUT,
)
from procpool.contract.status import JobStatus, TaskRow

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
        f"workers  {workers.get('configured', '-')} configured, {workers.get('busy', 0)} busy"
        + (f" ({states})" if states else ""),
        "jobs     "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none")
        + f"; {jobs.get('running', 0)} attempt(s) running, {jobs.get('queued', 0)} queued",
    ]
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


def _progress(p: dict[str, Any] | None) -> str:
    if not p:
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
    progress = _progress(t.get("progress"))
    if progress and t["state"] == RUNNING:
        parts.append(progress)
    what = failures.headline(t)
    if what:
        parts.append(what)
    return "  ".join(parts)


def task_report(t: dict[str, Any], now: float) -> str:
    """One task (``procctl status 12.3``, ``wait 12.3``): its line, and what went wrong in detail."""
    return "\n".join([task_line(t, now), *failures.details(t)])


def job_tree(status: dict[str, Any], now: float) -> str:
    """``procctl status JOB``: the job header and its tree, like a file tree."""
    job = status["job"]
    groups = status["groups"]
    tasks = status["tasks"]
    lines = _job_head(job, now)
    engine = job.get("all_local") is False  # (a daemon from before engines had names: no field)

    def walk(node: list[Any], prefix: str, last: bool, top: bool) -> None:
        kind, index = node
        branch = "" if top else ("└─ " if last else "├─ ")
        if kind == "task":
            lines.append(prefix + branch + task_line(tasks[index], now, engine))
            return
        g = groups[index]
        lines.append(f"{prefix}{branch}{g['kind']} {g['name']}")
        inner = prefix + ("" if top else ("   " if last else "│  "))
        for i, child in enumerate(g["children"]):
            walk(child, inner, i == len(g["children"]) - 1, False)

    walk(job["root"], "", True, True)
    if job.get("namespace"):
        lines.append("namespace: " + ", ".join(f"{k}={v!r}" for k, v in sorted(job["namespace"].items())))
    lines.extend(failures.report(tasks))
    return "\n".join(lines)


def job_table(jobs: list[dict[str, Any]], now: float) -> str:
    """The job list of ``procctl status``."""
    if not jobs:
        return "no jobs"
    rows = [("ID", "NAME", "USER", "STATE", "RUN", "TASKS", "AGE")]
    for j in jobs:
        counts = j.get("counts", {})
        done = counts.get(COMPLETED, 0)
        rows.append(
            (
                j["id"],
                j["name"],
                user(j),
                j["state"],
                str(j["run"]),
                f"{done}/{j['tasks']}",
                duration(now - j["created_at"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _job_head(job: dict[str, Any], now: float) -> list[str]:
    """A job's first line (and the reason it ended, if any)."""
    repeat = job.get("repeat", 1)
    runs = f"run {job['run']}/{'∞' if repeat == 'forever' else repeat}"
    end = job.get("finished_at") or now
    took = duration(end - job["started_at"]) if job.get("started_at") else "-"
    lines = [f'job {job["id"]} "{job["name"]}"  {job["state"]}  {runs}  {took}  {user(job)}'.rstrip()]
    if job.get("reason"):
        lines.append(f"  reason: {job['reason']}")
    if job.get("all_local") is False:  # some task runs elsewhere than on this daemon's own engines
        lines.append("  engines: " + ", ".join(job.get("engines") or ()))
    return lines


def counts_line(counts: dict[str, int], total: int) -> str:
    """``20000 tasks: 19990 completed, 10 failed`` (states in their order)."""
    parts = [f"{counts[s]} {s}" for s in TASK_STATES if counts.get(s)]
    return f"{total} task{'s' if total != 1 else ''}: " + (", ".join(parts) or "none")


def row_line(row: TaskRow, now: float, engine: bool = False) -> str:
    """One task of a columnar status, as :func:`task_line` shows a task."""
    data = asdict(row)
    data["name"] = row.name if row.name is not None else f"#{row.index}"
    return task_line(data, now, engine)


def job_summary(status: JobStatus, now: float, listed: int = LISTED_TASKS, hint: str = "") -> str:
    """``procctl status JOB`` of a big job: its head, the counts, the tasks that did not complete
    and the running ones (at most ``listed``) and how many more there are; never a line per task.
    ``hint`` ends the notice of tasks not listed (how to list them all)."""
    job: dict[str, Any] = dict(status.job)
    lines = _job_head(job, now)
    counts = job.get("counts") or status.counts()
    lines.append("  " + counts_line(counts, int(job.get("tasks", status.total))))
    shown: list[TaskRow] = []
    more = 0
    for states in ((FAILED, TIMEOUT), (RUNNING,)):
        for i in status.indices(*states):
            if len(shown) < listed:
                shown.append(status.task(i))
            else:
                more += 1
    engine = job.get("all_local") is False
    lines.extend("  " + row_line(row, now, engine) for row in shown)
    if more:
        lines.append(f"  … and {more} more failed or running task{'s' if more != 1 else ''}" + hint)
    ns = job.get("namespace")
    if ns:
        lines.append("namespace: " + ", ".join(f"{k}={v!r}" for k, v in sorted(ns.items())))
    lines.extend(failures.report(shown, TAILS_SHOWN, None))
    return "\n".join(lines)


def progress_line(status: JobStatus, width: int = 30) -> str:
    """One line for live progress: a bar, the counts and the running tasks."""
    job = status.job
    counts = job.get("counts") or status.counts()
    total = int(job.get("tasks", status.total))
    final = sum(n for state, n in counts.items() if state in FINAL_TASK_STATES)
    filled = int(width * final / total) if total else width
    running = []
    for i in status.indices(RUNNING):
        row = status.task(i)
        progress = _progress(row.progress)
        running.append(f"{row.name or f'#{i}'}" + (f" {progress}" if progress else ""))
        if len(running) > 4:
            break
    n_running = counts.get(RUNNING, 0)
    text = f"[{'#' * filled}{'.' * (width - filled)}] {final}/{total}  run {job['run']}  {job['state']}"
    if running:
        shown = ", ".join(running[:4]) + (f" +{n_running - 4}" if n_running > 4 else "")
        text += f"  running: {shown}"
    return text

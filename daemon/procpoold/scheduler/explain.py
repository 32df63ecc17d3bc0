"""Explain: why a task is in its state, in words and as data (``procctl explain``).

What the scheduler decided is read as it recorded it: the reason the job noted for the task
(:mod:`procpoold.core.reasons`: a retry delay, an interruption, the upstream task whose failure
skipped it, ...), the readiness counters of the job (the dependencies not complete yet), the
prerequisites a pending job was registered to wait for (``_after``), the held state a restart set,
a pause (of the job or of the daemon: who paused it, and when),
the attempts as they ended, and since when the pump has found an engine without a free slot
(``stalls``). Only what is current by nature is read at the time of the question: a task's place
in its engine's ready queue (walked in the order the pump pops it), the engine's health and free
slots, the clock.
"""

from __future__ import annotations

import time
from typing import Any

from procpool.contract.errors import ProcpoolError
from procpool.contract.tree import PRIORITIES
from procpool.contract.words import plural
from procpoold.core import reasons as why
from procpoold.core.cycles import CyclingJob
from procpoold.core.gates import JOB, Waiting
from procpoold.core.jobs import Attempt, Job, Node, TaskRun
from procpoold.core.queue import Place
from procpoold.core.states import FINAL_TASK_STATES
from procpoold.scheduler.state import Ref, SchedulerState

#: Unfinished tasks of a job explained one by one (the others are counted by reason).
JOB_TASKS_SHOWN = 20
#: Dependencies named for one waiting task (the others are counted).
BLOCKERS_SHOWN = 5

_OUTCOME = {
    "completed": "completed",
    "failed": "failed",
    "timeout": "timed out",
    "cancelled": "was cancelled",
    "interrupted": "was interrupted by the daemon (it used no retry)",
    "paused": "was stopped by pause --stop (it used no retry)",
    None: "is running",
}
_VERB = {"failed": "failed", "timeout": "timed out", "cancelled": "was cancelled", "skipped": "was skipped"}


def seconds(value: float) -> str:
    """A duration in words: ``0.35 s``, ``12.0 s``, ``4 min 05 s``, ``2 h 03 min``."""
    value = max(0.0, value)
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def clock(ts: float | None) -> str:
    """A time of day of the daemon's clock (the client runs on the same host)."""
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


class Explain(SchedulerState):
    """``explain``: the reasons of a task, or of a job's unfinished tasks (loop thread, read-only)."""

    def explain(self, ref: str) -> dict[str, Any]:
        """Why task ``ref`` (``12.3``, ``12/name``) is in its state, or for a job (``12``) why it
        and its unfinished tasks are where they are.

        Loop thread; raises ``not_found``. May read a finished job back from the store (as status
        does); changes nothing. A job's answer walks its tasks once (O(tasks)) and explains at
        most :data:`JOB_TASKS_SHOWN` of them in full.
        """
        job, index = self.resolve(ref)
        now = self.clock()
        if index is not None:
            places = self._places(job, [index])
            return {"id": ref, "kind": "task", **self._task(job, index, now, places, brief=False)}
        return {"id": ref, "kind": "job", **self._job_reasons(job, now)}

    # -- a job ----------------------------------------------------------------------------------

    def _job_reasons(self, job: Job, now: float) -> dict[str, Any]:
        counts = job.counts()
        total = len(job.tasks)
        head = f'job {job.id} "{job.spec.name}" is {job.state}'
        if job.spec.repeat != 1:
            head += f" (run {job.run}{'' if job.spec.repeat is None else f' of {job.spec.repeat}'})"
        elif job.run > 1:
            head += f" (run {job.run}, a retry)"
        text = [head + ": " + ", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {total} tasks"]
        kept = job.kept
        if kept:
            runs = sorted(set(kept.values()))
            text.append(f"{plural(len(kept), 'completed task')} kept from run {', '.join(map(str, runs))} "
                        "by procctl retry")
        out: dict[str, Any] = {"job": job.id, "name": job.spec.name, "state": job.state, "counts": counts}
        condition = self._job_condition(job)
        if condition is not None:
            out["reason"], lines, extra = condition
            text += lines
            out.update(extra)
        else:
            out["reason"] = job.state
            if job.reason:
                text.append(f"reason: {job.reason}")
        if job.stop_requested:  # (procctl stop: its reason says who, and after which run)
            out["stopped"] = True
            if condition is not None and job.reason:
                text.append(f"reason: {job.reason}")
        # Unfinished tasks first (each classified cheaply); for a finished job, those that failed.
        by_reason: dict[str, int] = {}
        shown: list[int] = []
        for t in job.tasks:
            state = t.state
            if job.finished:
                if state in ("failed", "timeout") and len(shown) < JOB_TASKS_SHOWN:
                    shown.append(t.spec.index)
                continue
            if state in FINAL_TASK_STATES:
                continue
            key = self._brief_reason(job, t)
            by_reason[key] = by_reason.get(key, 0) + 1
            if len(shown) < JOB_TASKS_SHOWN:
                shown.append(t.spec.index)
        if by_reason:
            out["unfinished"] = by_reason
        places = self._places(job, [i for i in shown if job.tasks[i].state == "ready"])
        out["tasks"] = [self._task(job, i, now, places, brief=True) for i in shown]
        failed = counts.get("failed", 0) + counts.get("timeout", 0)
        listed = failed if job.finished else sum(by_reason.values())
        out["more"] = max(0, listed - len(shown))
        if isinstance(job, CyclingJob):  # its nodes with their own repeat/every (core.cycles)
            text += job.explain_lines(None, clock)
        out["text"] = text
        return out

    def _brief_reason(self, job: Job, t: TaskRun) -> str:
        """The reason name of an unfinished task without the words (for a job's counts)."""
        state = t.state
        if job.state == "pending":
            return "after"
        if job.state == "scheduled":
            return "scheduled"
        if job.state == "held" and state in ("pending", "ready"):
            return "held"
        if state in ("pending", "ready") and (job.state == "paused" or self.paused is not None):
            return "paused"
        if state == "pending":
            if t.retry_at is not None:
                return "retry_delay"
            return "dependency" if t.waiting else "pending"
        if state == "ready":
            parked = self.gates.parked.get((job.id, t.spec.index)) if self.gates.parked else None
            return "queued" if parked is None else parked.kind
        return state

    def _job_condition(self, job: Job) -> tuple[str, list[str], dict[str, Any]] | None:
        """What holds every task of the job back, if anything: prerequisites, or a hold."""
        if job.state == "pending":
            waiting = [ref for ref, jobs in self._after.items() if job.id in jobs]
            after = []
            for ref in waiting:
                try:
                    state = self._state_of(ref)
                except ProcpoolError:  # gone meanwhile: the job is settled at the next notice
                    state = "unknown"
                after.append({"id": ref, "state": state})
            named = ", ".join(f"{a['id']} ({a['state']})" for a in after) or "none left"
            return "after", [
                f"job {job.id} waits for its prerequisites (--after) to complete: {named}; "
                f"its tasks start once they have (if one fails, they are skipped)"
            ], {"after": after}
        if job.state == "scheduled" and (when := job.next_run_at) is not None:
            spec = job.spec
            clock_of = (f'its schedule "{spec.schedule}" ({spec.timezone})' if spec.schedule is not None
                        else f"every: {spec.every:g} s after the previous run ended")
            return "scheduled", [
                f"job {job.id} is scheduled: run {job.run} starts at {clock(when)} "
                f"(in {seconds(max(0.0, when - self.clock()))}; {clock_of})"
            ], {"next_run_at": when}
        if job.state == "held":
            return "held", [
                f"job {job.id} is held: the daemon restarted while its attempts ran, and the job "
                f"asks to wait then (on_interrupt: hold); 'procctl resume {job.id}' releases it"
            ], {}
        if job.state == "paused" and job.paused is not None:
            p = job.paused
            stopped = " (its running attempts were stopped: they run again)" if p.get("stop") else ""
            return "paused", [
                f"job {job.id} paused by {p.get('by')} at {clock(p['at'])}: nothing new of it starts"
                f"{stopped}; procctl resume {job.id}"
            ], {"paused": dict(p)}
        if self.paused is not None and not job.finished:
            p = self.paused
            return "paused", [
                f"procpoold paused by {p.get('by')} at {clock(p['at'])}: nothing new starts for any job; "
                "procctl resume --all"
            ], {"paused": dict(p), "daemon_paused": True}
        return None

    # -- a task ---------------------------------------------------------------------------------

    def _task(
        self, job: Job, index: int, now: float, places: dict[Ref, Place], brief: bool
    ) -> dict[str, Any]:
        t = job.tasks[index]
        state = t.state
        code, arg = job.reasons.get(index, state) if job.reasons is not None else (why.ORDINARY, 0)
        out: dict[str, Any] = {
            "task": t.id,
            "name": t.spec.name,
            "job": job.id,
            "state": state,
            "priority": t.spec.priority,
            "code": why.NAMES[code],
        }
        text: list[str] = []
        condition = self._job_condition(job) if state in ("pending", "ready") else None
        if condition is not None:
            out["reason"], lines, extra = condition
            text += lines
            out.update(extra)
            if code == why.INTERRUPTED:
                text.append(f"its attempt {arg} was interrupted by that restart (it used no retry)")
        elif state == "pending":
            self._pending(job, t, code, arg, now, out, text)
        elif state == "ready":
            self._ready(job, t, code, arg, places, out, text)
        elif state == "running":
            out["reason"] = "running"
            a = t.attempts[-1]
            where = f" on {a.worker}" if a.worker else f' on engine "{self._engine_of(t)}"'
            pid = f" (pid {a.pid})" if a.pid else ""
            since = a.started_at if a.started_at is not None else now
            line = f"attempt {a.number} is running since {clock(since)} ({seconds(now - since)}){where}{pid}"
            if t.spec.timeout is not None:
                line += f"; its timeout ({t.spec.timeout:g} s) stops it at {clock(since + t.spec.timeout)}"
            text.append(line)
            if t.cancel_requested or job.cancel_requested:
                text.append("it was cancelled: the attempt is being stopped")
        else:
            self._finished(job, t, code, arg, out, text)
        if isinstance(job, CyclingJob):  # (its node waits for its next cycle: core.cycles)
            text += job.explain_lines(index, clock)
        if state in FINAL_TASK_STATES:  # how each attempt ended (a job's answer: the last one)
            text += _attempt_lines(t.attempts[-1:] if brief else t.attempts, t.attempts)
        elif not brief:  # the attempts that ended before (a running task's current one is above)
            text += _attempt_lines(t.attempts[:-1] if state == "running" else t.attempts, t.attempts)
        out["attempts"] = [a.to_wire() for a in t.attempts]
        out["text"] = text
        return out

    def _pending(self, job: Job, t: TaskRun, code: int, arg: int, now: float,
                 out: dict[str, Any], text: list[str]) -> None:
        if code == why.RETRY_WAIT and t.retry_at is not None:
            out["reason"] = "retry_delay"
            out["retry_at"], out["retry_in"] = t.retry_at, max(0.0, t.retry_at - now)
            last = t.attempts[arg - 1] if 0 < arg <= len(t.attempts) else None
            outcome = "timed out" if last is not None and last.status == "timeout" else "failed"
            message = (t.error or {}).get("message")
            line = f"attempt {arg} {outcome}" + (f" ({message})" if message else "")
            if t.retry_at > now:
                line += f"; it runs again in {seconds(t.retry_at - now)} (at {clock(t.retry_at)})"
            else:
                line += "; its retry delay has run out: it is queued now"
            line += f", retry {t.failures} of {t.spec.retries}"
            text.append(line)
            return
        if t.waiting:
            out["reason"] = "dependency"
            blockers = job.incomplete_blockers(t.spec.index)
            out["waiting_for"] = [self._node(job, b) for b in blockers]
            named = [self._node_words(job, b) for b in blockers[:BLOCKERS_SHOWN]]
            if len(blockers) > BLOCKERS_SHOWN:
                named.append(f"and {len(blockers) - BLOCKERS_SHOWN} more")
            what = "its dependency" if len(blockers) == 1 else f"{len(blockers)} dependencies"
            text.append(f"waits for {what} to complete: {'; '.join(named)}")
            return
        out["reason"] = "pending"
        text.append("nothing left to wait for: it is queued at the next dispatch pass" if self.accepting
                    else "the daemon is stopping: nothing more starts")

    def _ready(self, job: Job, t: TaskRun, code: int, arg: int, places: dict[Ref, Place],
               out: dict[str, Any], text: list[str]) -> None:
        if code == why.RETRY_DUE:
            text.append(f"its retry delay after attempt {arg} ran out")
        elif code == why.REQUEUED:
            text.append(f"the daemon lost its attempt {arg} (a worker died or was replaced): "
                        "it runs again without using a retry")
        elif code == why.INTERRUPTED:
            text.append(f"its attempt {arg} was interrupted by a restart of the daemon: it runs again "
                        "without using a retry")
        parked = self.gates.parked.get((job.id, t.spec.index)) if self.gates.parked else None
        if parked is not None:  # held back by a max_parallel or a lock: it is in no queue meanwhile
            self._parked(job, t, parked, out, text)
            return
        name = self._engine_of(t)
        queue = self.queues.get(name)
        place = places.get((job.id, t.spec.index))
        if queue is not None and place is not None:
            rank = place.rank
            higher, same = sum(place.ahead[:rank]), place.ahead[rank]
            lower = sum(place.ahead[rank + 1:])
            waited = time.monotonic() - place.queued_at
            out["queue"] = {
                "engine": name, "position": place.position + 1, "of": len(queue), "waited": waited,
                "ahead": {PRIORITIES[r]: n for r, n in enumerate(place.ahead) if n},
            }
            line = (f"ready for {seconds(waited)} at priority {PRIORITIES[rank]}: number "
                    f"{place.position + 1} of the {len(queue)} ready tasks of engine \"{name}\"")
            if place.position == 0:
                line += ", the next to start"
            else:
                parts = [f"{higher} at a higher priority"] if higher else []
                if same:
                    parts.append(f"{same} at the same priority, queued earlier")
                if lower:
                    parts.append(f"{lower} at a lower priority that waited longer (aging)")
                line += "; ahead of it: " + ", ".join(parts)
            text.append(line)
        else:
            text.append(f'ready, but not in the queue of engine "{name}"'
                        + ("" if self.accepting else ": the daemon is stopping, nothing more starts"))
        executor = self.engines.by_name.get(name)
        if executor is None:
            out["reason"] = "queued"
            return
        health = executor.health()
        free = executor.free_slots()
        full_since = self.stalls.get(name)
        out["engine"] = {"name": name, "up": health.up, "reason": health.reason, "busy": health.busy,
                         "free": free, "workers": dict(health.workers), "full_since": full_since}
        if not health.up:
            out["reason"] = "engine_down"
            text.append(f'engine "{name}" is down ({health.reason or "no reason given"}): '
                        "its tasks wait until it is back")
        elif free == 0:
            out["reason"] = "no_free_slot"
            if health.workers:
                workers = sum(health.workers.values())
                every = f"all {workers} workers" if workers > 1 else "its one worker"
                capacity = f"{every} busy" if health.workers.get("busy") == workers else (
                    ", ".join(f"{n} {s}" for s, n in sorted(health.workers.items())) + " workers")
            else:
                capacity = f"{plural(health.busy, 'attempt')} running and no room for another"
            line = f'no free slot: engine "{name}" has {capacity}'
            if full_since is not None:
                line += (f" (the scheduler found it full at {clock(full_since)}, "
                         f"{seconds(self.clock() - full_since)} ago)")
            text.append(line)
        else:
            out["reason"] = "queued"
            slots = plural(free, "free slot")
            text.append(f'engine "{name}" has {slots}: it starts at the next dispatch pass')

    def _parked(self, job: Job, t: TaskRun, parked: Waiting, out: dict[str, Any], text: list[str]) -> None:
        """A ready task that waits for a place under a max_parallel, or for a lock (core.gates)."""
        gates = self.gates
        out["reason"] = parked.kind
        if parked.kind == "lock":
            name = str(parked.what)
            holders = sorted({aid.partition("@")[0] for aid in gates.holders.get(name, {})})
            held = gates.held.get(name, 0)
            ahead = 0
            for ref, _, token, _ in gates.lock_waiters.get(name, ()):
                if ref == (job.id, t.spec.index):
                    break
                w = gates.parked.get(ref)
                ahead += w is not None and w.token == token
            its = gates.jobs.get(job.id)
            mine = its[t.spec.index] if its is not None else None
            units = dict(mine.locks).get(name, 1) if mine is not None else 1
            out["lock"] = {"name": name, "limit": parked.limit, "held": held, "units": units,
                           "holders": holders, "waiting_ahead": ahead}
            line = (f'waits for lock "{name}" ({units} of its {parked.limit} '
                    f'{"unit" if parked.limit == 1 else "units"}; {held} held')
            line += f" by task {', '.join(holders)})" if holders else ")"
            if ahead:
                line += f"; {plural(ahead, 'earlier waiter')} ahead of it (first come, first served)"
            text.append(line)
            return
        if parked.kind == "queue":
            name = str(parked.what)
            running = gates.queue_running.get(name, 0)
            ahead = gates.queue_ahead((job.id, t.spec.index))
            paused = gates.queue_paused.get(name)
            out["queue_limit"] = {"name": name, "parallel": parked.limit, "running": running,
                                  "waiting_ahead": ahead, "paused": paused}
            if paused is not None:
                out["reason"] = "queue_paused"
                text.append(f'queue "{name}" is paused (by {paused["by"]} at {clock(paused["at"])}): '
                            f"nothing new of it starts until procctl resume --queue {name}")
                return
            line = (f'waits for a place in queue "{name}": parallel {parked.limit}, '
                    f"{running} of its tasks running")
            if ahead:
                line += (f"; {plural(ahead, 'waiter')} ahead of it (by priority, and how long each "
                         "waited: aging)")
            text.append(line)
            return
        index = int(parked.what)
        group = f"job {job.id}" if index == JOB else f'group "{job.spec.groups[index].name}"'
        running = gates.running.get((job.id, index), 0)
        out["limit"] = {"group": None if index == JOB else job.spec.groups[index].name,
                        "max_parallel": parked.limit, "running": running}
        text.append(f"waits for a free place in {group}: max_parallel {parked.limit}, "
                    f"{running} of its tasks running")

    def _finished(
        self, job: Job, t: TaskRun, code: int, arg: int, out: dict[str, Any], text: list[str]
    ) -> None:
        state = t.state
        n = len(t.attempts)
        if code in (why.UPSTREAM, why.STOPPED) and 0 <= arg < len(job.tasks):
            origin = job.tasks[arg]
            out["reason"] = "upstream" if code == why.UPSTREAM else "stopped"
            message = (origin.error or {}).get("message")
            out["upstream"] = {"id": origin.id, "name": origin.spec.name, "state": origin.state,
                               "message": message}
            verb = _VERB.get(origin.state, origin.state)
            detail = f" after {plural(len(origin.attempts), 'attempt')}" if origin.attempts else ""
            detail += f": {message}" if message else ""
            if code == why.UPSTREAM:
                text.append(f'skipped: it comes after task "{origin.spec.name}" ({origin.id}), '
                            f"which {verb}{detail}")
            else:
                text.append(f'cancelled: the job stopped (on_failure: stop) when task "{origin.spec.name}" '
                            f"({origin.id}) {verb}{detail}")
            return
        if code == why.CANCELLED:
            out["reason"] = "cancelled"
            reason = t.reason or "cancelled by request"
            text.append(reason if reason.startswith(state) else f"{state}: {reason}")
            return
        if code == why.AFTER_FAILED:
            out["reason"] = "after_failed"
            text.append(f"skipped: the job's prerequisite did not complete ({t.reason or job.reason})")
            return
        out["reason"] = state
        when = f" at {clock(t.finished_at)}" if t.finished_at is not None else ""
        if state == "completed":
            text.append(f"completed{when} after {plural(n, 'attempt')}")
            kept = job.kept
            if kept and t.spec.index in kept:
                out["kept_from"] = kept[t.spec.index]
                text.append(f"kept from run {kept[t.spec.index]} by procctl retry: it does not run again in "
                            f"run {job.run}, and its result stays")
        elif state in ("failed", "timeout"):
            err = t.error or {}
            what = f"{err.get('type')}: {err.get('message')}" if err.get("type") else err.get("message", "")
            ended = "timed out" if state == "timeout" else "failed"
            text.append(f"{ended}{when} after {plural(n, 'attempt')}"
                        + (f" (retries: {t.spec.retries})" if t.spec.retries else "")
                        + (f": {what}" if what else "")
                        + (f"; exit status {t.exit_code}" if t.exit_code is not None else ""))
        else:  # skipped or cancelled, noted by an older daemon (or none noted)
            text.append(f"{state}: {t.reason}" if t.reason else state)

    # -- parts ------------------------------------------------------------------------------------

    def _engine_of(self, t: TaskRun) -> str:
        return self.engines.route_name(t.spec.kind, t.spec.engine)

    def _places(self, job: Job, indices: list[int]) -> dict[Ref, Place]:
        """Where the ready tasks ``indices`` of ``job`` stand in their engines' queues."""
        by_engine: dict[str, set[Ref]] = {}
        for i in indices:
            if job.tasks[i].state == "ready":
                by_engine.setdefault(self._engine_of(job.tasks[i]), set()).add((job.id, i))
        places: dict[Ref, Place] = {}
        for name, refs in by_engine.items():
            queue = self.queues.get(name)
            if queue is not None:
                places.update(queue.where(refs))
        return places

    @staticmethod
    def _node(job: Job, node: Node) -> dict[str, Any]:
        kind, i = node
        if kind == "task":
            t = job.tasks[i]
            return {"kind": "task", "id": t.id, "name": t.spec.name, "state": t.state}
        group = job.spec.groups[i]
        return {"kind": "group", "name": group.name, "path": group.path,
                "left": job.group_left(i), "parts": len(group.children)}

    @staticmethod
    def _node_words(job: Job, node: Node) -> str:
        kind, i = node
        if kind == "task":
            t = job.tasks[i]
            words = f'task "{t.spec.name}" ({t.id}, {t.state}'
            if t.state == "running" and t.attempts and t.attempts[-1].started_at is not None:
                words += f" since {clock(t.attempts[-1].started_at)}"
            elif t.state == "pending" and t.waiting:
                words += ", itself waiting"
            if isinstance(job, CyclingJob) and node in job.cycling:  # it completes after its last cycle
                words += f", {job.cycle_words(node, clock)}"
            return words + ")"
        group = job.spec.groups[i]
        if isinstance(job, CyclingJob) and node in job.cycling:  # it completes after its last cycle
            return f'{group.kind} group "{group.name}" ({job.cycle_words(node, clock)})'
        return (f'{group.kind} group "{group.name}" ({job.group_left(i)} of its '
                f"{len(group.children)} parts not complete yet)")


def _attempt_lines(shown: list[Attempt], attempts: list[Attempt]) -> list[str]:
    return ["  " + _attempt_words(a, attempts) for a in shown]


def _attempt_words(a: Attempt, attempts: list[Attempt]) -> str:
    """One attempt in words: its outcome, times, worker and pid, and the delay before the next."""
    line = f"attempt {a.number} {_OUTCOME.get(a.status, a.status or 'is running')}"
    if a.started_at is not None:
        line += f": started {clock(a.started_at)}"
        if a.finished_at is not None:
            line += f", ended {clock(a.finished_at)} ({seconds(a.finished_at - a.started_at)})"
    if a.worker:
        line += f", on {a.worker}"
    if a.pid:
        line += f" (pid {a.pid})"
    following = attempts[a.number] if a.number < len(attempts) else None
    if following is not None and following.started_at is not None and a.finished_at is not None:
        line += f"; the next attempt started {seconds(following.started_at - a.finished_at)} later"
    return line

"""The runtime of one job: task states, readiness, failure propagation, repeat.

A :class:`Job` is built from a validated :class:`~procpool.contract.tree.JobSpec`.
Its methods change state and return what the caller (the scheduler) must do
next — tasks that became ready, attempts to stop — and never perform I/O or
read the clock: times are passed in.

Readiness: a task may start when every *blocker* is complete. Its blockers are
its own predecessors plus those of every enclosing group (see
:class:`~procpool.contract.tree.Plan`); a group is complete when all its
children are. Counting incomplete blockers per task makes each completion cost
time proportional to the tasks waiting on it.

Failure: when a task ends unsuccessfully, every task that waits (directly or
through groups) on it or on a group that can therefore never complete is
``skipped`` with the reason recorded. With ``on_failure: stop`` every other
task that has not started is ``cancelled``; running ones finish.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from procpool.contract.tree import JobSpec, Plan, TaskSpec, compile_job
from procpoold.core import reasons as why
from procpoold.core.changes import ChangeLog
from procpoold.core.reasons import Reasons
from procpoold.core.states import (
    ACTIVE_JOB_STATES,
    FINAL_TASK_STATES,
    JOB_STATES,
    TASK_STATES,
    TASK_TRANSITIONS,
    UNSUCCESSFUL,
    IllegalTransition,
    JobState,
    TaskState,
)

Node = tuple[str, int]
#: Most tags a job's summary lists (and a job list's tag filter looks at): those first met.
MAX_JOB_TAGS = 32
#: Lines of output a task keeps for its status (shown when it failed).
TAIL_LINES = 20

#: Entries of a job's task log (the state store appends them; see replay_task_log):
#: ``[FULL_ENTRY, index, Job.dump_task(index)]`` is the task's whole state;
#: ``[START_ENTRY, index, number, attempt_id, started_at]`` records an attempt starting
#: (written ahead of the start, much smaller than a full entry);
#: ``[DONE_ENTRY, index, finished_at, result, exit_code, pid, worker]`` records that the attempt
#: a START_ENTRY (or an earlier entry) holds as the latest completed the task, when nothing
#: else of the task changed meanwhile (see :meth:`Job.entry`): most tasks of a big job end so,
#: and this entry costs a third of a full one to build and to write.
FULL_ENTRY = 0
START_ENTRY = 1
DONE_ENTRY = 2
#: Summaries of finished runs a job keeps (its latest): a job repeated for ever would otherwise
#: grow without end, and its row, rewritten at every run, with it.
KEPT_RUNS = 100
#: Interruptions of one task (by daemon restarts or lost workers) run again without using its
#: ``retries``; one more fails it (the ``max_interruptions`` setting).
DEFAULT_MAX_INTERRUPTIONS = 3


def _too_many(t: TaskRun, limit: int, cause: str) -> dict[str, str]:
    return {
        "type": "Interrupted",
        "message": f"interrupted {t.interruptions} times by {cause}; max_interruptions = {limit}",
        "traceback": "",
    }


def replay_task_log(entries: list[Any]) -> dict[int, dict[str, Any]]:
    """The tasks' dumps (as :meth:`Job.dump_task` made them) after applying ``entries`` in order."""
    tasks: dict[int, dict[str, Any]] = {}
    for entry in entries:
        if entry[0] == FULL_ENTRY:
            tasks[entry[1]] = entry[2]
        elif entry[0] == START_ENTRY:
            _, index, number, attempt_id, started_at = entry
            td = tasks[index] = dict(tasks.get(index, ()))
            td["state"] = "running"
            td["attempts"] = [
                *td.get("attempts", ()),
                [number, attempt_id, started_at, None, None, None, None],
            ]
            td.setdefault("started_at", started_at)
        elif entry[0] == DONE_ENTRY:
            _, index, finished_at, result, exit_code, pid, worker = entry
            before = tasks.get(index)
            if before is None or not before.get("attempts"):
                raise ValueError(f"task log: task {str(index)[:64]} completed without an attempt")
            td = tasks[index] = dict(before)
            last = list(td["attempts"][-1])
            last[3:7] = [finished_at, "completed", pid, worker]
            td["attempts"] = [*td["attempts"][:-1], last]
            td["state"], td["finished_at"] = "completed", finished_at
            for key in ("error", "reason", "retry_at", "why"):
                td.pop(key, None)
            for key, value in (("result", result), ("exit_code", exit_code)):
                if value is None:
                    td.pop(key, None)
                else:
                    td[key] = value
        else:
            raise ValueError(f"unknown task log entry type {entry[0]!r}")
    return tasks


@dataclass(slots=True)
class Attempt:
    """One run of a task."""

    number: int
    attempt_id: str
    started_at: float | None = None
    finished_at: float | None = None
    status: str | None = None  # the executor's outcome status
    pid: int | None = None
    worker: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "id": self.attempt_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "status": self.status,
            "pid": self.pid,
            "worker": self.worker,
        }


@dataclass(slots=True)
class TaskRun:
    """A task's state within the current run of its job."""

    spec: TaskSpec
    id: str
    state: TaskState = "pending"
    waiting: int = 0  # blockers not yet complete
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    exit_code: int | None = None
    error: dict[str, str] | None = None
    reason: str | None = None  # why skipped / cancelled
    progress: dict[str, Any] | None = None
    retry_at: float | None = None
    cancel_requested: bool = False
    #: The last lines of the task's output (kept for the status of a failed task); made on the
    #: first line, since most tasks print nothing and a deque per task costs more than the rest.
    tail: deque[str] | None = None
    #: Tasks per state of the task's job, shared by all its tasks and kept by :meth:`move`.
    counts: dict[str, int] | None = field(default=None, repr=False, compare=False)
    #: The job's change log once a client asked for changes (core.changes.track), else None.
    changes: ChangeLog | None = field(default=None, repr=False, compare=False)

    @property
    def interruptions(self) -> int:
        """Attempts the daemon interrupted (its restart, a worker it lost): they use no retry."""
        return sum(1 for a in self.attempts if a.status == "interrupted")

    @property
    def failures(self) -> int:
        """Attempts that count against ``retries``: every attempt the daemon did not interrupt and
        a ``pause --stop`` did not stop."""
        return sum(1 for a in self.attempts if a.status != "interrupted" and a.status != "paused")

    @property
    def running_attempt(self) -> Attempt | None:
        if self.state == "running" and self.attempts:
            return self.attempts[-1]
        return None

    def state_words(self) -> str:
        """The task's final state as words: "failed", "timed out", "was cancelled", "was skipped"."""
        return {"timeout": "timed out", "cancelled": "was cancelled", "skipped": "was skipped"}.get(
            self.state, self.state)

    def remember(self, line: str) -> None:
        """Keep ``line`` among the last lines of output."""
        if self.tail is None:
            self.tail = deque(maxlen=TAIL_LINES)
        self.tail.append(line)

    def move(self, new: TaskState) -> None:
        """The only way a task changes state; an illegal edge is a bug and says which task."""
        if new not in TASK_TRANSITIONS[self.state]:
            raise IllegalTransition(f"task {self.id} ({self.spec.name}): {self.state} -> {new}")
        counts = self.counts
        if counts is not None:
            counts[self.state] -= 1
            counts[new] += 1
        self.state = new
        if self.changes is not None:  # a status poll asks what changed (core.changes)
            self.changes.note(self.spec.index)

    def touched(self) -> None:
        """A field a status shows changed without a move (progress): note it for the change log."""
        if self.changes is not None:
            self.changes.note(self.spec.index)

    def reset(self) -> None:
        """Back to ``pending`` with nothing of its attempts (a new run, a retry, a node's next
        cycle): no attempt, times, result, error, output or progress."""
        if self.state != "pending":
            self.move("pending")
        self.attempts = []
        self.started_at = self.finished_at = self.retry_at = None
        self.result = self.error = self.exit_code = self.reason = self.progress = None
        self.cancel_requested = False
        self.tail = None


def scoped_key(uid: int | None, key: str | None) -> str | None:
    """An idempotency key as the scheduler and the store know it: one namespace per submitter, so
    one user can neither find another's job by its key nor claim a key to swallow their submits."""
    if key is None:
        return None
    return f"{'' if uid is None else uid}:{key}"


class EngineNames(Protocol):
    """What a job's status needs of the daemon's engines (``procpoold.engines.registry.Engines``):
    the engine a task runs on, and the local engine of each kind."""

    #: task kind -> the name of this daemon's local engine of that kind ("local" names it)
    local: dict[str, str]

    def route_name(self, kind: str, engine: str | None = None) -> str: ...


@dataclass(slots=True)
class FinishedJob:
    """What the scheduler keeps in memory of a finished job (the rest is read from the store):
    enough to list it by state, age and user, to apply retention and to find it by key."""

    id: str
    key: str | None
    state: str
    uid: int | None
    created_at: float
    finished_at: float
    #: the job's name and tags, for the filters of a job list; ``tags`` None: not read yet (an
    #: entry read from the store at start: the list reads them from the summary when asked)
    name: str = ""
    tags: tuple[str, ...] | None = None


@dataclass(slots=True)
class Effects:
    """What the scheduler must do after a state change."""

    ready: list[int] = field(default_factory=list)  # task indices to enqueue
    stop: list[str] = field(default_factory=list)  # attempt ids to stop (cancelled)
    finished_tasks: list[int] = field(default_factory=list)  # tasks that reached a final state
    run_finished: bool = False
    #: a node's cycle ended (core.cycles; None in a job without cycling nodes, so the scheduler
    #: looks no further): the tasks its next cycle reset, to be written (and a node may now wait
    #: for its next cycle: the scheduler arms its timer)
    cycled: list[int] | None = None

    def merge(self, other: Effects) -> Effects:
        self.ready += other.ready
        self.stop += other.stop
        self.finished_tasks += other.finished_tasks
        self.run_finished = self.run_finished or other.run_finished
        if other.cycled is not None:
            self.cycled = [*(self.cycled or ()), *other.cycled]
        return self


#: Each job's noted reasons (core.reasons), kept outside the Job's own attributes: a Job holds 29,
#: and a 30th on every instance makes every attribute access of the scheduler's hot path slower
#: (Job.complete and mark_running: 8 % on CPython 3.11; a class default set on the instance by the
#: first note still cost 2 % for the jobs made after one). Made by the first note of a run.
_REASONS: weakref.WeakKeyDictionary[Job, Reasons] = weakref.WeakKeyDictionary()
#: The tasks a retried job kept from its earlier runs (see :meth:`Job.retry`): task index -> the run
#: it completed in. Outside the Job's attributes for the same reason as _REASONS; only retried jobs
#: have an entry.
_KEPT: weakref.WeakKeyDictionary[Job, dict[int, int]] = weakref.WeakKeyDictionary()
#: When a ``scheduled`` job's next run starts (wall clock); outside the Job's attributes for the
#: same reason as _REASONS: only jobs with a ``schedule`` or ``every`` ever have an entry.
_NEXT_RUN: weakref.WeakKeyDictionary[Job, float] = weakref.WeakKeyDictionary()


class RetryRefused(ValueError):
    """A retry that cannot be made (nothing to retry, a task named that completed, a task named
    that waits on one that did not complete and is not named); the message says which."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def kept_ranges(kept: dict[int, int]) -> list[list[int]]:
    """``kept`` (task index -> run) as ``[run, first index, count]`` runs of consecutive indices
    kept from the same run: a big job retried for a few tasks stores a few triples, not a pair
    per task."""
    out: list[list[int]] = []
    for index in sorted(kept):
        run = kept[index]
        last = out[-1] if out else None
        if last is not None and last[0] == run and last[1] + last[2] == index:
            last[2] += 1
        else:
            out.append([run, index, 1])
    return out


#: The jobs whose current run is their last (``procctl stop``), kept outside the Job's attributes
#: for the reason given at _REASONS: see :attr:`Job.stop_requested`.
_STOPPED: weakref.WeakSet[Job] = weakref.WeakSet()


class Job:
    """A submitted job tree and the state of its current run."""

    def __new__(cls, job_id: str, spec: JobSpec, *args: Any, **kwargs: Any) -> Job:
        # A tree with a node that cycles on its own clock ("repeat"/"every" on a group or task)
        # makes a CyclingJob (core.cycles): every other job runs this class's code alone.
        if spec.cycles and cls is Job:
            from procpoold.core.cycles import CyclingJob

            return object.__new__(CyclingJob)
        return object.__new__(cls)

    @property
    def stop_requested(self) -> bool:
        """``procctl stop``: the current run is the last; the job ends as that run ends."""
        return bool(_STOPPED) and self in _STOPPED

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        if value:
            _STOPPED.add(self)
        else:
            _STOPPED.discard(self)

    @property
    def next_run_at(self) -> float | None:
        """When the next run starts (wall clock) while the job is ``scheduled``; None otherwise."""
        return _NEXT_RUN.get(self) if _NEXT_RUN else None

    @next_run_at.setter
    def next_run_at(self, value: float | None) -> None:
        if value is None:
            _NEXT_RUN.pop(self, None)
        else:
            _NEXT_RUN[self] = value

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        raw: dict[str, Any],
        now: float,
        submitter_uid: int | None = None,
        after: list[str] | None = None,
        run_as_uid: int | None = None,
    ) -> None:
        self.id = job_id
        self.spec = spec
        self.raw = raw  # the document as submitted (kept for the store and for status)
        self.plan: Plan = spec.plan if spec.plan is not None else compile_job(spec)
        self.state: JobState = "pending"
        self.run = 1
        self.runs: list[dict[str, Any]] = []  # summaries of finished runs
        self.created_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.namespace: dict[str, Any] = dict(spec.namespace)
        self.submitter_uid = submitter_uid
        #: the submitter's user name (the scheduler looks it up: the core reads no databases)
        self.submitter_name: str | None = None
        #: the uid every attempt of this job runs as; None: the daemon's own user (see identity.py)
        self.run_as_uid = run_as_uid
        self.after = list(after or [])
        self.reason: str | None = None
        self.cancel_requested = False
        #: ``procctl pause``: who paused the job and when (``{"by", "uid", "at", "stop"}``), None
        #: when it is not paused (see :meth:`pause`)
        self.paused: dict[str, Any] | None = None
        #: tasks per state, kept as they move (status pages read it instead of counting)
        self._counts: dict[str, int] = dict.fromkeys(TASK_STATES, 0)
        self._counts["pending"] = len(spec.tasks)
        counts = self._counts
        self.tasks = [TaskRun(t, f"{job_id}.{t.index}", counts=counts) for t in spec.tasks]
        self.by_name = {t.name: t.index for t in spec.tasks}
        #: what changed, for status polls (core.changes.track starts it; None: nobody asked)
        self.changes: ChangeLog | None = None
        #: the daemon's engines, for the status (set by the scheduler; None: a status shows no engine)
        self.engines: EngineNames | None = None
        #: (task kind, engine named) -> the engine's name, and whether every task runs on the local
        #: engine of its kind: made by core.status on first use (a job's routes do not change)
        self.engine_routes: tuple[dict[tuple[str, str | None], str | None], bool] | None = None
        self._tags: list[str] | None = None  # (see tag_list)
        # blockers and their reverse, from the plan (see the module docstring)
        # (a group's chain is computed once and shared by its tasks, which only read it)
        chains: dict[int | None, list[int]] = {None: []}
        for group in spec.groups:  # depth-first order: a parent comes before its children
            chains[group.index] = [group.index, *chains[group.parent]]
        self._ancestors: list[list[int]] = [chains[t.parent] for t in spec.tasks]
        # A task's blockers: its own preds, then those of each enclosing group, innermost first
        # (a group's share is computed once for all its tasks).
        preds = self.plan.preds
        inherited: dict[int | None, list[Node]] = {None: []}

        def from_groups(g: int | None) -> list[Node]:
            # Up to the nearest group already done, then down again. (Not recursive: a closure
            # that calls itself refers to itself, and would keep the job's spec and plan alive
            # until the cyclic garbage collector found them, a pause every few thousand jobs.)
            chain: list[int] = []
            while (found := inherited.get(g)) is None:
                assert g is not None
                chain.append(g)
                g = spec.groups[g].parent
            for h in reversed(chain):
                found = inherited[h] = [*preds[("group", h)], *found]
            return found

        # (a task without its own preds shares its group's list: blockers are only read)
        self._blockers: list[list[Node]] = [
            [*own, *from_groups(t.parent)] if (own := preds[("task", t.index)]) else from_groups(t.parent)
            for t in spec.tasks
        ]
        self._waiters: dict[Node, list[int]] = {}
        for i, blockers in enumerate(self._blockers):
            for b in blockers:
                self._waiters.setdefault(b, []).append(i)
        self._complete: set[Node] = set()
        self._scan = 0  # every task before this index is in a final state (this run)
        self._group_left: list[int] = []

    # -- persistence ----------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The job's own mutable fields, for the state store (``stop_requested`` only when set)."""
        if self.stop_requested or (_NEXT_RUN and self in _NEXT_RUN) or self.paused is not None:
            extra: dict[str, Any] = {"stop_requested": True} if self.stop_requested else {}
            if (next_run_at := self.next_run_at) is not None:
                extra["next_run_at"] = next_run_at
            if self.paused is not None:
                extra["paused"] = self.paused
            return {**self._dump(), **extra}
        return self._dump()

    def _dump(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "run": self.run,
            "runs": self.runs,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "namespace": self.namespace,
            "reason": self.reason,
            "cancel_requested": self.cancel_requested,
            "submitter_uid": self.submitter_uid,
            "run_as_uid": self.run_as_uid,
            "after": self.after,
            **({"kept": kept_ranges(kept)} if self.run > 1 and (kept := _KEPT.get(self)) else {}),
        }

    def dump_task(self, index: int) -> dict[str, Any]:
        """One task's mutable fields, for the state store, compactly.

        Fields at their defaults (None, False, empty) are left out, and each attempt is the
        list ``[number, id, started_at, finished_at, status, pid, worker]``: a task's entry
        is written at least twice per attempt, so its size is the store's main cost.
        """
        t = self.tasks[index]
        out: dict[str, Any] = {"state": t.state}
        if t.attempts:
            out["attempts"] = [
                [a.number, a.attempt_id, a.started_at, a.finished_at, a.status, a.pid, a.worker]
                for a in t.attempts
            ]
        for key, value in (
            ("started_at", t.started_at),
            ("finished_at", t.finished_at),
            ("result", t.result),
            ("exit_code", t.exit_code),
            ("error", t.error),
            ("reason", t.reason),
            ("progress", t.progress),
        ):
            if value is not None:
                out[key] = value
        if t.cancel_requested:
            out["cancel_requested"] = True
        reasons = _REASONS.get(self) if _REASONS else None
        if reasons is not None and (noted := reasons.dump(index, t.state)) is not None:
            out["why"] = noted
        if t.tail:
            out["tail"] = list(t.tail)
        return out

    def full_entry(self, index: int) -> list[Any]:
        """The task log entry holding a task's whole state."""
        return [FULL_ENTRY, index, self.dump_task(index)]

    def entry(self, index: int) -> list[Any]:
        """The task log entry for whatever changed in a task: a DONE_ENTRY when its latest
        attempt completed it and it has nothing more to save (no output tail, no progress, no
        pending cancel), else a full entry."""
        t = self.tasks[index]
        if t.state == "completed" and t.attempts and t.tail is None and t.progress is None and (
            not t.cancel_requested
        ):
            a = t.attempts[-1]
            return [DONE_ENTRY, index, t.finished_at, t.result, t.exit_code, a.pid, a.worker]
        return [FULL_ENTRY, index, self.dump_task(index)]

    def start_entry(self, index: int) -> list[Any]:
        """The task log entry for the task's latest attempt starting (see :meth:`mark_running`)."""
        a = self.tasks[index].attempts[-1]
        return [START_ENTRY, index, a.number, a.attempt_id, a.started_at]

    def load(self, data: dict[str, Any], entries: list[Any]) -> None:
        """Restore what :meth:`dump` and the task log saved (before :meth:`recover`)."""
        tasks = replay_task_log(entries)
        if data["state"] not in JOB_STATES:  # a saved state that does not fit fails the restore
            raise ValueError(f"unknown job state {str(data['state'])[:64]!r}")
        self.state = data["state"]
        self.run = data["run"]
        self.runs = list(data["runs"])
        self.started_at, self.finished_at = data["started_at"], data["finished_at"]
        self.namespace = dict(data["namespace"])
        self.reason, self.cancel_requested = data["reason"], data["cancel_requested"]
        kept = data.get("kept")
        if kept:
            self._load_kept(kept)
        self.stop_requested = bool(data.get("stop_requested"))  # (absent from jobs stored before it)
        next_run_at = data.get("next_run_at")
        if next_run_at is not None and not (type(next_run_at) in (int, float) and math.isfinite(next_run_at)):
            raise ValueError(f"next run time {str(next_run_at)[:64]} is not a time")
        paused = data.get("paused")
        waits = self.state == "scheduled" or (
            self.state == "paused" and isinstance(paused, dict) and paused.get("was") == "scheduled")
        if (next_run_at is None) == waits:
            raise ValueError(f"a {self.state} job cannot have the next run time {next_run_at}")
        self.next_run_at = None if next_run_at is None else float(next_run_at)
        if self.state == "paused":  # (the record of who paused it: a malformed one fails the restore)
            if not (isinstance(paused, dict) and isinstance(paused.get("at"), (int, float))):
                raise ValueError(f"job {self.id} is paused without a valid record of the pause")
            self.paused = dict(paused)
        for index, td in tasks.items():
            if not isinstance(index, int) or not 0 <= index < len(self.tasks):
                raise ValueError(f"no task {str(index)[:64]} in a job of {len(self.tasks)} tasks")
            t = self.tasks[index]
            t.state = td["state"]
            t.attempts = [Attempt(*a) for a in td.get("attempts", ())]
            if t.state not in TASK_TRANSITIONS or (t.state == "running" and not t.attempts):
                state = str(t.state)[:64]
                raise ValueError(f"task {t.id} cannot be {state!r} with {len(t.attempts)} attempt(s)")
            t.started_at, t.finished_at = td.get("started_at"), td.get("finished_at")
            t.result, t.exit_code, t.error = td.get("result"), td.get("exit_code"), td.get("error")
            t.reason, t.progress = td.get("reason"), td.get("progress")
            t.cancel_requested = bool(td.get("cancel_requested"))
            noted = td.get("why")
            if (isinstance(noted, list) and len(noted) == 2 and all(type(v) is int for v in noted)
                    and 0 < noted[0] < len(why.NAMES) and -(2**31) <= noted[1] < 2**31):
                self.note(index, noted[0], noted[1])
            for line in td.get("tail", ()):
                t.remember(line)
        self._recount()

    def _load_kept(self, ranges: Any) -> None:
        """Restore the tasks a retried job kept (``kept_ranges``); a malformed value fails the
        restore, as any saved state that does not fit the tree does."""
        kept: dict[int, int] = {}
        for item in ranges:
            if not (isinstance(item, list) and len(item) == 3 and all(type(v) is int for v in item)
                    and 1 <= item[0] < self.run and item[2] > 0
                    and item[1] >= 0 and item[1] + item[2] <= len(self.tasks)):
                raise ValueError(f"kept tasks {str(item)[:64]} do not fit a job of {len(self.tasks)} tasks")
            run, first, count = item
            kept.update({i: run for i in range(first, first + count)})
        _KEPT[self] = kept

    def recover(
        self, now: float, max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS
    ) -> tuple[Effects, list[Attempt]]:
        """After a restart or crash: settle the attempts that were running, then rebuild readiness.

        Returns the effects (ready tasks, finished tasks) and the interrupted attempts
        (so the daemon can clean up what they left behind). ``on_interrupt`` decides:
        ``retry`` runs the task again without using its ``retries``, up to
        ``max_interruptions`` interruptions of the task (then it fails, naming them),
        ``fail`` fails it, ``hold`` parks the job until ``resume``.
        """
        effects = Effects()
        interrupted: list[Attempt] = []
        self._rebuild()
        for t in self.tasks:
            if t.state != "running":
                continue
            attempt = t.attempts[-1]
            attempt.status, attempt.finished_at = "interrupted", now
            interrupted.append(attempt)
            policy = self.spec.on_interrupt
            error = {
                "type": "Interrupted",
                "message": f"attempt {attempt.number} was interrupted when the daemon stopped",
                "traceback": "",
            }
            if t.cancel_requested or self.cancel_requested:
                effects.merge(
                    self.end_unsuccessfully(
                        t.spec.index, "cancelled", now, error, reason=self.reason or "cancelled by request"
                    )
                )
            elif policy == "fail":
                effects.merge(self.end_unsuccessfully(t.spec.index, "failed", now, error))
            elif t.interruptions > max_interruptions:
                effects.merge(
                    self.end_unsuccessfully(
                        t.spec.index, "failed", now, _too_many(t, max_interruptions, "daemon restarts")
                    )
                )
            else:
                t.move("pending")
                t.error = error
                self.note(t.spec.index, why.INTERRUPTED, attempt.number)
        held = self.state == "held"  # held at an earlier start and not resumed: it stays held
        # (a paused job stays paused, its ready tasks unqueued until resume: see Job.pause)
        hold = held or (self.spec.on_interrupt == "hold" and interrupted and not effects.run_finished)
        if hold and self.state != "paused":
            self.state = "held"
            return effects, interrupted
        for t in self.tasks:
            if t.state == "ready":
                effects.ready.append(t.spec.index)
            elif t.state == "pending" and t.waiting == 0:
                t.move("ready")
                effects.ready.append(t.spec.index)
        self._check_run_finished(effects)
        return effects, interrupted

    def interrupt(
        self,
        index: int,
        now: float,
        error: dict[str, str] | None,
        max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS,
    ) -> Effects:
        """The daemon lost the task's running attempt while running (it retired or lost the worker).

        Not the task's fault: the task runs again at once without using its ``retries``, up to
        ``max_interruptions`` interruptions; then it fails naming them. ``on_interrupt: fail``
        fails it at once (the job asked never to run an interrupted attempt again).
        """
        t = self.tasks[index]
        attempt = t.running_attempt
        if attempt is not None:
            attempt.status, attempt.finished_at = "interrupted", now
        if self.spec.on_interrupt == "fail":
            return self.end_unsuccessfully(index, "failed", now, error)
        if t.interruptions > max_interruptions:
            final = _too_many(t, max_interruptions, "the daemon (restarts or lost workers)")
            if error and error.get("message"):
                final["message"] += f" (last: {error['message'][:200]})"
            return self.end_unsuccessfully(index, "failed", now, final)
        t.move("pending")
        t.error = error
        t.move("ready")
        self.note(index, why.REQUEUED, attempt.number if attempt is not None else len(t.attempts))
        return Effects(ready=[index])

    def pause(self, by: str, uid: int | None, now: float, stop: bool = False) -> None:
        """``procctl pause``: the job starts nothing new until :meth:`unpause` (the scheduler
        queues none of its ready tasks while its state is ``paused``); its running attempts run on
        (or, with ``stop``, the scheduler stops them and they run again at resume, using no retry).
        Only a job whose run began and has not ended, and that is not held, can be paused (the
        caller checks: :meth:`pause_refusal`)."""
        self.paused = {"by": by, "uid": uid, "at": now, "stop": stop, "was": self.state}
        self.state = "paused"

    def pause_refusal(self) -> str | None:
        """Why this job cannot be paused now (None: it can)."""
        if self.state in ("queued", "running", "scheduled"):
            return None
        if self.state == "paused":
            return f"job {self.id} is paused already"
        if self.state == "held":
            return f"job {self.id} is held (after a restart): procctl resume {self.id} releases it"
        if self.state == "pending":
            return f"job {self.id} is pending (waiting for its prerequisites): its run has not begun"
        return f"job {self.id} is {self.state}: it has finished"

    def unpause(self) -> Effects:
        """Release a paused job: its ready tasks (those that became ready while it was paused, or
        were stopped by the pause) are returned to be queued again. A job paused while it waited
        for its next run (or whose run ended while paused, on a clock) is ``scheduled`` again: the
        scheduler arms its timer (see Schedules._resume_scheduled)."""
        self.paused = None
        if self.next_run_at is not None:
            self.state = "scheduled"
            return Effects()
        self.state = "running" if self.started_at is not None else "queued"
        return Effects(ready=[t.spec.index for t in self.tasks if t.state == "ready"])

    def stopped_by_pause(self, index: int, error: dict[str, str] | None) -> Effects:
        """The running attempt of task ``index`` was stopped by ``pause --stop`` (its status is
        ``interrupted``: it uses no retry): the task is ready again (queued when the pause ends)."""
        t = self.tasks[index]
        t.move("pending")
        t.error = error
        t.move("ready")
        self.note(index, why.REQUEUED, len(t.attempts))
        return Effects(ready=[index])

    def resume(self) -> Effects:
        """Release a held job (its tasks that were ready when it was stored are ready again)."""
        self.state = "running" if self.started_at is not None else "queued"
        effects = Effects()
        for t in self.tasks:
            if t.state == "ready":
                effects.ready.append(t.spec.index)
            elif t.state == "pending" and t.waiting == 0:
                t.move("ready")
                effects.ready.append(t.spec.index)
        return effects

    def _rebuild(self) -> None:
        """Derive the readiness counters from the task states (after :meth:`load`)."""
        self._scan = 0
        self._complete = {("task", t.spec.index) for t in self.tasks if t.state == "completed"}
        self._group_left = [len(g.children) for g in self.spec.groups]
        # groups in reverse depth-first order: children before parents
        for g in reversed(self.spec.groups):
            left = sum(1 for child in g.children if child not in self._complete)
            self._group_left[g.index] = left
            if left == 0:
                self._complete.add(("group", g.index))
        for t in self.tasks:
            t.waiting = sum(1 for b in self._blockers[t.spec.index] if b not in self._complete)

    # -- lifecycle ----------------------------------------------------------------------------

    def start_run(self, now: float) -> Effects:
        """Reset every task to pending and return those ready at once. The job is ``queued``
        until its first attempt starts (:meth:`mark_running`), ``running`` from then on (a repeat
        run of a job that ran stays ``running``; a paused job's next run stays ``paused``)."""
        if self.state != "paused":
            self.state = "running" if self.started_at is not None else "queued"
        if _REASONS:
            _REASONS.pop(self, None)
        if self.run > 1:  # (a retried job is never repeated: see Submission.retry)
            _KEPT.pop(self, None)
        self._complete = set()
        self._scan = 0
        self._group_left = [len(g.children) for g in self.spec.groups]
        effects = Effects()
        for t in self.tasks:
            t.reset()
            t.waiting = len(self._blockers[t.spec.index])
            if t.waiting == 0:
                t.move("ready")
                effects.ready.append(t.spec.index)
        return effects

    def retry_plan(self, chosen: list[int] | None = None) -> list[int]:
        """The tasks a retry of this finished job runs again, in index order (see :meth:`retry`).

        Without ``chosen``: every task that did not complete (failed, timed out, cancelled,
        skipped). With ``chosen`` (task indices): those tasks, plus every task that waits on them
        (directly, or through a group) and did not complete. Raises :class:`RetryRefused` when
        there is nothing to retry, when a chosen task completed, or when a task to run again
        waits on one that did not complete and is not run again (it could never start).
        Changes nothing; O(tasks).
        """
        tasks = self.tasks
        if chosen is None:
            again = [t.spec.index for t in tasks if t.state != "completed"]
            if not again:
                raise RetryRefused(
                    f"job {self.id} completed: every task completed, there is nothing to retry",
                    "submit the job again to run every task once more",
                )
            return again
        selected: set[int] = set()
        queue: deque[Node] = deque()
        for i in chosen:
            t = tasks[i]
            if t.state == "completed":
                raise RetryRefused(
                    f'task {t.id} "{t.spec.name}" completed: retry runs again only tasks that did not '
                    "complete",
                    "name a task that failed, timed out, was cancelled or skipped",
                )
            if i not in selected:
                selected.add(i)
                queue.append(("task", i))
                queue.extend(("group", g) for g in self._ancestors[i])
        seen: set[Node] = set()
        while queue:  # what waits on them (the edges _doom follows), if it did not complete
            node = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            for w in self._waiters.get(node, ()):
                if w not in selected and tasks[w].state != "completed":
                    selected.add(w)
                    queue.append(("task", w))
                    queue.extend(("group", g) for g in self._ancestors[w])
        # A task left unfinished (not run again) keeps its groups from completing: whatever waits
        # on it, or on one of them, could never start.
        dead: dict[Node, int] = {}
        for t in tasks:
            if t.state != "completed" and t.spec.index not in selected:
                dead.setdefault(("task", t.spec.index), t.spec.index)
                for g in self._ancestors[t.spec.index]:
                    dead.setdefault(("group", g), t.spec.index)
        again = sorted(selected)
        if dead:
            for i in again:
                for b in self._blockers[i]:
                    if b in dead:
                        blocker = tasks[dead[b]]
                        raise RetryRefused(
                            f'task {tasks[i].id} "{tasks[i].spec.name}" waits on task {blocker.id} '
                            f'"{blocker.spec.name}", which {blocker.state_words()} and is not retried',
                            f"add --task {blocker.spec.name}, or retry without --task",
                        )
        return again

    def retry(self, now: float, again: list[int]) -> Effects:
        """A new run of this finished job that runs the tasks ``again`` (from :meth:`retry_plan`)
        once more and keeps every other task as it ended: completed tasks with their results
        (noted as kept from the run they completed in: :attr:`kept`), the others in their final
        state. The namespace carries over. Each task run again starts afresh: no attempts (its
        ``retries`` count anew), no result, error or output. Returns the tasks ready at once.
        """
        tasks = self.tasks
        kept = _KEPT.get(self)
        if kept is None:
            kept = _KEPT[self] = {}
        for t in tasks:
            if t.state == "completed":
                kept.setdefault(t.spec.index, self.run)
        self.run += 1
        self.state = "running" if self.started_at is not None else "queued"
        self.finished_at = None
        self.reason = None
        self.cancel_requested = False
        reasons = _REASONS.get(self)
        for i in again:
            t = tasks[i]
            t.reset()
            if reasons is not None:
                reasons.note(i, 0)
        self._rebuild()
        effects = Effects()
        for i in again:
            t = tasks[i]
            if t.waiting == 0:
                t.move("ready")
                effects.ready.append(i)
        return effects

    def in_group(self, index: int, group: int) -> bool:
        """Whether task ``index`` is inside ``group`` (at any depth)."""
        return group in self._ancestors[index]

    @property
    def kept(self) -> dict[int, int] | None:
        """The tasks this retried job kept from its earlier runs: index -> the run it completed in
        (None: not retried, or none kept)."""
        return (_KEPT.get(self) or None) if self.run > 1 else None

    def fail_before_start(self, reason: str, now: float, code: int = why.AFTER_FAILED) -> Effects:
        """A prerequisite (``after``) failed: skip every task and fail the job (it never started:
        queued until its run is finished, with no start time; ``code``: the tasks' reason, see
        core.reasons; a cancel of the waiting job passes CANCELLED)."""
        self.state = "queued"
        self._group_left = [len(g.children) for g in self.spec.groups]
        effects = Effects()
        for t in self.tasks:
            t.move("skipped")
            self.note(t.spec.index, code)
            t.reason = reason
            t.finished_at = now
            effects.finished_tasks.append(t.spec.index)
        self.reason = reason
        effects.run_finished = True
        return effects

    def mark_running(self, index: int, attempt_id: str, now: float) -> Attempt:
        t = self.tasks[index]
        t.move("running")
        if self.state == "queued":  # the job's first attempt: it starts now
            self.state = "running"
            self.started_at = now
        attempt = Attempt(len(t.attempts) + 1, attempt_id, started_at=now)
        t.attempts.append(attempt)
        if t.started_at is None:
            t.started_at = now
        return attempt

    def complete(
        self,
        index: int,
        now: float,
        result: Any = None,
        exit_code: int | None = None,
        into: Effects | None = None,
    ) -> Effects:
        """A task's attempt succeeded. With ``into`` (a batch of completions), the effects are added
        to it and it is returned."""
        t = self.tasks[index]
        t.move("completed")
        t.finished_at = now
        t.result, t.exit_code, t.error = result, exit_code, None
        if into is None:
            effects = Effects(finished_tasks=[index])
        else:
            effects = into
            effects.finished_tasks.append(index)
        self._node_complete(("task", index), effects)
        parents = self._ancestors[index]
        for g in parents:
            self._group_left[g] -= 1
            if self._group_left[g] > 0:
                break
            self._node_complete(("group", g), effects)
        self._check_run_finished(effects)
        return effects

    def _node_complete(self, node: Node, effects: Effects) -> None:
        # (``_complete`` is not kept up here: only _rebuild reads it, and it derives it afresh)
        for i in self._waiters.get(node, ()):
            w = self.tasks[i]
            w.waiting -= 1
            if w.waiting == 0 and w.state == "pending":
                w.move("ready")
                effects.ready.append(i)

    def retry_later(self, index: int, retry_at: float) -> None:
        """The attempt failed and a retry is due at ``retry_at``."""
        t = self.tasks[index]
        t.move("pending")
        t.retry_at = retry_at
        self.note(index, why.RETRY_WAIT, len(t.attempts))

    def retry_due(self, index: int) -> bool:
        """The retry delay ran out: back to ready (False if the task was cancelled meanwhile)."""
        t = self.tasks[index]
        if t.state != "pending" or t.retry_at is None:
            return False
        t.retry_at = None
        t.move("ready")
        self.note(index, why.RETRY_DUE, len(t.attempts))
        return True

    def end_unsuccessfully(
        self,
        index: int,
        state: TaskState,
        now: float,
        error: dict[str, str] | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> Effects:
        """A task ended failed, timeout or cancelled: doom what comes after it."""
        t = self.tasks[index]
        t.move(state)
        t.finished_at = now
        t.retry_at = None
        t.error, t.reason = error, reason
        if exit_code is not None:
            t.exit_code = exit_code
        if state == "cancelled":
            self.note(index, why.CANCELLED)
        effects = Effects(finished_tasks=[index])
        self._doom(index, effects)
        if self.spec.on_failure == "stop" and state != "cancelled" and not self.cancel_requested:
            stop_reason = (
                f'job stopped: task "{t.spec.name}" {"timed out" if state == "timeout" else "failed"}'
            )
            for other in self.tasks:
                if other.state in ("pending", "ready"):
                    other.move("cancelled")
                    self.note(other.spec.index, why.STOPPED, index)
                    other.reason = stop_reason
                    other.finished_at = now
                    other.retry_at = None
                    effects.finished_tasks.append(other.spec.index)
        self._check_run_finished(effects)
        return effects

    def _doom(self, index: int, effects: Effects) -> None:
        """Skip everything that waits on task ``index`` or on a group it keeps from completing."""
        origin = self.tasks[index].spec.name
        verb = {
            "failed": "failed",
            "timeout": "timed out",
            "cancelled": "was cancelled",
            "skipped": "was skipped",
        }[self.tasks[index].state]
        reason = f'upstream "{origin}" {verb}'
        queue: deque[Node] = deque([("task", index), *[("group", g) for g in self._ancestors[index]]])
        seen: set[Node] = set()
        while queue:
            node = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            for i in self._waiters.get(node, ()):
                w = self.tasks[i]
                if w.state in ("pending", "ready"):
                    w.move("skipped")
                    self.note(i, why.UPSTREAM, index)
                    w.reason = reason
                    w.retry_at = None
                    effects.finished_tasks.append(i)
                    queue.append(("task", i))
                    queue.extend(("group", g) for g in self._ancestors[i])

    def cancel(
        self, now: float, indices: list[int] | None = None, reason: str = "cancelled by request"
    ) -> Effects:
        """Cancel the whole job (``indices`` None) or some tasks."""
        effects = Effects()
        if indices is None:
            self.cancel_requested = True
            self.reason = reason
            indices = list(range(len(self.tasks)))
        for i in indices:
            t = self.tasks[i]
            if t.state in ("pending", "ready"):
                effects.merge(self.end_unsuccessfully(i, "cancelled", now, reason=reason))
            elif t.state == "running" and not t.cancel_requested:
                t.cancel_requested = True
                t.reason = reason  # (who asked: said when its attempt has stopped)
                attempt = t.running_attempt
                assert attempt is not None
                effects.stop.append(attempt.attempt_id)
        self._check_run_finished(effects)
        return effects

    def _check_run_finished(self, effects: Effects) -> None:
        # Within a run a final state is never left, so the first non-final task only moves
        # forward: checking after every completion costs O(tasks) per run, not per completion.
        tasks = self.tasks
        scan = self._scan
        while scan < len(tasks) and tasks[scan].state in FINAL_TASK_STATES:
            scan += 1
        self._scan = scan
        if self.state in ACTIVE_JOB_STATES and scan == len(tasks):  # held: cancelled while held
            effects.run_finished = True

    def finish_run(self, now: float) -> bool:
        """Record the finished run; return True when another run should start (repeat)."""
        ok = all(t.state == "completed" for t in self.tasks)
        self.runs.append({"run": self.run, "state": "completed" if ok else "failed", "finished_at": now})
        if self.run > 1 and (kept := _KEPT.get(self)):  # a retry's run: how many tasks it kept
            self.runs[-1]["kept"] = len(kept)
        if len(self.runs) > KEPT_RUNS:
            del self.runs[:-KEPT_RUNS]
        more = self.spec.repeat is None or self.run < self.spec.repeat
        if ok and more and not self.cancel_requested and not self.stop_requested:
            self.run += 1
            return True
        self.finished_at = now
        if self.cancel_requested or (not ok and self._only_cancelled()):
            self.state = "cancelled"
        else:
            self.state = "completed" if ok else "failed"
        return False

    def wait_for_run(self, when: float) -> None:
        """Wait until ``when`` (wall clock) to start the next run (or the first): the job is
        ``scheduled`` meanwhile, its tasks as the last run left them (pending before the first).
        A paused job stays ``paused`` (its run ended while paused): the wait begins at its resume."""
        if self.state != "paused":
            self.state = "scheduled"
        elif self.paused is not None:
            self.paused["was"] = "scheduled"
        self.next_run_at = when

    def end_while_scheduled(self, now: float, reason: str, cancelled: bool) -> Effects:
        """End a ``scheduled`` job without another run: cancelled (``cancelled``), or stopped
        (``procctl stop``), when it ends in the state its last run ended in. A job that never
        ran has its tasks skipped, as a cancelled job waiting for its prerequisites has. (A job
        paused while it waited for its run ends the same way.)"""
        self.next_run_at = None
        self.paused = None
        if self.started_at is None and not self.runs:  # its first run never began
            effects = self.fail_before_start(reason, now, why.CANCELLED)
            self.cancel_requested = True  # (stopped or cancelled: it never ran)
            return effects
        self.run -= 1  # (finish_run counted the run that will not start)
        self.finished_at = now
        self.reason = reason
        self.cancel_requested = self.cancel_requested or cancelled
        last = self.runs[-1]["state"] if self.runs else "completed"
        self.state = "cancelled" if cancelled else ("completed" if last == "completed" else "failed")
        return Effects()

    def _only_cancelled(self) -> bool:
        """Whether the run's unfinished tasks were cancelled (or skipped after a cancel), with
        none failed or timed out: the job ends ``cancelled``, as when the job itself is."""
        cancelled = False
        for t in self.tasks:
            if t.state in ("failed", "timeout"):
                return False
            cancelled = cancelled or t.state == "cancelled"
        return cancelled

    def note(self, index: int, code: int, arg: int = 0) -> None:
        """Record why task ``index`` enters its new state, where that is not the state's ordinary
        cause (see core.reasons); the job's table is made on the first note of a run."""
        reasons = _REASONS.get(self)
        if reasons is None:
            reasons = _REASONS[self] = Reasons(len(self.tasks))
        reasons.note(index, code, arg)

    @property
    def reasons(self) -> Reasons | None:
        """The reasons noted in this run (None: none yet; see :meth:`note`)."""
        return _REASONS.get(self)

    # -- queries ------------------------------------------------------------------------------

    def incomplete_blockers(self, index: int) -> list[Node]:
        """Task ``index``'s blockers that are not complete yet, in order (its own predecessors,
        then those of its groups, innermost first); for explain: O(its blockers)."""
        left, tasks = self._group_left, self.tasks
        return [
            b for b in self._blockers[index]
            if (tasks[b[1]].state != "completed" if b[0] == "task" else not left or left[b[1]] > 0)
        ]

    def group_left(self, group: int) -> int:
        """Children of ``group`` not complete yet in this run (all of them before it started)."""
        left = self._group_left
        return left[group] if left else len(self.spec.groups[group].children)

    def index_entry(self) -> FinishedJob:
        """The small entry that stands for this job once it has finished (see FinishedJob)."""
        return FinishedJob(
            self.id,
            scoped_key(self.submitter_uid, self.spec.key),
            self.state,
            self.submitter_uid,
            self.created_at,
            self.finished_at or 0.0,
            self.spec.name,
            tuple(self.tag_list()),
        )

    def tag_list(self) -> list[str]:
        """The tags of the job's tasks (the job's own are inherited by each), each once, in the
        order first met, at most :data:`MAX_JOB_TAGS`: what a job list shows and filters by.
        One pass over the tasks on the first call (shared tag lists once), then kept."""
        if self._tags is None:
            found: dict[str, None] = dict.fromkeys(self.spec.tags)
            seen: set[int] = set()
            for t in self.spec.tasks:
                tags = t.tags
                if tags and id(tags) not in seen:
                    seen.add(id(tags))
                    found.update(dict.fromkeys(tags))
                    if len(found) >= MAX_JOB_TAGS:
                        break
            self._tags = list(found)[:MAX_JOB_TAGS]
        return self._tags

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")

    def final_state(self, index: int) -> bool:
        return self.tasks[index].state in FINAL_TASK_STATES

    def counts(self) -> dict[str, int]:
        """Tasks per state (the states no task is in are left out); O(states), not O(tasks)."""
        return {state: n for state, n in self._counts.items() if n}

    def _recount(self) -> None:
        """Count the tasks per state again (after :meth:`load` set them without :meth:`TaskRun.move`)."""
        counts = self._counts
        for state in counts:
            counts[state] = 0
        for t in self.tasks:
            counts[t.state] += 1

    def unsuccessful(self) -> bool:
        return any(t.state in UNSUCCESSFUL for t in self.tasks)

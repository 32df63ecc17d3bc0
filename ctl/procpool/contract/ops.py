"""The closed set of operations and the arguments each one takes.

Both sides use this table: the client builds requests from it and the daemon
validates every request against it before a handler sees the arguments, so a
handler can trust the types it receives. ``docs/protocol.md`` documents each
operation's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from procpool.contract.codec import RequestError
from procpool.contract.errors import ErrorCode
from procpool.contract.limits import (
    COUNT_MAX,
    LOCK_NAME_MAX,
    LOCK_NAME_RE,
    MAX_PARALLEL_MAX,
    SECONDS_MAX,
    TIMESTAMP_MAX,
    WORKERS_MAX,
    finite_number,
    shorten,
)
from procpool.contract.logfields import MAX_FIELDS, wire_field_ok
from procpool.contract.signals import signal_problem
from procpool.contract.states import FINAL_JOB_STATES, JOB_STATES, TASK_STATES
from procpool.contract.status import cursor_problem

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "a map",
    list: "a list",
}


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its accepted types, whether it must be present, and for a number its range
    (``low`` and ``high`` inclusive; NaN and the infinities are never accepted)."""

    types: tuple[type, ...]
    required: bool = False
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    #: what else a value of the right type must be: why it is refused, or None
    check: Callable[[Any], str | None] | None = None
    #: what to do instead, said with a refused value
    hint: str | None = None

    def describe(self) -> str:
        names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)
        return names + (" or nil" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        # bool is a subclass of int; never let True pass as an integer or number.
        if isinstance(value, bool) and bool not in self.types:
            return False
        if float in self.types and isinstance(value, int):
            return True
        return isinstance(value, self.types)

    def out_of_range(self, value: Any) -> str | None:
        """Why a number of the right type is refused (None: it is accepted)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if not finite_number(value):
            return f"must be a finite number, got {value!r}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be between {self.low:g} and {self.high:g}, got {shorten(value)}"
        return None


@dataclass(frozen=True, slots=True)
class Op:
    """An operation: its name, what it does, and its arguments."""

    name: str
    summary: str
    args: dict[str, Arg]
    #: True for operations that change state (later issues authorize them separately).
    mutating: bool = False


def _op(name: str, summary: str, /, mutating: bool = False, **args: Arg) -> Op:
    return Op(name, summary, dict(args), mutating)


#: Said when a pool of 0 workers is asked for: pausing is what keeps new work from starting.
POOL_RESIZE_HINT = (
    "a pool needs at least 1 worker; to keep new work from starting, pause the daemon "
    "(procctl pause --all; procctl resume --all ends it) or one job (procctl pause ID)"
)

_STR = (str,)
_NUM = (float,)
#: seconds of waiting; a point in time (seconds since the epoch); a count or cursor
_SECONDS = Arg(_NUM, low=0.0, high=SECONDS_MAX)
_TIME = Arg(_NUM, low=0.0, high=TIMESTAMP_MAX)
_COUNT = Arg((int,), low=0, high=COUNT_MAX)
#: how a job's status travels: "full" (the default), "columns" or "summary" (contract.status.VIEWS)
_VIEW = Arg(_STR)
#: a cursor from a reply (or "" for none yet): the reply holds the tasks changed since (columns view)
_CHANGES_SINCE = Arg(_STR, check=cursor_problem)

def _fields_match_problem(value: Any) -> str | None:
    """``logs``' ``fields``: the log context fields a record must have, ``{"PROCPOOL_X_NAME": value}``."""
    if len(value) > MAX_FIELDS:
        return f"at most {MAX_FIELDS} fields"
    for name, text in value.items():
        if not wire_field_ok(name, text):
            return f"{shorten(name, 80)}={shorten(text, 80)} is not a log context field (PROCPOOL_X_<NAME>)"
    return None


def _short(value: Any) -> str | None:
    """A filter of a job list: at most 256 characters."""
    return None if len(value) <= 256 else f"must be at most 256 characters, got {len(value)}"


def _task_state(value: Any) -> str | None:
    """A task state (``tasks_state``)."""
    return None if value in TASK_STATES else f"must be a task state ({', '.join(TASK_STATES)})"


#: Most tasks one retry may name (``tasks``).
MAX_RETRY_TASKS = 1_000


def _retry_tasks(value: Any) -> str | None:
    """The tasks a retry names: 1 to MAX_RETRY_TASKS strings of at most 256 characters."""
    if not value or len(value) > MAX_RETRY_TASKS:
        return f"must name 1 to {MAX_RETRY_TASKS} tasks, got {len(value)}"
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        return "must be a list of task ids or names (strings of 1 to 256 characters)"
    return None


def _unfinished_state(value: Any) -> str | None:
    """A job state a job that has not finished can be in (``cancel``'s ``state`` filter)."""
    states = [s for s in JOB_STATES if s not in FINAL_JOB_STATES]
    return None if value in states else f"must be the state of an unfinished job ({', '.join(states)})"


def _queue_name(value: Any) -> str | None:
    """A named queue (``queue``, ``queue_set``'s ``name``)."""
    if LOCK_NAME_RE.fullmatch(value):
        return None
    return (f"must be a queue name (letters, digits and _ . -, at most {LOCK_NAME_MAX}), "
            f"got {shorten(value, 80)}")


def _ids(value: Any) -> str | None:
    """``cancel``'s ``ids``: 1 to 1,000 ids, each a string of at most 256 characters."""
    if not 1 <= len(value) <= 1_000:
        return f"must hold 1 to 1,000 ids, got {len(value)}"
    if not all(isinstance(v, str) and len(v) <= 256 for v in value):
        return "must be a list of ids (strings)"
    return None


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        _op("ping", "Answer with the daemon's version and protocol version."),
        _op(
            "status",
            "Daemon summary, a list of jobs, or one job in detail: a page of its tasks from index "
            "'tasks_from' (default 0) and at most 'tasks_limit' tasks, in 'view' 'full' (a map per "
            "task, at most the daemon's status_page_size), 'columns' (compact columns, at most "
            "100,000 tasks; see procpool.contract.status) or 'summary' (the job's head and counts, "
            "no task). With 'changes_since' (columns view: '' or the 'cursor' of an earlier reply) "
            "only the tasks changed since that cursor; with 'tasks_state' only the tasks in that "
            "state. Without 'job', a list of the newest jobs that match 'state', 'since', 'name' "
            "(a shell pattern), 'user' (a name or uid) and 'tag', at most 'limit' of them.",
            job=Arg(_STR),
            view=_VIEW,
            state=Arg(_STR),
            since=_TIME,
            limit=_COUNT,
            tasks_from=_COUNT,
            tasks_limit=_COUNT,
            changes_since=_CHANGES_SINCE,
            name=Arg(_STR, check=_short),
            user=Arg(_STR, check=_short),
            tag=Arg(_STR, check=_short),
            tasks_state=Arg(_STR, check=_task_state),
        ),
        _op("shutdown", "Stop the daemon gracefully.", mutating=True),
        _op(
            "submit",
            "Accept a job tree; returns its id (an existing id for a known idempotency key). With "
            "'wait' (seconds) the reply comes when the job has finished, or when the wait runs out.",
            mutating=True,
            job=Arg((dict,), required=True),
            after=Arg((list,)),
            wait=_SECONDS,
            view=_VIEW,
            # with the job's key: cancel the unfinished job(s) with that key and take their place
            replace=Arg((bool,)),
        ),
        _op(
            "wait",
            "Block until a job or task has finished or 'timeout' seconds passed; a job's status comes in "
            "'view' (as for status; 'changes_since' as for status too).",
            id=Arg(_STR, required=True),
            timeout=_SECONDS,
            view=_VIEW,
            changes_since=_CHANGES_SINCE,
        ),
        _op(
            "cancel",
            "Cancel a job or a single task ('id'), several ('ids'), or the unfinished jobs that match "
            "every filter given ('state', 'name' a shell pattern, 'user' a name or uid, or 'all'; only "
            "those the caller may change). Running attempts get 'signal' (default SIGTERM; SIGKILL "
            "ends them at once), then SIGKILL after 'grace' seconds (default: the task's kill_grace, "
            "else its job's, else the daemon's). With 'dry_run' nothing changes: the reply lists what "
            "would be cancelled.",
            mutating=True,
            id=Arg(_STR),
            ids=Arg((list,), check=_ids),
            signal=Arg(_STR, check=signal_problem),
            grace=_SECONDS,
            state=Arg(_STR, check=_unfinished_state),
            name=Arg(_STR, check=_short),
            user=Arg(_STR, check=_short),
            all=Arg((bool,)),
            dry_run=Arg((bool,)),
        ),
        _op("pool", "The worker pool: one entry per worker (pid, state, current task, tasks done, memory)."),
        _op(
            "pool_resize",
            "Change the number of workers at run time.",
            mutating=True,
            # A pool of 0 workers would start nothing: every waiting task (and `run --wait`) would hang.
            workers=Arg((int,), required=True, low=1, high=WORKERS_MAX, hint=POOL_RESIZE_HINT),
        ),
        _op(
            "logs",
            "Where to read a job's or task's log, or the daemon's own tail of its recent lines.",
            id=Arg(_STR, required=True),
            attempt=_COUNT,
            lines=_COUNT,
            after=_COUNT,
            source=Arg(_STR),
            before=_COUNT,
            fields=Arg((dict,), check=_fields_match_problem),
        ),
        _op(
            "resume",
            "Release a job held after a restart (on_interrupt: hold) or paused ('id'), or end the "
            "pause of a named queue ('queue') or of the daemon ('all'; both administrators only); "
            "the reply's 'released' says which ('held' or 'paused').",
            mutating=True,
            id=Arg(_STR),
            all=Arg((bool,)),
            queue=Arg(_STR, check=_queue_name),
        ),
        _op(
            "clean",
            "Remove finished jobs from the history.",
            mutating=True,
            state=Arg(_STR),
            before=_TIME,
        ),
        _op(
            "explain",
            "Why a task is in its state (the reason the scheduler recorded, its place in the ready "
            "queue, its engine's free slots, how each attempt ended), or for a job, why it and its "
            "unfinished tasks are where they are.",
            id=Arg(_STR, required=True),
        ),
        _op(
            "metrics",
            "The daemon's metrics: uptime, tasks by outcome, success rate, durations per task name, "
            "throughput, queue by priority, workers, dropped log records, store size, and health.",
        ),
        _op(
            "retry",
            "Run a finished job's tasks that did not complete (failed, timed out, cancelled, skipped) "
            "again as a new run of the same job, keeping its completed tasks, their results and its "
            "namespace; 'tasks' (task ids, or names of its tasks or groups) narrows it to those tasks "
            "and what waits on them that did not complete.",
            mutating=True,
            id=Arg(_STR, required=True),
            tasks=Arg((list,), check=_retry_tasks),
        ),
        _op(
            "stop",
            "End a repeating job after its current run: that run finishes normally, no other starts; "
            "a group or task that cycles on its own clock ends after its current cycle.",
            mutating=True,
            id=Arg(_STR, required=True),
        ),
        _op(
            "pause",
            "Pause a job ('id'): nothing new of it starts until resume, its running attempts finish; "
            "or a named queue ('queue', administrators only): nothing new of its tasks starts; "
            "or the whole daemon ('all', administrators only): nothing new starts for any job, new "
            "submissions are accepted and wait. With 'stop' the running attempts are stopped now "
            "and run again at resume, using none of their retries.",
            mutating=True,
            id=Arg(_STR),
            all=Arg((bool,)),
            queue=Arg(_STR, check=_queue_name),
            stop=Arg((bool,)),
        ),
        _op(
            "queue",
            "The named queues: each one's parallelism, its tasks running and waiting for a place, "
            "its pause, and where its parallelism comes from ('config' or 'set' at run time).",
        ),
        _op(
            "queue_set",
            "Make a named queue, or change its parallelism, at run time (kept across restarts; it "
            "wins over the config's [queues]).",
            mutating=True,
            name=Arg(_STR, required=True, check=_queue_name),
            parallel=Arg((int,), required=True, low=1, high=MAX_PARALLEL_MAX),
        ),
    )
}


def check_args(op_name: str, args: dict[str, Any], request_id: Any = None) -> Op:
    """Validate ``args`` for ``op_name``; raise :class:`RequestError` naming the first problem."""
    op = OPS.get(op_name)
    if op is None:
        known = ", ".join(sorted(OPS))
        raise RequestError(
            ErrorCode.UNKNOWN_OPERATION,
            f"unknown operation {shorten(op_name, 64)}",
            request_id,
            hint=f"known operations: {known}",
        )
    for key, value in args.items():
        spec = op.args.get(key)
        if spec is None:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, f"{op_name}: unknown argument {shorten(key, 64)}", request_id
            )
        if not spec.accepts(value):
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                f"{op_name}: argument {key!r} must be {spec.describe()}, got {type(value).__name__}",
                request_id,
            )
        why = spec.out_of_range(value) if spec.low is not None else None
        if why is None and spec.check is not None and value is not None:
            why = spec.check(value)
        if why is not None:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT, f"{op_name}: argument {key!r} {why}", request_id, hint=spec.hint
            )
    for key, spec in op.args.items():
        if spec.required and key not in args:
            raise RequestError(ErrorCode.INVALID_ARGUMENT, f"{op_name}: missing argument {key!r}", request_id)
    return op

"""The shapes of the replies both sides share, and the columnar job status (format 2).

The daemon builds these replies (``procpoold.core.status``) and the client reads them; the
TypedDicts say which keys each reply has, the columnar codec says how a job's tasks travel.
Imports only the standard library (and the contract's states).

A job's status comes in one of two *views* (the ``view`` argument of ``status``, ``wait`` and
``submit``):

``full`` (format 1, the default on the wire)
    one map per task (:class:`TaskStatus`), in pages of ``status_page_size`` tasks.

``columns`` (format 2)
    the tasks of a page as columns: one state code per task (its index in
    :data:`~procpool.contract.states.TASK_STATES`), the attempt counts as little-endian uint32,
    start and end times as little-endian float64 (NaN: none), and *sparse* columns (result,
    error, exit_code, progress, reason, retry_at, tail, name, engine) holding only the tasks where
    the value is set, each as ``[indices as little-endian uint32, values]``: about 21 bytes per
    task plus what is set. ``name`` is sent for every task that is not pending, ready or
    completed (or reports progress), so a summary of the tasks worth showing needs nothing more;
    so is ``engine`` (the engine it runs on) for a job whose ``all_local`` is false. The
    ``groups`` (first page only) give each group's ``children`` as ``[kind, first index,
    count]`` runs of consecutive indices. :class:`JobStatus` decodes it without a map per
    task; :meth:`JobStatus.task` gives one task's row on demand.

``summary`` (format 3)
    the job's head only (its summary, job-wide fields and counts per state): no task, and no
    work per task in the daemon. For a progress bar, or a job list entry with its fields.

*What changed* (the ``changes_since`` argument of ``status`` and ``wait``, columns view): the
reply carries a ``cursor``; given back as ``changes_since``, the next reply holds only the tasks
that changed since (``columns.index`` lists them, the other columns hold their rows in that
order, and ``changes`` is true), so polling a big job costs what changed, not what it holds. An
empty ``changes_since`` (no cursor yet), or one the daemon can no longer answer (from before its
restart, from another copy of a finished job, or too old: the job's change log is bounded),
gets the full columnar status instead, with ``changes`` false and ``reset`` saying why
(:data:`RESETS`). A delta cut short by its size has ``more`` true: ask again at once.
:meth:`JobStatus.apply` applies a delta; :func:`follow` does a whole poll.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from procpool.contract.states import TASK_STATE_CODES, TASK_STATES, JobState, TaskState

#: ``format`` of a status with one map per task, and of a columnar one.
FORMAT_FULL = 1
FORMAT_COLUMNS = 2
#: ``format`` of a status with the job's head only (view ``summary``).
FORMAT_SUMMARY = 3
View = Literal["full", "columns", "summary"]
VIEWS: tuple[View, ...] = ("full", "columns", "summary")
#: Why a reply to ``changes_since`` is a full status rather than what changed: no cursor was
#: given; the cursor names another change log (the daemon restarted, or the finished job was read
#: back again); the changes since it are no longer kept; more tasks changed than one page holds.
RESETS = ("new", "unknown", "old", "many")
#: The longest cursor (two decimal numbers: the log's 52-bit epoch and a sequence number).
CURSOR_MAX_CHARS = 40
_CURSOR = re.compile(r"([0-9]{1,16})\.([0-9]{1,20})")
#: The sparse columns of a columnar status, in the order they are sent.
SPARSE: tuple[str, ...] = (
    "name", "result", "error", "exit_code", "progress", "reason", "retry_at", "tail", "engine", "kept_from"
)
#: Bytes per task of the dense columns: state (1), attempts (4), started_at (8), finished_at (8).
DENSE_BYTES_PER_TASK = 21

_LITTLE = sys.byteorder == "little"


# -- change cursors -------------------------------------------------------------------------------


def format_cursor(epoch: int, seq: int) -> str:
    """A change cursor as it travels: ``"EPOCH.SEQ"``."""
    return f"{epoch}.{seq}"


def parse_cursor(text: str) -> tuple[int, int] | None:
    """``(epoch, seq)`` of a cursor, None for ``""`` (no cursor yet); ValueError saying what
    anything else must be ("must be ...")."""
    if text == "":
        return None
    if len(text) > CURSOR_MAX_CHARS:
        raise ValueError(f"must be at most {CURSOR_MAX_CHARS} characters, got {len(text)}")
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise ValueError(f"must be the 'cursor' of an earlier reply (EPOCH.SEQ) or empty, got {text!r}")
    return int(match[1]), int(match[2])


def cursor_problem(value: Any) -> str | None:
    """Why ``value`` is not a ``changes_since`` argument (None: it is one)."""
    try:
        parse_cursor(value)
    except ValueError as exc:
        return str(exc)
    return None


# -- reply shapes ---------------------------------------------------------------------------------


class PingReply(TypedDict):
    version: str
    protocol: int
    pid: int


class JobSummary(TypedDict):
    """One job in a job list, and the head of its status."""

    id: str
    name: str
    user: str | None
    uid: int | None
    state: JobState
    run: int
    repeat: int | Literal["forever"]
    created_at: float
    started_at: float | None
    finished_at: float | None
    tasks: int
    counts: dict[str, int]
    reason: str | None
    #: the tags of the job's tasks, each once, at most 32 (absent from summaries an older daemon stored)
    tags: NotRequired[list[str]]


class JobDetail(JobSummary):
    """A job's head in its status: the summary and the job-wide fields."""

    namespace: dict[str, Any]
    runs: list[dict[str, Any]]
    on_failure: str
    on_interrupt: str
    after: list[str]
    root: list[Any]
    #: the engines that run the job's tasks, by name (sorted), and whether each of its tasks runs on
    #: the daemon's local engine of its kind ("pool" for call tasks, "commands" for cmd tasks)
    engines: NotRequired[list[str]]
    all_local: NotRequired[bool]
    #: how many tasks a retried job kept from its earlier runs (procctl retry; 0: none)
    kept: NotRequired[int]
    #: when the next run of a ``scheduled`` job starts (wall clock; its "schedule" or "every")
    next_run_at: NotRequired[float | None]
    #: each group or task with its own "repeat"/"every", in tree order (absent: the job has none),
    #: the first 1,000 of them; ``cycles_total``: how many there are, when more than that
    cycles: NotRequired[list[NodeCycle]]
    cycles_total: NotRequired[int]


class NodeCycle(TypedDict):
    """A node that cycles on its own clock, in a job's status: ``cycle`` (its current one, from
    1; its last once it completed), of ``repeat`` ("forever": no last), and, while it waits for
    its next cycle, when that starts (``next_cycle_at``, wall clock; else None)."""

    kind: Literal["task", "group"]
    index: int
    name: str
    cycle: int
    repeat: int | Literal["forever"]
    next_cycle_at: float | None


class GroupStatus(TypedDict):
    name: str
    path: str
    kind: str
    parent: int | None
    children: list[Any]


class AttemptInfo(TypedDict):
    number: int
    id: str
    started_at: float | None
    finished_at: float | None
    status: str | None
    pid: int | None
    worker: str | None


class TaskStatus(TypedDict):
    """One task in the full view (format 1)."""

    id: str
    name: str
    path: str
    kind: str
    #: the engine that runs the task ("pool", "commands", "dask"); None when the daemon cannot
    #: tell (a finished job read back by a daemon that no longer has the engine of its kind)
    engine: NotRequired[str | None]
    state: TaskState
    attempts: int
    attempt_history: list[AttemptInfo]
    started_at: float | None
    finished_at: float | None
    result: Any
    error: dict[str, str] | None
    exit_code: int | None
    progress: dict[str, Any] | None
    reason: str | None
    retry_at: float | None
    priority: str
    tags: list[str]
    depends_on: list[str]
    tail: list[str]
    #: the run it completed in, for a task a retry kept from an earlier run (else None)
    kept_from: NotRequired[int | None]


#: Which tasks a reply holds: ``count`` from ``from``; ``next`` is where the next page starts
#: (None: this was the last). "from" is a keyword, hence the functional form.
Page = TypedDict("Page", {"from": int, "count": int, "total": int, "next": int | None})


class FullStatus(TypedDict):
    """A job's status in the full view (format 1)."""

    format: int
    job: JobDetail
    groups: list[GroupStatus]
    tasks: list[TaskStatus]
    page: NotRequired[Page]


ColumnsWire = TypedDict(
    "ColumnsWire",
    {
        "from": int,
        "count": int,
        "total": int,
        "next": int | None,
        "state": bytes,
        "attempts": bytes,
        "started_at": bytes,
        "finished_at": bytes,
        # a reply to changes_since that holds what changed: the tasks of the rows, in order
        "index": NotRequired[bytes],
    },
)


class ColumnStatusWire(TypedDict):
    """A job's status in the columnar view (format 2), as sent."""

    format: int
    job: JobDetail
    groups: list[GroupStatus]
    columns: ColumnsWire
    sparse: dict[str, list[Any]]
    #: with changes_since: the cursor for the next poll, whether this holds only what changed,
    #: why not (a full status: see RESETS), and whether a delta was cut short (ask again)
    cursor: NotRequired[str]
    changes: NotRequired[bool]
    reset: NotRequired[str]
    more: NotRequired[bool]


class SummaryStatus(TypedDict):
    """A job's status in the summary view (format 3): its head only, no task."""

    format: int
    job: JobDetail


class TaskReply(TypedDict):
    """``status`` or ``wait`` of one task (``12.3``, ``12/name``)."""

    id: str
    finished: bool
    state: TaskState
    task: TaskStatus
    job: JobSummary


class WaitReply(TypedDict):
    """``wait`` of a job (and ``submit`` with ``wait``): ``status`` in the view asked for."""

    id: str
    finished: bool
    state: JobState
    status: FullStatus | ColumnStatusWire | SummaryStatus


class SubmitReply(TypedDict):
    id: str
    name: str
    existing: bool
    tasks: int
    finished: NotRequired[bool]
    state: NotRequired[JobState]
    status: NotRequired[FullStatus | ColumnStatusWire | SummaryStatus]


class CancelReply(TypedDict):
    """``cancel``: the job or task reference, and how many running attempts are being stopped."""

    id: str
    stopping: int


# -- the columnar codec ---------------------------------------------------------------------------


def pack_u32(values: list[int]) -> bytes:
    """Little-endian uint32 array (values above 2**32-1 are clipped)."""
    try:
        out = array("I", values)
    except OverflowError:
        out = array("I", [v if v < 0xFFFFFFFF else 0xFFFFFFFF for v in values])
    if not _LITTLE:
        out.byteswap()
    return out.tobytes()


def pack_f64(values: list[float | None]) -> bytes:
    """Little-endian float64 array; None becomes NaN."""
    out: array[float]
    try:
        out = array("d", values)  # type: ignore[arg-type]  # the common case: no None
    except TypeError:
        out = array("d", [math.nan if v is None else v for v in values])
    if not _LITTLE:
        out.byteswap()
    return out.tobytes()


def _unpack(code: str, data: Any, count: int, what: str) -> array[Any]:
    if not isinstance(data, bytes):
        raise ValueError(f"columnar status: {what} must be bytes, got {type(data).__name__}")
    out = array(code)
    if len(data) != count * out.itemsize:
        raise ValueError(f"columnar status: {what} has {len(data)} bytes for {count} tasks")
    out.frombytes(data)
    if not _LITTLE:
        out.byteswap()
    return out


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"columnar status: {what} must be a count, got {value!r}")
    return value


def is_changes(wire: Any) -> bool:
    """Whether a columnar reply holds only what changed (a reply to ``changes_since``)."""
    return isinstance(wire, dict) and wire.get("changes") is True


def _head(wire: Any) -> tuple[dict[str, Any], int, bytes]:
    """The checked columns map, row count and state codes of a columnar reply."""
    if not isinstance(wire, dict) or wire.get("format") != FORMAT_COLUMNS:
        got = wire.get("format") if isinstance(wire, dict) else type(wire).__name__
        raise ValueError(f"not a columnar status (format {FORMAT_COLUMNS}): {got!r}")
    cols = wire.get("columns")
    if not isinstance(cols, dict) or not isinstance(wire.get("sparse"), dict):
        raise ValueError("columnar status: columns and sparse must be maps")
    if not isinstance(wire.get("job"), dict):
        raise ValueError("columnar status: job must be a map")
    count = _int(cols.get("count"), "count")
    states = cols.get("state")
    if not isinstance(states, bytes) or len(states) != count:
        raise ValueError(f"columnar status: state must be {count} bytes")
    if states and max(states) >= len(TASK_STATES):
        raise ValueError(f"columnar status: unknown state code {max(states)}")
    return cols, count, states


def _sparse_columns(
    wire: dict[str, Any], held: Callable[[int], bool], outside: str
) -> dict[str, dict[int, Any]]:
    """The sparse columns of a columnar reply as ``{column: {task index: value}}``; each index
    must be ``held`` (else ValueError naming a task ``outside``)."""
    sparse: dict[str, dict[int, Any]] = {}
    for key, pair in wire["sparse"].items():
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], list):
            raise ValueError(f"columnar status: sparse column {key!r} must be [indices, values]")
        indices = _unpack("I", pair[0], len(pair[1]), f"sparse column {key!r}")
        if not all(map(held, indices)):
            raise ValueError(f"columnar status: sparse column {key!r} names a task {outside}")
        sparse[str(key)] = dict(zip(indices, pair[1], strict=True))
    return sparse


@dataclass(slots=True)
class TaskRow:
    """One task of a columnar status, made on demand by :meth:`JobStatus.task`."""

    index: int
    name: str | None
    state: TaskState
    attempts: int
    started_at: float | None
    finished_at: float | None
    result: Any = None
    error: dict[str, str] | None = None
    exit_code: int | None = None
    progress: dict[str, Any] | None = None
    reason: str | None = None
    retry_at: float | None = None
    tail: list[str] = field(default_factory=list)
    #: the engine it runs on: sent with its name for a job not all on the local engines (else None)
    engine: str | None = None
    #: the run it completed in, for a task a retry kept from an earlier run (else None)
    kept_from: int | None = None


@dataclass(slots=True)
class JobStatus:
    """A decoded columnar status: the job's head and its tasks as columns (one page or all).

    ``states`` holds one code per task (``states[i - first]`` is task ``i``'s); ``sparse`` maps
    each sparse column to ``{task index: value}``. Built without a per-task object. ``cursor``
    (a reply to ``changes_since``) asks the daemon for what changed since (see :meth:`apply`).
    """

    job: JobDetail
    groups: list[GroupStatus]
    first: int
    total: int
    next: int | None
    states: bytes | bytearray
    attempts: array[int]
    started_at: array[float]
    finished_at: array[float]
    sparse: dict[str, dict[int, Any]]
    cursor: str | None = None
    reset: str | None = None
    more: bool = False

    @classmethod
    def decode(cls, wire: Any) -> JobStatus:
        """Check and decode a columnar status as the daemon sent it; ValueError if it is malformed."""
        if not isinstance(wire, dict) or wire.get("format") != FORMAT_COLUMNS:
            got = wire.get("format") if isinstance(wire, dict) else type(wire).__name__
            raise ValueError(f"not a columnar status (format {FORMAT_COLUMNS}): {got!r}")
        if is_changes(wire):
            raise ValueError("columnar status: this reply holds what changed: apply it to a status")
        cols, count, states = _head(wire)
        first = _int(cols.get("from"), "from")
        total = _int(cols.get("total"), "total")
        nxt = cols.get("next")
        if nxt is not None:
            nxt = _int(nxt, "next")
        sparse = _sparse_columns(wire, lambda i: first <= i < first + count, "outside the page")
        groups = wire.get("groups", [])
        cursor, reset = wire.get("cursor"), wire.get("reset")
        return cls(
            job=wire["job"],
            groups=groups if isinstance(groups, list) else [],
            first=first,
            total=total,
            next=nxt,
            states=states,
            attempts=_unpack("I", cols.get("attempts"), count, "attempts"),
            started_at=_unpack("d", cols.get("started_at"), count, "started_at"),
            finished_at=_unpack("d", cols.get("finished_at"), count, "finished_at"),
            sparse=sparse,
            cursor=cursor if isinstance(cursor, str) else None,
            reset=reset if isinstance(reset, str) else None,
        )

    def apply(self, wire: Any) -> None:
        """Bring this status (it must hold every task) up to date with a reply to ``changes_since``
        that holds what changed (:func:`is_changes`): O(changed tasks). ValueError if it is
        malformed or does not fit."""
        if not is_changes(wire):
            raise ValueError("columnar status: not a reply holding what changed")
        if self.first != 0 or self.next is not None or len(self.states) != self.total:
            raise ValueError("columnar status: changes apply to a status of every task only")
        cols, count, states = _head(wire)
        if _int(cols.get("total"), "total") != self.total:
            raise ValueError(f"columnar status: changes for {cols.get('total')} tasks, not {self.total}")
        index = _unpack("I", cols.get("index"), count, "index")
        if index and max(index) >= self.total:
            raise ValueError(f"columnar status: changes name task {max(index)} of {self.total}")
        changed = set(index)
        sparse = _sparse_columns(wire, changed.__contains__, "that did not change")
        attempts = _unpack("I", cols.get("attempts"), count, "attempts")
        started = _unpack("d", cols.get("started_at"), count, "started_at")
        finished = _unpack("d", cols.get("finished_at"), count, "finished_at")
        cursor = wire.get("cursor")
        if not isinstance(cursor, str):
            raise ValueError("columnar status: changes without a cursor")
        if not isinstance(self.states, bytearray):
            self.states = bytearray(self.states)  # once: later changes are made in place
        mine = self.states
        for k, i in enumerate(index):
            mine[i] = states[k]
            self.attempts[i] = attempts[k]
            self.started_at[i] = started[k]
            self.finished_at[i] = finished[k]
        columns = list(self.sparse.values())
        for i in changed:  # a value a changed task no longer has is not in the reply
            for values in columns:
                values.pop(i, None)
        for key, values in sparse.items():
            self.sparse.setdefault(key, {}).update(values)
        self.job = wire["job"]
        self.cursor, self.reset, self.more = cursor, None, wire.get("more") is True

    def extend(self, page: JobStatus) -> None:
        """Append the next page (as :meth:`decode` made it) to this status."""
        if page.first != self.first + len(self.states):
            raise ValueError(f"columnar status: page from {page.first} does not follow {self.end}")
        self.states += page.states
        self.attempts.extend(page.attempts)
        self.started_at.extend(page.started_at)
        self.finished_at.extend(page.finished_at)
        for key, values in page.sparse.items():
            self.sparse.setdefault(key, {}).update(values)
        self.next = page.next
        self.job = page.job  # the newer head (its counts cover every task either way)

    @property
    def end(self) -> int:
        """One past the last task held."""
        return self.first + len(self.states)

    @property
    def state(self) -> JobState:
        return self.job["state"]

    def counts(self) -> dict[str, int]:
        """Tasks per state among those held (the job's ``counts`` cover every task)."""
        out: dict[str, int] = {}
        for code, name in enumerate(TASK_STATES):
            n = self.states.count(code)
            if n:
                out[name] = n
        return out

    def indices(self, *states: str) -> Iterator[int]:
        """Indices of the tasks held that are in one of ``states``, in order (scanned in C)."""
        codes = sorted(TASK_STATE_CODES[s] for s in states)
        if not codes:
            return
        pattern = re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]")
        first = self.first
        for match in pattern.finditer(self.states):
            yield first + match.start()

    def task(self, index: int) -> TaskRow:
        """Task ``index``'s row (it must be held)."""
        k = index - self.first
        if not 0 <= k < len(self.states):
            raise IndexError(f"task {index} is not in this status ({self.first}..{self.end - 1})")
        started, finished = self.started_at[k], self.finished_at[k]
        sparse = self.sparse
        return TaskRow(
            index,
            sparse.get("name", {}).get(index),
            TASK_STATES[self.states[k]],
            self.attempts[k],
            None if math.isnan(started) else started,
            None if math.isnan(finished) else finished,
            result=sparse.get("result", {}).get(index),
            error=sparse.get("error", {}).get(index),
            exit_code=sparse.get("exit_code", {}).get(index),
            progress=sparse.get("progress", {}).get(index),
            reason=sparse.get("reason", {}).get(index),
            retry_at=sparse.get("retry_at", {}).get(index),
            tail=list(sparse.get("tail", {}).get(index) or ()),
            engine=sparse.get("engine", {}).get(index),
            kept_from=sparse.get("kept_from", {}).get(index),
        )


def follow(
    call: Callable[[str, dict[str, Any]], Any], job: str, status: JobStatus | None = None
) -> JobStatus:
    """One poll of a job's status through ``call`` (a client's ``call(op, args)``): ``status``
    brought up to date with what changed since its cursor, or (first poll, or a cursor the daemon
    can no longer answer) the whole status, every page. ValueError if a reply is malformed."""
    while True:
        cursor = status.cursor if status is not None and status.cursor is not None else ""
        wire = call("status", {"job": job, "view": "columns", "changes_since": cursor})
        if status is not None and is_changes(wire):
            status.apply(wire)
        else:
            status = JobStatus.decode(wire)
            while status.next is not None:
                page = call("status", {"job": job, "view": "columns", "tasks_from": status.next})
                status.extend(JobStatus.decode(page))
        if not status.more:
            return status
